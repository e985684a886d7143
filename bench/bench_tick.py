"""Benchmark of one journey tick on the embedded default (SQLite, file e-mail channel).

Prints JSON:
- send_tick: N contacts each due for one e-mail → messages/second for the whole tick
  (`run_tick`: enroll, exit/convert, advance = guards + outbox insert, deliver = render,
  assemble, write .eml, record), in one process and with 2 delivery processes pipelined
  with the advance stage.
- idle_tick: a tick with nothing due over N active enrollments → engine seconds.
- validate: validating 50 journeys → seconds.

    python bench/bench_tick.py [--contacts 100000] [--dir PATH] [--postgres] [--only send]
                               [--workers 1,2] [--pairs N]

`--postgres` also runs the send ticks on a throwaway PostgreSQL server (pgserver, its data
under `--dir` too) over the same seeded data, in the same run: `postgres_send_tick_*` beside
the SQLite figures, and `postgres_vs_sqlite` (2 processes; the target is 1.0 or more).
`--pairs N` (with `--postgres`) then times N more pairs of send ticks with the last `--workers`
count, SQLite and PostgreSQL alternately: `pairs` lists each pair's rates and ratio, and
`postgres_vs_sqlite_median` is the median ratio over all pairs, the first included — this
VM's speed drifts within minutes, so one pair can land on either side of 1.0.
A 2-process send tick's `target_messages_per_second` is 8,000 on 2 cores (issue 17).

Before each timed send tick the seeded data is written home (`settle`: SQLite's WAL
checkpointed, PostgreSQL's `CHECKPOINT`), as in a shop whose contacts were imported long
before; the tick then pays for its own writes only, not the seed's or a previous tick's.

Before the timed send ticks, one untimed send tick of 20,000 due (`WARM_UP`: large enough to
start the delivery processes' fork server) runs on each database, in this process: the first
send tick of a process pays ~1 s of CPU once — the fork server's start and imports, the first
rendering, statement compilation — which a long-running worker pays once and a `nurture run`
from cron on every run. Without it the database ticked first paid that second alone (~10 µs a
message at 100,000: until 2026-12-06 SQLite, ticked first, looked ~5 % slower beside
PostgreSQL than it is).

Each send tick also prints what it cost the whole machine (Linux): `machine_cpu_us_per_message`
(the CPU time of every process — the tick's, its delivery processes', PostgreSQL's server — per
message sent), `machine_idle_share` and `machine_stolen_share` (the cores' time left idle, or
taken by the VM's host). Once the cores are busy the first bounds the rate; it varies less from
run to run than messages per second on a shared VM.

The projects (SQLite file and .eml outbox) live where a real project keeps them: under the
checkout's `.nurture/` (git-ignored). Each send tick's project is removed as soon as its
figures are read, so that every tick starts from the same file system: kept until the end, the
100,000 .eml files of each tick slowed the next ones' file creation (tmpfs, six ticks in a
row: 18 → 30 µs a file, SQLite 115 → 141 µs and PostgreSQL 137 → 164 µs of machine CPU a
message; 117–119 and 139–144 µs with each removed) — and PostgreSQL, second in every pair,
paid more of it. `--dir` chooses another place. The cost of creating a file there is printed as `file_create_us`: on the 2-core CI VM it varies
from ~15 µs to ~600 µs of kernel time per file depending on the directory's ext4 block group
(this VM's much-used /tmp was at ~500 µs on 2026-11-22, which alone caps the file channel at
~2,000 files/s per core), so the tick is also worth measuring on tmpfs (`--dir /dev/shm`) to
see the engine's own speed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import write_project  # noqa: E402  (project writer shared with the tests)

from nurture.runtime import Runtime  # noqa: E402
from nurture.runtime.tick import run_tick  # noqa: E402
from nurture.spec.project import load_project  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import consent_t, contact_t, enrollment_t  # noqa: E402

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=timezone.utc)  # 12:00 UTC: outside quiet hours in Europe
ZONES = ["Europe/Berlin", "Europe/London", "Europe/Paris", "Africa/Lagos", "Europe/Madrid"]

JOURNEY = """
name: promo
trigger: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: promo, subject: "Hello {{ contact.first_name }}, 20% off for you"}
  - id: later
    wait: 30d
"""
TEMPLATE = """{% extends "layouts/base.html" %}{% block content %}
<h1>Hi {{ contact.first_name }}</h1><p>Your code <strong>{{ contact.code }}</strong> gives 20% off.</p>
<p><a class="button" href="https://shop.example.com/sale">Shop now</a></p>{% endblock %}"""
LAYOUT = """<!DOCTYPE html><html><head><style>
body { font-family: Arial; } h1 { font-size: 20px; color: #111; } p { line-height: 1.5; }
.button { background: #2563eb; color: #fff; padding: 12px; } .footer { color: #666; font-size: 12px; }
</style></head><body>{% block content %}{% endblock %}
<div class="footer"><a href="{{ links.unsubscribe }}">Unsubscribe</a></div></body></html>"""


def seed(rt: Runtime, n: int, due: bool) -> None:
    plan = rt.plan("promo")
    created = NOW - timedelta(days=10)
    with rt.store.engine.begin() as conn:
        conn.execute(contact_t.insert(), [
            {"email": f"user{i}@example.com", "first_name": f"User{i}", "timezone": ZONES[i % len(ZONES)],
             "lifecycle_stage": "lead", "score": 0.0, "attributes": {"code": f"C{i:06d}"},
             "created_at": created, "updated_at": created} for i in range(n)])
        ids = [r[0] for r in conn.execute(contact_t.select().with_only_columns(contact_t.c.id))]
        conn.execute(consent_t.insert(), [
            {"contact_id": cid, "channel": "email", "purpose": "marketing", "status": "granted", "source": "bench",
             "policy_version": "1", "recorded_at": created, "confirmed_at": created} for cid in ids])
        step, at = ("hello", NOW - timedelta(minutes=1)) if due else ("later", NOW + timedelta(days=20))
        conn.execute(enrollment_t.insert(), [
            {"contact_id": cid, "journey": "promo", "version": plan.version, "step_id": step, "next_due_at": at,
             "step_entered_at": at, "status": "active", "holdout": False, "entered_at": created,
             "revenue": 0.0, "defer_count": 0, "state": {}} for cid in ids])


class Postgres:
    """A throwaway PostgreSQL server (pgserver, default settings); a fresh database per project."""

    def __init__(self, base: Path):
        import pgserver
        self.data = Path(tempfile.mkdtemp(prefix="nurpg", dir=base))
        self.server = pgserver.get_server(str(self.data), cleanup_mode="stop")
        self.uri = self.server.get_uri()
        self.count = 0

    def new_database(self) -> str:
        """A fresh database; the previous ones are dropped first, which also frees the server's
        buffers they held (a tick on a server whose 128 MB of shared buffers are full of another
        database's pages reads its own back from the OS: ~10 µs a message more)."""
        from sqlalchemy import create_engine, text
        self.count += 1
        name = f"bench_{self.count}"
        admin = create_engine(self.uri.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for old in range(1, self.count + 1):
                conn.execute(text(f'DROP DATABASE IF EXISTS "bench_{old}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        base, _, query = self.uri.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}?{query}".replace("postgresql://", "postgresql+psycopg://")

    def close(self) -> None:
        try:
            self.server.cleanup()
        finally:
            for _ in range(20):  # the server may still be writing its last files as it stops
                shutil.rmtree(self.data, ignore_errors=True)
                if not self.data.exists():
                    break
                time.sleep(0.25)


def make(tmp: Path, n: int, due: bool, url: str | None = None) -> Runtime:
    root = write_project(tmp / ("due" if due else "idle"), {"promo": JOURNEY},
                         templates={"email/promo.html": TEMPLATE, "layouts/base.html": LAYOUT})
    spec = load_project(root)
    assert not spec.errors, spec.errors
    store = open_store(url or f"sqlite:///{root / '.nurture' / 'nurture.db'}")
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(root / ".nurture")})
    seed(rt, n, due)
    return rt


def machine_cpu() -> tuple[float, float, float] | None:
    """(busy, idle, stolen) CPU seconds of the whole machine so far, all cores (Linux's
    /proc/stat: user + nice + system + irq + softirq; idle + iowait; steal — time the VM's
    host gave to others). None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz, steal / hz


def settle(rt: Runtime) -> None:
    """Write the seeded data home before the timed tick, as it would be in a shop whose
    contacts were imported long before: SQLite's WAL into the database file, PostgreSQL's
    dirty buffers to disk (CHECKPOINT). Otherwise the tick pays for writing the seed — and
    on a PostgreSQL server that a previous tick of the bench used, for evicting that run's
    pages (its backends wrote ~60 MB of other databases' buffers themselves)."""
    raw = rt.store.engine.raw_connection()  # (outside a transaction: SQLite's checkpoint needs that)
    try:
        if rt.store.dialect == "sqlite":
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            raw.driver_connection.autocommit = True
            raw.driver_connection.execute("CHECKPOINT")
            raw.driver_connection.autocommit = False
    finally:
        raw.close()


# Issue 17: a 100,000-message send tick at 8,000 messages/s or more on 2 cores (2 processes),
# on SQLite and on PostgreSQL — and PostgreSQL at least SQLite's rate of the same run.
TARGET_RATE = 8000


def bench_send(tmp: Path, n: int, workers: int, url: str | None = None) -> dict:
    project = tmp / f"w{workers}"
    rt = make(project, n, due=True, url=url)
    run_tick(rt, "promo", NOW - timedelta(minutes=5))  # records the version; nothing due yet
    settle(rt)
    cpu_before = machine_cpu()
    started = time.perf_counter()
    report = run_tick(rt, "promo", NOW, workers=workers)
    end = time.perf_counter()
    cpu_after = machine_cpu()
    advanced = delivered = report.outcomes
    sent = sum(v for (step, status, _), v in delivered.items() if status == "sent")
    files = sum(1 for _ in (rt.data_dir / "outbox" / "email" / "promo").iterdir())
    rt.close()
    rt.store.dispose()
    shutil.rmtree(project, ignore_errors=True)  # (see the module's docstring)
    return {"database": rt.store.dialect, "contacts": n, "delivery_processes": workers, "sent": sent,
            "eml_files": files, "seconds": round(end - started, 2),
            "messages_per_second": round(sent / (end - started)),
            "target_messages_per_second": TARGET_RATE if workers >= 2 else None,
            "queued": sum(v for (s, status, _), v in advanced.items() if status == "queued"),
            **_cpu_figures(cpu_before, cpu_after, sent)}


WARM_UP = 20_000  # due in the untimed first send tick of each database (parallel.LARGE_TICK)


def warm_up(tmp: Path, workers: int, url: str | None = None) -> None:
    """An untimed send tick in this process before the timed ones (see the module's docstring)."""
    bench_send(tmp, WARM_UP, workers, url)


def _cpu_figures(before: tuple | None, after: tuple | None, sent: int) -> dict:
    """What the tick cost the machine: CPU of every process (the tick's, its delivery
    processes', a database server's) per message sent — what bounds messages per second
    once the cores are busy, and steadier than that rate on a shared VM — and the share of
    the cores left idle (waiting: locks, round trips) or stolen by the VM's host."""
    if before is None or after is None or not sent:
        return {}
    busy, idle, stolen = (b - a for a, b in zip(before, after))
    total = busy + idle + stolen
    return {"machine_cpu_us_per_message": round(busy / sent * 1e6),
            "machine_idle_share": round(idle / total, 3) if total else None,
            "machine_stolen_share": round(stolen / total, 3) if total else None}


def bench_idle(tmp: Path, n: int) -> dict:
    rt = make(tmp, n, due=False)
    run_tick(rt, "promo", NOW)  # first tick records the version
    started = time.perf_counter()
    report = run_tick(rt, "promo", NOW + timedelta(minutes=5))
    took = time.perf_counter() - started
    return {"active_enrollments": n, "seconds": round(took, 3), "target_seconds": 1.0,
            "outcomes": sum(report.outcomes.values())}


def bench_validate(tmp: Path, count: int = 50) -> dict:
    journeys = {}
    for i in range(count):
        journeys[f"journey_{i:02d}"] = f"""
name: journey_{i:02d}
trigger: {{event: signup, where: {{property: {{plan: {{in: [pro, team]}}}}}}}}
exit_when: [{{event: purchase}}]
goal: {{event: purchase, within: 7d}}
holdout: 10%
steps:
  - id: w1
    wait: 1h
  - id: s1
    send: {{channel: email, template: hello, subject: "Hi {{{{ contact.first_name }}}}"}}
  - id: b1
    branch:
      when: {{any: [{{attribute: {{country: DE}}}}, {{score: {{gte: 50}}}}]}}
      then: [{{id: s2, send: {{channel: sms, template: hello}}}}]
      else: [{{id: s3, send: {{channel: email, template: other, subject: Other}}}}]
  - id: wf
    wait_for: {{event: email_click, within: 2d, then: [{{id: u1, update: {{lifecycle_stage: engaged}}}}]}}
"""
    root = write_project(tmp / "validate", journeys)
    load_project(root)  # warm imports
    started = time.perf_counter()
    spec = load_project(root)
    took = time.perf_counter() - started
    return {"journeys": len(spec.journeys), "errors": len(spec.errors), "seconds": round(took, 3), "target_seconds": 1.0}


def file_create_us(tmp: Path, n: int = 2000) -> float:
    """What creating and writing one small file costs on this file system, right now."""
    folder = tmp / "file-create"
    folder.mkdir()
    data = b"x" * 3000
    started = time.perf_counter()
    for i in range(n):
        (folder / f"{i:09d}.eml").write_bytes(data)
    took = time.perf_counter() - started
    shutil.rmtree(folder)
    return round(took / n * 1e6, 1)


def _pair(sqlite_run: dict, postgres_run: dict) -> dict:
    """One SQLite and one PostgreSQL send tick, timed one after the other."""
    sq, pg = sqlite_run["messages_per_second"], postgres_run["messages_per_second"]
    return {"sqlite_messages_per_second": sq, "postgres_messages_per_second": pg,
            "postgres_vs_sqlite": round(pg / sq, 2),
            "machine_cpu_us_per_message": [sqlite_run.get("machine_cpu_us_per_message"),
                                           postgres_run.get("machine_cpu_us_per_message")]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where the bench projects live (default: the checkout's .nurture/)")
    parser.add_argument("--postgres", action="store_true", help="the send ticks on PostgreSQL (pgserver) too")
    parser.add_argument("--only", choices=["send"], default=None, help="send ticks only (no validate, no idle tick)")
    parser.add_argument("--workers", default="1,2", help="delivery processes of the send ticks (default 1,2)")
    parser.add_argument("--pairs", type=int, default=0,
                        help="with --postgres: N more SQLite/PostgreSQL pairs of send ticks (the last --workers count)")
    args = parser.parse_args()
    if args.pairs and not args.postgres:
        parser.error("--pairs compares the databases: it needs --postgres")
    base = Path(args.dir) if args.dir else Path(__file__).resolve().parent.parent / ".nurture"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=base))
    workers = [int(w) for w in args.workers.split(",")]
    pg = Postgres(base) if args.postgres else None
    try:
        result: dict = {"directory": str(tmp), "file_create_us": file_create_us(tmp)}
        if args.only != "send":
            result.update(validate=bench_validate(tmp), idle_tick=bench_idle(tmp, args.contacts))
        warm_up(tmp / "warm-sqlite", max(workers))
        if pg is not None:
            warm_up(tmp / "warm-postgres", max(workers), pg.new_database())
        for w in workers:
            name = f"send_tick_{w}_process" + ("es" if w > 1 else "")
            result[name] = bench_send(tmp / "sqlite", args.contacts, w)
            if pg is not None:
                result[f"postgres_{name}"] = bench_send(tmp / "postgres", args.contacts, w, pg.new_database())
        if pg is not None:
            w = workers[-1]
            name = f"send_tick_{w}_process" + ("es" if w > 1 else "")
            result["postgres_vs_sqlite"] = round(result[f"postgres_{name}"]["messages_per_second"]
                                                 / result[name]["messages_per_second"], 2)
            result["postgres_vs_sqlite_target"] = 1.0
            if args.pairs:
                pairs = [_pair(result[name], result[f"postgres_{name}"])]
                for i in range(args.pairs):
                    sqlite_run = bench_send(tmp / f"pair{i}-sqlite", args.contacts, w)
                    pairs.append(_pair(sqlite_run, bench_send(tmp / f"pair{i}-postgres", args.contacts, w,
                                                              pg.new_database())))
                result["pairs"] = pairs
                result["postgres_vs_sqlite_median"] = statistics.median(p["postgres_vs_sqlite"] for p in pairs)
    finally:
        if pg is not None:
            pg.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

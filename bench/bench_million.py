"""A million contacts, on SQLite and on PostgreSQL, over the same generated files.

Prints JSON, per database:
- import_contacts: `nurture import contacts` of N rows (e-mail, names, time zone, country,
  consent_email / consent_sms columns) through the CLI → seconds, peak RSS;
- track: `nurture track` of N events (one `signup` per contact) through the CLI → seconds, peak RSS;
- enroll_tick: the first tick of a journey triggered by `signup` (enrolls every contact; its
  first step waits 30 days) → seconds;
- idle_tick: a tick with nothing due over those N active enrollments → engine seconds;
- send_tick: the tick 30 days later, when every enrollment is due for its e-mail (file
  channel, delivery processes one per core) → messages per second;
- peak_rss_mb of every process: the CLI processes (os.wait4), the tick process
  (resource.getrusage), its fork server and delivery processes and the PostgreSQL server's
  processes (psutil, sampled every 0.5 s); peak_rss_anon_mb (and tick_process_anon) the CLI
  and tick processes' own memory without the SQLite file pages they map (OwnMemory).

    python bench/bench_million.py [--contacts 1000000] [--db sqlite,postgres] [--dir PATH]
                                  [--send-contacts N] [--ingest-contacts N] [--no-send]

`--send-contacts` makes the send tick's population smaller than the rest (the send tick is the
longest part: ~N / 3,000 s per database); by default it is the whole population. `--no-send`
leaves the send tick out (import, track and the enroll tick only).
`--ingest-contacts` sends only the first N rows through the CLI's import and track (whose
figures are then also projected linearly to the whole population) and writes the rest
directly; by default all of them go through the CLI. The files,
databases and .eml outbox live under `--dir` (default: the checkout's `.nurture/`); tmpfs
(`--dir /dev/shm`) shows the engine's speed rather than the disk's. A million .eml files are ~3 GB.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=timezone.utc)  # 12:00 UTC: outside quiet hours in these zones
ZONES = ["Europe/Berlin", "Europe/London", "Europe/Paris", "Africa/Lagos", "Europe/Madrid"]
JOURNEY = """
name: promo
trigger: {event: signup}
steps:
  - id: settle
    wait: 30d
  - id: hello
    send: {channel: email, template: promo, subject: "Hello {{ contact.first_name }}, 20% off for you"}
"""
TEMPLATE = """<h1>Hi {{ contact.first_name }}</h1><p>Your code <strong>{{ contact.code }}</strong> gives 20% off.</p>
<p><a href="https://shop.example.com/sale">Shop now</a> · <a href="{{ links.unsubscribe }}">Unsubscribe</a></p>"""


def mb(kilobytes: int) -> float:
    return round(kilobytes / 1024, 1)


def email_consent(rng: random.Random) -> str:
    roll = rng.random()
    return "granted" if roll < 0.9 else ("revoked" if roll < 0.95 else "pending")


def generate(folder: Path, n: int, seed: int = 7) -> tuple[Path, Path]:
    """contacts.csv (with consent columns) and events.jsonl (one signup per contact)."""
    rng = random.Random(seed)
    contacts, events = folder / "contacts.csv", folder / "events.jsonl"
    with contacts.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["email", "first_name", "last_name", "timezone", "country", "code", "consent_email",
                      "consent_sms"])
        for i in range(n):
            out.writerow([f"user{i}@example.com", f"User{i}", "Example", ZONES[i % len(ZONES)], "DE",
                          f"C{i:07d}", email_consent(rng), "granted" if rng.random() < 0.3 else ""])
    signed_up = NOW - timedelta(hours=1)
    with events.open("w", encoding="utf-8") as f:
        for i in range(n):
            at = (signed_up - timedelta(seconds=i % 3600)).isoformat()
            f.write(json.dumps({"event_id": f"e{i}", "email": f"user{i}@example.com", "event": "signup",
                                "properties": {"plan": "free"}, "timestamp": at}) + "\n")
    return contacts, events


def seed_rest(url: str, first: int, n: int, chunk: int = 50_000) -> float:
    """Contacts first..n-1 with their consents and signup events, written directly (COPY on
    PostgreSQL, the engine's raw executemany on SQLite): the population beyond the rows that
    went through the CLI (`--ingest-contacts`). The same values the files would have given."""
    from nurture.store.db import open_store
    from nurture.store.tables import consent_t, contact_t, event_t
    started = time.perf_counter()
    store = open_store(url)
    rng = random.Random(first)
    signed_up = NOW - timedelta(hours=1)
    for start in range(first, n, chunk):
        numbers = range(start, min(n, start + chunk))
        contacts = [{"email": f"user{i}@example.com", "first_name": f"User{i}", "last_name": "Example",
                     "timezone": ZONES[i % len(ZONES)], "country": "DE", "lifecycle_stage": "subscriber", "score": 0.0,
                     "attributes": {"code": f"C{i:07d}"}, "created_at": NOW - timedelta(hours=2),
                     "updated_at": NOW - timedelta(hours=2)} for i in numbers]
        with store.engine.begin() as conn:
            _write(conn, contact_t, contacts)
            ids = dict(conn.execute(contact_t.select().with_only_columns(contact_t.c.email, contact_t.c.id)
                                    .where(contact_t.c.email.in_([c["email"] for c in contacts]))).all())
            consents = []
            for c in contacts:
                status = email_consent(rng)
                consents.append({"contact_id": ids[c["email"]], "channel": "email", "purpose": "marketing",
                                 "status": status, "source": "import:contacts.csv", "policy_version": "",
                                 "recorded_at": NOW - timedelta(hours=2),
                                 "confirmed_at": NOW - timedelta(hours=2) if status == "granted" else None})
            _write(conn, consent_t, consents)
            _write(conn, event_t, [{"event_id": f"e{i}", "contact_id": ids[f"user{i}@example.com"], "name": "signup",
                                    "properties": {"plan": "free"},
                                    "occurred_at": signed_up - timedelta(seconds=i % 3600),
                                    "received_at": NOW - timedelta(minutes=30)} for i in numbers])
    store.dispose()
    return time.perf_counter() - started


def _write(conn, table, rows: list[dict]) -> None:
    if conn.dialect.name == "postgresql":
        columns = list(rows[0])
        cursor = conn.connection.dbapi_connection.cursor()
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(v) if isinstance(v, dict) else v for v in row.values()])
        return
    from nurture.runtime.sql import write_many
    write_many(conn, table.insert(), rows)


class ServerMemory:
    """Peak RSS of the PostgreSQL server's processes (postmaster and backends), or (`root`) of a
    process's descendants — the tick's fork server and delivery processes — sampled."""

    def __init__(self, data_dir: Path | None, root: int | None = None):
        self.data_dir = str(data_dir) if data_dir else None
        self.root = root
        self.peak_process_kb = 0
        self.peak_total_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ServerMemory":
        if self.data_dir or self.root:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is optional
            return
        root = psutil.Process(self.root) if self.root else None
        for proc in psutil.process_iter(["name", "cmdline"]) if root is None else ():
            if "postgres" in (proc.info["name"] or "") and self.data_dir in " ".join(proc.info["cmdline"] or []):
                root = proc
                break
        if root is None:
            return
        while not self._stop.wait(0.5):
            try:
                procs = root.children(recursive=True) if self.root else [root] + root.children(recursive=True)
                if not procs:
                    continue
                sizes = [p.memory_info().rss for p in procs]
            except psutil.Error:
                continue
            self.peak_process_kb = max(self.peak_process_kb, max(sizes) // 1024)
            self.peak_total_kb = max(self.peak_total_kb, sum(sizes) // 1024)


class OwnMemory:
    """Peak RssAnon of a process (/proc/PID/status, sampled every 0.1 s): its own memory. Its
    RSS also counts the pages of the SQLite file it reads through mmap (store.db sets
    mmap_size to 512 MiB), which are the file's, shared and given back under pressure."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "OwnMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            if self._stop.wait(0.1):
                return


def run_measured(cmd: list[str], env: dict, folder: Path) -> dict:
    """Run a command; its seconds, exit code, peak RSS (os.wait4: the largest of the process and
    the children it waited for), its peak own memory (OwnMemory), and the last line of its
    output (a JSON line for the bench's own steps)."""
    out_path, err_path = folder / "step.out", folder / "step.err"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        with OwnMemory(proc.pid) as own:
            _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out_path.read_text().splitlines() if line.strip()]
    errors = err_path.read_text().strip().splitlines()[-3:] if proc.returncode else []
    return {"seconds": round(took, 2), "exit_code": proc.returncode, "peak_rss_mb": mb(usage.ru_maxrss),
            "peak_rss_anon_mb": mb(own.peak_kb), "output": lines[-1] if lines else "", "stderr": errors}


def step_tick(args: argparse.Namespace) -> None:
    """In a process of its own: `--step enroll` (the enroll tick, then the idle tick) or
    `--step send` (the send tick); one JSON line with its figures and peak RSS."""
    from nurture.runtime import Runtime
    from nurture.runtime.tick import run_tick
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    spec = load_project(Path(args.project))
    assert not spec.errors, spec.errors
    rt = Runtime(open_store(args.url), spec, env={"NURTURE_DATA_DIR": str(Path(args.project) / ".nurture")})
    out: dict = {}
    if args.step == "enroll":
        started = time.perf_counter()
        report = run_tick(rt, "promo", NOW)
        out["enroll_tick"] = {"seconds": round(time.perf_counter() - started, 2), "enrolled": report.stages["enrolled"]}
        times = []
        for i in range(3):  # the first idle tick pays for cold caches; the best of three is the engine's time
            started = time.perf_counter()
            report = run_tick(rt, "promo", NOW + timedelta(minutes=5 * (i + 1)))
            times.append(round(time.perf_counter() - started, 3))
        out["idle_tick"] = {"seconds": min(times), "runs": times, "outcomes": sum(report.outcomes.values()),
                            "target_seconds": 1.0}
    else:
        if args.send_contacts:  # only the first N enrollments fall due; the rest wait on
            from sqlalchemy import update
            from nurture.store.tables import enrollment_t
            with rt.store.engine.begin() as conn:
                conn.execute(update(enrollment_t).where(enrollment_t.c.contact_id > args.send_contacts)
                             .values(next_due_at=NOW + timedelta(days=365)))
        at = NOW + timedelta(days=30, minutes=1)
        with ServerMemory(None, root=os.getpid()) as helpers:  # the fork server and delivery processes
            started = time.perf_counter()
            report = run_tick(rt, "promo", at, workers=args.workers)
            took = time.perf_counter() - started
        out["helpers_peak_rss_mb"] = mb(helpers.peak_process_kb)
        outcomes: dict[str, int] = {}
        for (_, status, _), n in report.outcomes.items():
            outcomes[status] = outcomes.get(status, 0) + n
        out["send_tick"] = {"seconds": round(took, 2), "sent": outcomes.get("sent", 0),
                            "messages_per_second": round(outcomes.get("sent", 0) / took),
                            "delivery_processes": args.workers, "outcomes": outcomes}
    out["peak_rss_mb"] = {"tick_process": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
                          "largest_delivery_process": out.pop("helpers_peak_rss_mb", 0.0)}
    rt.close()
    rt.store.dispose()
    print(json.dumps(out))


def bench_database(name: str, url: str, work: Path, files: tuple[Path, Path], args: argparse.Namespace,
                   server_dir: Path | None) -> dict:
    from tests.conftest import write_project
    project = write_project(work / f"project-{name}", {"promo": JOURNEY}, templates={"email/promo.html": TEMPLATE})
    env = {**os.environ, "NURTURE_DATABASE_URL": url, "NURTURE_PROJECT": str(project),
           "NURTURE_DATA_DIR": str(project / ".nurture"), "PYTHONWARNINGS": "ignore",
           # this checkout's engine, whether or not it is the one installed
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    nurture = [sys.executable, "-m", "nurture.cli"] if not shutil.which("nurture") else [shutil.which("nurture")]
    me = [sys.executable, str(Path(__file__).resolve()), "--url", url, "--project", str(project),
          "--workers", str(args.workers), "--send-contacts", str(args.send_contacts or 0)]
    result: dict = {"database": name}
    with ServerMemory(server_dir) as server:
        for key, cmd in (("import_contacts", nurture + ["--project", str(project), "import", "contacts",
                                                        str(files[0])]),
                         ("track", nurture + ["--project", str(project), "track", str(files[1])])):
            got = run_measured(cmd, env, work)
            rows = args.ingest_contacts or args.contacts
            result[key] = {"rows": rows, "seconds": got["seconds"], "exit_code": got["exit_code"],
                           "rows_per_second": round(rows / got["seconds"]), "target_seconds": 60,
                           "peak_rss_mb": got["peak_rss_mb"], "peak_rss_anon_mb": got["peak_rss_anon_mb"],
                           "said": got["output"], "stderr": got["stderr"]}
            if rows < args.contacts:  # linear: every slice of rows costs about the same
                result[key]["projected_seconds_for_all"] = round(got["seconds"] * args.contacts / rows)
        if args.ingest_contacts and args.ingest_contacts < args.contacts:
            result["seeded_directly"] = {"rows": args.contacts - args.ingest_contacts,
                                         "seconds": round(seed_rest(url, args.ingest_contacts, args.contacts), 1)}
        for step in ("enroll",) if args.no_send else ("enroll", "send"):
            got = run_measured(me + ["--step", step], env, work)
            try:
                figures = json.loads(got["output"])
            except json.JSONDecodeError:
                result[f"{step}_failed"] = got
                break
            peak = {**figures.pop("peak_rss_mb"), "tick_process_anon": got["peak_rss_anon_mb"]}
            for key, value in figures.items():
                result[key] = {**value, "peak_rss_mb": peak}
    if server_dir is not None:
        result["postgres_server_peak_rss_mb"] = {"largest_process": mb(server.peak_process_kb),
                                                 "all_processes": mb(server.peak_total_kb)}
    if "send_tick" in result:
        eml = project / ".nurture" / "outbox" / "email" / "promo"
        result["send_tick"]["eml_files"] = sum(1 for _ in eml.iterdir()) if eml.is_dir() else 0
    shutil.rmtree(project / ".nurture" / "outbox", ignore_errors=True)  # ~3 GB of .eml at a million
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--send-contacts", type=int, default=0, help="how many of them the send tick sends to (0: all)")
    parser.add_argument("--ingest-contacts", type=int, default=0,
                        help="how many of them go through the CLI's import and track (0: all); the rest are written "
                             "directly, and the CLI figures are also projected to the whole population")
    parser.add_argument("--no-send", action="store_true", help="leave the send tick out")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--dir", default=None,
                        help="where files and databases live (default: the checkout's .nurture/)")
    parser.add_argument("--workers", type=int, default=0, help="delivery processes of the send tick (0: one per core)")
    parser.add_argument("--step", choices=["enroll", "send"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.workers:
        from nurture.runtime.parallel import default_processes
        args.workers = default_processes()
    if args.step:
        step_tick(args)
        return
    base = Path(args.dir) if args.dir else ROOT / ".nurture"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="million-", dir=base))
    out: dict = {"contacts": args.contacts, "send_contacts": args.send_contacts or args.contacts,
                 "ingest_contacts": args.ingest_contacts or args.contacts, "directory": str(work),
                 "cores": os.cpu_count()}
    try:
        started = time.perf_counter()
        files = generate(work, args.ingest_contacts or args.contacts)
        out["generate_seconds"] = round(time.perf_counter() - started, 1)
        for name in args.db.split(","):
            server_dir = None
            pg = None
            if name == "postgres":
                import pgserver
                server_dir = Path(tempfile.mkdtemp(prefix="nurpg", dir=base))
                pg = pgserver.get_server(str(server_dir), cleanup_mode="stop")
                url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
            else:
                url = f"sqlite:///{work / 'million.db'}"
            try:
                out[name] = bench_database(name, url, work, files, args, server_dir)
            finally:
                if pg is not None:
                    pg.cleanup()
                    shutil.rmtree(server_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark of one journey tick on the embedded default (SQLite, file e-mail channel).

Prints JSON:
- send_tick: N contacts each due for one e-mail → messages/second for the whole tick
  (`run_tick`: enroll, exit/convert, advance = guards + outbox insert, deliver = render,
  assemble, write .eml, record), in one process and with 2 delivery processes pipelined
  with the advance stage.
- idle_tick: a tick with nothing due over N active enrollments → engine seconds.
- validate: validating 50 journeys → seconds.

    python bench/bench_tick.py [--contacts 100000] [--dir PATH]

The projects (SQLite file and .eml outbox) live where a real project keeps them: under the
checkout's `.nurture/` (git-ignored), removed afterwards. `--dir` chooses another place. The
cost of creating a file there is printed as `file_create_us`: on the 2-core CI VM it varies
from ~15 µs to ~600 µs of kernel time per file depending on the directory's ext4 block group
(this VM's much-used /tmp was at ~500 µs on 2026-11-22, which alone caps the file channel at
~2,000 files/s per core), so the tick is also worth measuring on tmpfs (`--dir /dev/shm`) to
see the engine's own speed.
"""
from __future__ import annotations

import argparse
import json
import shutil
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


def make(tmp: Path, n: int, due: bool) -> Runtime:
    root = write_project(tmp / ("due" if due else "idle"), {"promo": JOURNEY},
                         templates={"email/promo.html": TEMPLATE, "layouts/base.html": LAYOUT})
    spec = load_project(root)
    assert not spec.errors, spec.errors
    store = open_store(f"sqlite:///{root / '.nurture' / 'nurture.db'}")
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(root / ".nurture")})
    seed(rt, n, due)
    return rt


def bench_send(tmp: Path, n: int, workers: int) -> dict:
    rt = make(tmp / f"w{workers}", n, due=True)
    run_tick(rt, "promo", NOW - timedelta(minutes=5))  # records the version; nothing due yet
    started = time.perf_counter()
    report = run_tick(rt, "promo", NOW, workers=workers)
    end = time.perf_counter()
    advanced = delivered = report.outcomes
    sent = sum(v for (step, status, _), v in delivered.items() if status == "sent")
    files = sum(1 for _ in (rt.data_dir / "outbox" / "email" / "promo").iterdir())
    return {"contacts": n, "delivery_processes": workers, "sent": sent, "eml_files": files, "seconds": round(end - started, 2),
            "messages_per_second": round(sent / (end - started)), "target_messages_per_second": 5000,
            "queued": sum(v for (s, status, _), v in advanced.items() if status == "queued")}


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where the bench projects live (default: the checkout's .nurture/)")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(__file__).resolve().parent.parent / ".nurture"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=base))
    try:
        result = {"directory": str(tmp), "file_create_us": file_create_us(tmp),
                  "validate": bench_validate(tmp), "idle_tick": bench_idle(tmp, args.contacts),
                  "send_tick_1_process": bench_send(tmp, args.contacts, 1),
                  "send_tick_2_processes": bench_send(tmp, args.contacts, 2)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

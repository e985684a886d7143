"""Benchmark of instant triggers: speed to lead through `nurture web` with the SMTP backend.

A local SMTP server (aiosmtpd, in this process) stands in for the relay; `nurture web` runs as
a uvicorn subprocess with NURTURE_EMAIL_BACKEND=smtp; events are posted to `POST /events` at
`--rate` per second for `--seconds` (each for its own consenting contact) to a journey whose
first step is an e-mail; a tick of the journey runs alongside every `--tick-every` seconds, in
this process, on the same database. Latency per event: from the 2xx answer to the SMTP server
accepting the message (end of DATA), matched by recipient. Prints JSON per database:
p50/p95/max seconds, how many were received, and the ticks' own sends.

    python bench/bench_instant.py [--seconds 60] [--rate 20] [--db sqlite,postgres]

Target (issue 14): p50 under 1 s, p95 under 3 s, on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

from tests.conftest import write_project  # noqa: E402  (project writer shared with the tests)

from nurture.runtime import Runtime  # noqa: E402
from nurture.runtime.tick import run_tick  # noqa: E402
from nurture.spec.project import load_project  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import consent_t, contact_t  # noqa: E402

TOKEN = "bench-ingest-token-0123456789"
SECRET = "bench-secret-0123456789abcdef"
JOURNEY = """name: welcome
trigger: {event: lead}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: Welcome}
"""
POLICIES = """
timezone: UTC
quiet_hours: {}
frequency_caps: []
double_opt_in: {}
"""


class Inbox:
    """aiosmtpd handler: the time each recipient's message was accepted."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}
        self.deliveries = 0  # every accepted recipient, a double send included
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        at = time.time()
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.deliveries += 1
                self.accepted.setdefault(rcpt.lower(), at)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_web(root: Path, port: int, env: dict, log_path: Path, headers: dict) -> tuple[subprocess.Popen, httpx.Client]:
    """`nurture web` for project `root` as a subprocess on 127.0.0.1:`port`, and a client once it
    answers /healthz (RuntimeError naming the log when it does not start within 60 s)."""
    web = subprocess.Popen([sys.executable, "-c", "from nurture.cli import main; main()", "--project", str(root),
                            "web", "--port", str(port)], env=env, cwd=str(REPO),
                           stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers)
    deadline = time.monotonic() + 60
    while True:
        try:
            if http.get("/healthz").status_code == 200:
                return web, http
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or web.poll() is not None:
            web.kill()
            raise RuntimeError(f"nurture web did not start; see {log_path}")
        time.sleep(0.1)


def stop_web(web: subprocess.Popen) -> None:
    web.terminate()
    try:
        web.wait(30)
    except subprocess.TimeoutExpired:
        web.kill()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def add_leads(store, count: int) -> list[str]:
    emails = [f"lead{i}@example.com" for i in range(count)]
    epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with store.engine.begin() as conn:
        conn.execute(contact_t.insert(), [{"email": e, "lifecycle_stage": "lead", "score": 0.0, "attributes": {},
                                           "created_at": epoch, "updated_at": epoch} for e in emails])
        ids = [r[0] for r in conn.execute(contact_t.select().with_only_columns(contact_t.c.id)
                                          .where(contact_t.c.email.in_(emails)))]
        conn.execute(consent_t.insert(), [dict(contact_id=cid, channel="email", purpose="marketing", status="granted",
                                               source="bench", policy_version="", recorded_at=epoch,
                                               confirmed_at=epoch) for cid in ids])
    return emails


def run(db: str, seconds: float, rate: float, tick_every: float, workdir: Path) -> dict:
    root = write_project(workdir / db / "project", {"welcome": JOURNEY}, policies=POLICIES)
    pg = None
    if db == "postgres":
        import pgserver
        pg = pgserver.get_server(str(Path(tempfile.mkdtemp(prefix="nurbpg"))), cleanup_mode="stop")
        url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
    else:
        url = f"sqlite:///{root / '.nurture' / 'nurture.db'}"
        (root / ".nurture").mkdir(parents=True, exist_ok=True)
    store = open_store(url)  # migrates the empty database
    total = int(seconds * rate)
    emails = add_leads(store, total)
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update({"NURTURE_DATABASE_URL": url, "NURTURE_SECRET_KEY": SECRET, "NURTURE_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "NURTURE_INGEST_TOKEN": TOKEN, "NURTURE_EMAIL_BACKEND": "smtp", "NURTURE_SMTP_HOST": "127.0.0.1",
                "NURTURE_SMTP_PORT": str(smtp.port), "NURTURE_SMTP_SECURITY": "none",
                "NURTURE_FROM_EMAIL": "shop@example.com", "NURTURE_DATA_DIR": str(root / ".nurture")})
    web, http = start_web(root, port, env, workdir / f"web-{db}.log", {"Authorization": f"Bearer {TOKEN}"})
    stop = threading.Event()
    ticks: list[dict] = []
    try:
        rt = Runtime(store, load_project(root), env=env)

        def ticking() -> None:  # the scheduled ticks, alongside
            while not stop.wait(tick_every):
                started = time.monotonic()
                report = run_tick(rt, "welcome")
                ticks.append({"seconds": round(time.monotonic() - started, 3), "enrolled": report.stages["enrolled"],
                              "sent": report.totals().get("sent", 0)})
        ticker = threading.Thread(target=ticking, daemon=True)
        ticker.start()

        answered: dict[str, float] = {}
        statuses: list[int] = []

        def post(email: str) -> None:
            event = {"event_id": uuid.uuid4().hex, "email": email, "event": "lead",
                     "timestamp": datetime.now(timezone.utc).isoformat()}
            response = http.post("/events", json=event)
            answered[email] = time.time()
            statuses.append(response.status_code)

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            for i, email in enumerate(emails):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(post, email)
        posting = time.monotonic() - start
        wait_until = time.monotonic() + 30
        while len(inbox.accepted) < total and time.monotonic() < wait_until:
            time.sleep(0.1)
        stop.set()
        ticker.join(60)
        rt.close()
        latencies = [inbox.accepted[e] - answered[e] for e in emails if e in inbox.accepted and e in answered]
        return {"db": db, "events": total, "rate_per_s": rate, "posting_seconds": round(posting, 1),
                "non_2xx": sum(1 for s in statuses if not 200 <= s < 300), "received": len(inbox.accepted),
                "double_sends": inbox.deliveries - len(inbox.accepted),
                "p50_s": round(quantile(latencies, 0.5), 3) if latencies else None,
                "p95_s": round(quantile(latencies, 0.95), 3) if latencies else None,
                "max_s": round(max(latencies), 3) if latencies else None,
                "ticks": len(ticks), "sent_by_ticks": sum(t["sent"] for t in ticks),
                "tick_seconds_max": max((t["seconds"] for t in ticks), default=None),
                "target_met": bool(latencies) and quantile(latencies, 0.5) < 1 and quantile(latencies, 0.95) < 3}
    finally:
        stop.set()
        stop_web(web)
        smtp.stop()
        store.dispose()
        if pg is not None:
            pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--tick-every", type=float, default=5.0, help="seconds between the alongside ticks")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--dir", default=None, help="where the bench's fresh directory is made (default: the system's temp)")
    args = parser.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    # a fresh directory every run, removed afterwards (a second run into the same --dir found
    # the first run's database and its leads)
    workdir = Path(tempfile.mkdtemp(prefix="nurture-bench-instant-", dir=args.dir))
    try:
        results = [run(db, args.seconds, args.rate, args.tick_every, workdir) for db in args.db.split(",")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"instant_speed_to_lead": results}, indent=2))


if __name__ == "__main__":
    main()

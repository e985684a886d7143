"""Benchmark of the Segment-compatible ingest: events per second through `POST /v1/batch`.

`nurture web` runs as a uvicorn subprocess (one process, as `nurture web` starts it) on SQLite or
PostgreSQL (pgserver); `--clients` threads post batches of `--batch-size` track calls (Segment's
batch format: `{"batch": [{"type": "track", "userId", "event", "messageId", "properties",
"context": {"campaign": …}, "timestamp"}]}`, HTTP Basic with the write key) for `--events`
events in all, from `--users` distinct users (the first event of a user creates its contact and
identity, the later ones find it; `--users` equal to `--events` measures new visitors only). Instant triggers are on, with no journey triggered by the event (the
ingest path alone is measured; bench_instant.py measures speed to lead). Prints JSON per
database: events, seconds, events per second, non-2xx answers, events stored.

    python bench/bench_segment_batch.py [--events 20000] [--batch-size 100] [--clients 4] [--users N] [--db sqlite,postgres]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from bench.bench_instant import free_port, start_web, stop_web  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import event_t  # noqa: E402
from tests.conftest import write_project  # noqa: E402

WRITE_KEY = "bench-write-key-0123456789"
SECRET = "bench-secret-0123456789abcdef"
JOURNEY = "name: welcome\ntrigger: {event: signup}\nsteps:\n  - id: hello\n    send: {channel: email, template: hello, subject: Hi}\n"


def batch_body(start: int, size: int, users: int) -> dict:
    now = datetime.now(timezone.utc).isoformat()
    return {"batch": [{"type": "track", "userId": f"user-{i % users}", "event": "Product Viewed", "messageId": uuid.uuid4().hex,
                       "properties": {"sku": f"SKU-{i % 500}", "price": 19.9},
                       "context": {"campaign": {"source": "google", "medium": "cpc", "name": "winter"}},
                       "timestamp": now} for i in range(start, start + size)], "sentAt": now}


def run(db: str, events: int, size: int, clients: int, users: int, workdir: Path) -> dict:
    root = write_project(workdir / db / "project", {"welcome": JOURNEY})
    pg = None
    if db == "postgres":
        import pgserver
        pg = pgserver.get_server(str(Path(tempfile.mkdtemp(prefix="nurbpg"))), cleanup_mode="stop")
        url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
    else:
        (root / ".nurture").mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{root / '.nurture' / 'nurture.db'}"
    store = open_store(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update({"NURTURE_DATABASE_URL": url, "NURTURE_SECRET_KEY": SECRET, "NURTURE_WRITE_KEY": WRITE_KEY,
                "NURTURE_PUBLIC_URL": f"http://127.0.0.1:{port}", "NURTURE_DATA_DIR": str(root / ".nurture")})
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    web, http = start_web(root, port, env, workdir / f"web-{db}.log", {"Authorization": auth})
    try:
        bodies = [json.dumps(batch_body(i, min(size, events - i), users)).encode() for i in range(0, events, size)]
        statuses: list[int] = []

        def post(body: bytes) -> None:
            statuses.append(http.post("/v1/batch", content=body, headers={"Content-Type": "application/json"}).status_code)

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post, bodies))
        seconds = time.monotonic() - started
        with store.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(event_t)).scalar()
        return {"db": db, "events": events, "users": users, "batch_size": size, "clients": clients, "seconds": round(seconds, 2),
                "events_per_s": round(events / seconds), "non_2xx": sum(1 for s in statuses if not 200 <= s < 300),
                "stored": stored}
    finally:
        stop_web(web)
        store.dispose()
        if pg is not None:
            pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--users", type=int, default=None,
                        help="distinct users (default: events / 10 — each user sends 10 events, the first creates it)")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="nurture-bench-batch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        users = args.users or max(1, args.events // 10)
        results = [run(db, args.events, args.batch_size, args.clients, users, workdir) for db in args.db.split(",")]
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"segment_batch_ingest": results}, indent=2))


if __name__ == "__main__":
    main()

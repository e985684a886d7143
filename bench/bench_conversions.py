"""Benchmark: offline conversions — 100,000 purchase events to the Meta Conversions API (and the
Google Data Manager API), then a day with 1 % new events, then a run with none.

Prints JSON: seconds and requests per 1,000 events sent, per run. The platforms are the local
fake servers from tests/fakes (real HTTP on 127.0.0.1, every event checked), so `requests`
are real requests. 80 % of the contacts granted ads consent (the others are skipped, in
SQL-read pages, without a request); the requests of a run grow with its new events, not with
the contacts or the history.

    python bench/bench_conversions.py [--events 100000] [--platform meta|google|both] [--url URL | --postgres]
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

from sqlalchemy import func, select  # noqa: E402

from integrations.google_conversions import GoogleConversionsDestination  # noqa: E402
from integrations.http_retry import RetryPolicy  # noqa: E402
from integrations.meta_conversions import MetaConversionsDestination  # noqa: E402
from nurture.conversions.send import send_target, targets  # noqa: E402
from nurture.spec.project import load_project  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import consent_t, contact_t, event_t  # noqa: E402
from tests.conftest import write_project  # noqa: E402
from tests.fakes.google import FakeGoogle  # noqa: E402
from tests.fakes.meta import FakeMeta  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
CONVERSIONS = """
conversions:
  - event: purchase
    destinations:
{destinations}
"""
DESTINATIONS = {"meta": '      - {destination: meta, dataset_id: "1234567890"}',
                "google": '      - {destination: google, operating_account: "1234567890", '
                          'conversion_action: "987654321"}'}
CHUNK = 50_000


def generate(store, n: int, at: datetime, offset: int = 0) -> float:
    """n contacts (80 % with ads consent), each with one purchase at `at`."""
    started = time.perf_counter()
    with store.engine.begin() as conn:
        base = conn.execute(select(func.coalesce(func.max(contact_t.c.id), 0))).scalar_one()
        for lo in range(0, n, CHUNK):
            span = range(lo, min(n, lo + CHUNK))
            conn.execute(contact_t.insert(), [
                {"email": f"buyer{offset + i}@example.com", "phone": f"+4930{offset + i:07d}", "first_name": "Ann",
                 "last_name": "Lee", "timezone": None, "country": "DE", "locale": None, "lifecycle_stage": "customer",
                 "score": 0.0, "attributes": {}, "created_at": at, "updated_at": at} for i in span])
            conn.execute(consent_t.insert(), [
                {"contact_id": base + 1 + i, "channel": "ads", "purpose": "marketing", "status": "granted",
                 "source": "bench", "policy_version": "", "recorded_at": at - timedelta(days=1), "confirmed_at": None}
                for i in span if i % 10 < 8])
            conn.execute(event_t.insert(), [
                {"event_id": f"order-{offset + i}", "contact_id": base + 1 + i, "name": "purchase",
                 "properties": {"value": 10 + i % 90, "currency": "EUR", "gclid": f"Cj0{offset + i:09d}"},
                 "occurred_at": at, "received_at": at} for i in span])
    return time.perf_counter() - started


def destination(platform: str, server):
    policy = RetryPolicy(max_attempts=3, sleep=lambda s: None)
    if platform == "meta":
        return MetaConversionsDestination("bench-token", server.url, policy=policy)
    return GoogleConversionsDestination("bench-token", server.url, policy=policy)


def run(store, project, refs, servers, now: datetime) -> dict:
    out = {}
    for ref in refs:
        server = servers[ref.destination]
        server.clock = now
        dest = destination(ref.destination, server)
        started = time.perf_counter()
        report = send_target(store, project, ref, dest, now)
        seconds = time.perf_counter() - started
        dest.close()
        per_k = 1000 / report.sent if report.sent else 0
        out[ref.destination] = {"due": report.due, "sent": report.sent, "skipped": report.skipped,
                                "failed": report.failed, "requests": report.requests, "seconds": round(seconds, 2),
                                "requests_per_1000_sent": round(report.requests * per_k, 2),
                                "seconds_per_1000_sent": round(seconds * per_k, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--platform", choices=("meta", "google", "both"), default="both")
    parser.add_argument("--url", default=None)
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL (pgserver)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nurconvbench"))
    url = args.url or f"sqlite:///{work / 'bench.db'}"
    pg = None
    if args.postgres:
        import pgserver
        pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
        url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
    store = open_store(url)
    platforms = ("meta", "google") if args.platform == "both" else (args.platform,)
    root = write_project(work / "project", {})
    (root / "journeys" / "conversions.yaml").write_text(
        CONVERSIONS.format(destinations="\n".join(DESTINATIONS[p] for p in platforms)))
    project = load_project(root)
    assert not project.errors, project.errors
    refs = targets(project)
    servers = {"meta": FakeMeta("bench-token").start(), "google": FakeGoogle("bench-token").start()}
    day0 = T0 + timedelta(hours=2)
    try:
        gen_s = generate(store, args.events, T0)
        first = run(store, project, refs, servers, day0)
        new = args.events // 100
        generate(store, new, T0 + timedelta(days=1), offset=args.events)
        second = run(store, project, refs, servers, day0 + timedelta(days=1))
        idle = run(store, project, refs, servers, day0 + timedelta(days=1, hours=1))
        problems = {p: servers[p].problems[:3] for p in platforms}
        held = {"meta": len(servers["meta"].conversions("1234567890")),
                "google": len(servers["google"].conversions("987654321"))}
    finally:
        for server in servers.values():
            server.stop()
    print(json.dumps({"events": args.events, "database": store.dialect, "generate_s": round(gen_s, 1),
                      "run1_all_new": first, "run2_one_percent_new": second, "run3_nothing_new": idle,
                      "platform_held": {p: held[p] for p in platforms}, "protocol_problems": problems}, indent=2))
    store.dispose()
    if pg is not None:
        pg.cleanup()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: the nightly segment sync over 1,000,000 contacts with 1 % changing per day.

Prints JSON. Engine time = membership + diff (`compute_diff`: the SQL over all contacts and
the Python over the changes); a full run also pushes to a destination — here the local fake
Meta server from tests/fakes (real HTTP on 127.0.0.1), so `requests` are real requests.
Day 0 uploads the whole segment; day 1 changes 1 % of the contacts (enter, leave, revoke ads
consent, change e-mail); a third run with no changes shows the floor.

    python bench/bench_segment_sync.py [--contacts 1000000] [--url URL | --postgres]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import bindparam, func, select, update  # noqa: E402

from integrations.http_retry import RetryPolicy  # noqa: E402
from integrations.meta import MetaDestination  # noqa: E402
from nurture.segments.sync import compute_diff, sync_target, targets  # noqa: E402
from nurture.spec.project import load_project  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import consent_t, contact_t  # noqa: E402
from tests.conftest import write_project  # noqa: E402
from tests.fakes.meta import FakeMeta  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
SEGMENTS = """
segments:
  - name: pro_users
    when: {all: [{attribute: {plan: pro}}, {score: {gte: 10}}]}
    destinations:
      - {destination: meta, audience_id: "23850000000001"}
"""
CHUNK = 50_000


def generate(store, n: int, rng: random.Random) -> float:
    started = time.perf_counter()
    with store.engine.begin() as conn:
        for lo in range(0, n, CHUNK):
            rows = [{"email": f"user{i}@example.com", "phone": None, "first_name": f"N{i % 997}",
                     "last_name": f"L{i % 991}", "timezone": None, "country": "DE", "locale": None,
                     "lifecycle_stage": "lead", "score": float(i % 50),
                     "attributes": {"plan": "pro" if i % 5 < 2 else "basic"},
                     "created_at": T0, "updated_at": T0} for i in range(lo, min(n, lo + CHUNK))]
            conn.execute(contact_t.insert(), rows)
        first = conn.execute(select(func.min(contact_t.c.id))).scalar_one()
        for lo in range(0, n, CHUNK):  # 80 % granted ads consent
            rows = [{"contact_id": first + i, "channel": "ads", "purpose": "marketing", "status": "granted",
                     "source": "bench", "policy_version": "", "recorded_at": T0, "confirmed_at": None}
                    for i in range(lo, min(n, lo + CHUNK)) if i % 10 < 8]
            conn.execute(consent_t.insert(), rows)
    return time.perf_counter() - started


def change_one_percent(store, n: int, day: datetime, rng: random.Random) -> dict:
    first = 1
    picked = rng.sample(range(n), n // 100)
    kinds = {"plan": picked[0::4], "score": picked[1::4], "consent": picked[2::4], "email": picked[3::4]}
    with store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == bindparam("cid")).values(
            attributes=bindparam("attrs"), updated_at=bindparam("at")),
            [{"cid": first + i, "attrs": {"plan": "basic" if i % 5 < 2 else "pro"}, "at": day} for i in kinds["plan"]])
        conn.execute(update(contact_t).where(contact_t.c.id == bindparam("cid")).values(
            score=bindparam("s"), updated_at=bindparam("at")),
            [{"cid": first + i, "s": 0.0 if i % 50 >= 10 else 40.0, "at": day} for i in kinds["score"]])
        conn.execute(consent_t.insert(), [
            {"contact_id": first + i, "channel": "ads", "purpose": "marketing",
             "status": "revoked" if i % 10 < 8 else "granted", "source": "bench", "policy_version": "",
             "recorded_at": day, "confirmed_at": None} for i in kinds["consent"]])
        conn.execute(update(contact_t).where(contact_t.c.id == bindparam("cid")).values(
            email=bindparam("e"), updated_at=bindparam("at")),
            [{"cid": first + i, "e": f"user{i}.new@example.org", "at": day} for i in kinds["email"]])
    return {k: len(v) for k, v in kinds.items()}


def run(store, project, ref, server, now: datetime) -> dict:
    dest = MetaDestination("bench-token", server.url, policy=RetryPolicy(max_attempts=3, sleep=lambda s: None))
    t = time.perf_counter()
    diff = compute_diff(store, project, ref, dest, now)
    diff_s = time.perf_counter() - t
    t = time.perf_counter()
    report = sync_target(store, project, ref, dest, now)
    total_s = time.perf_counter() - t
    dest.close()
    return {"engine_membership_plus_diff_s": round(diff_s, 2), "full_run_s": round(total_s, 2),
            "adds": len(diff.adds), "removes": len(diff.removes), "updates": len(diff.updates),
            "touched": len(diff.touches), "requests": report.requests, "added": report.added,
            "removed": report.removed, "updated": report.updated, "failed": report.failed,
            "members_after": report.members}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--url", default=None)
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL (pgserver)")
    args = parser.parse_args()
    rng = random.Random(4)
    work = Path(tempfile.mkdtemp(prefix="nurbench"))
    url = args.url or f"sqlite:///{work / 'bench.db'}"
    pg = None
    if args.postgres:
        import pgserver
        pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
        url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
    store = open_store(url)
    root = write_project(work / "project", {}, segments=SEGMENTS)
    project = load_project(root)
    assert not project.errors, project.errors
    (ref,) = targets(project)
    server = FakeMeta("bench-token").start()
    try:
        gen_s = generate(store, args.contacts, rng)
        day0 = run(store, project, ref, server, T0 + timedelta(hours=2))
        changed = change_one_percent(store, args.contacts, T0 + timedelta(days=1), rng)
        day1 = run(store, project, ref, server, T0 + timedelta(days=1, hours=2))
        idle = run(store, project, ref, server, T0 + timedelta(days=2, hours=2))
        audience = len(server.members("23850000000001"))
    finally:
        server.stop()
    print(json.dumps({"contacts": args.contacts, "database": store.dialect, "generate_s": round(gen_s, 1),
                      "changed_day1": changed, "day0_initial_upload": day0, "day1_one_percent_changed": day1,
                      "day2_no_changes": idle, "fake_meta_audience_size": audience,
                      "acknowledged_rows": day1["members_after"]}, indent=2))
    store.dispose()
    if pg is not None:
        pg.cleanup()
    shutil.rmtree(work, ignore_errors=True)  # the 1M-contact database is ~0.5 GB


if __name__ == "__main__":
    main()

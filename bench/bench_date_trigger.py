"""Benchmark: the enroll stage of a birthday journey (`trigger: {date: birthday, every: year}`)
over 100,000 contacts that each carry a birthday (spread over the year, in five time zones).

Prints JSON: seconds of the first tick of a day (enrolls that day's birthdays), of a re-run
at the same clock (enrolls nothing) and of a tick of a day later, with the contacts each read.
SQL selects only the contacts whose birthday month-day lies in the few days that can be due,
so a tick reads ~2 % of the contacts, not all of them.

    python bench/bench_date_trigger.py [--contacts 100000] [--url URL | --postgres]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from nurture.runtime import Runtime  # noqa: E402
from nurture.runtime.enroll import enroll  # noqa: E402
from nurture.spec.project import load_project  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import contact_t, enrollment_t  # noqa: E402
from tests.conftest import write_project  # noqa: E402

T0 = datetime(2027, 3, 14, 12, 0, tzinfo=timezone.utc)
ZONES = [None, "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
JOURNEY = """name: birthday
trigger: {date: birthday, at: "09:00", every: year}
steps:
  - {id: pause, wait: 1d}
"""
CHUNK = 50_000


def generate(store, n: int) -> None:
    rng = random.Random(15)
    with store.engine.begin() as conn:
        for lo in range(0, n, CHUNK):
            conn.execute(contact_t.insert(), [
                {"email": f"c{i}@example.com", "timezone": ZONES[i % len(ZONES)], "lifecycle_stage": "lead",
                 "score": 0.0, "created_at": T0, "updated_at": T0,
                 "attributes": {"birthday": (date(1960, 1, 1) + timedelta(days=rng.randrange(40 * 365))).isoformat(),
                                "plan": "pro"}}
                for i in range(lo, min(n, lo + CHUNK))])


def timed_tick(rt: Runtime, now: datetime) -> dict:
    started = time.perf_counter()
    enrolled = enroll(rt, rt.plan("birthday"), now)
    return {"now": now.isoformat(), "seconds": round(time.perf_counter() - started, 3), "enrolled": enrolled}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--url", default=None)
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL (pgserver)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nurture-bench-date-"))
    pg = None
    try:
        url = args.url or f"sqlite:///{work / 'nurture.db'}"
        if args.postgres:
            import pgserver
            pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
            url = pg.get_uri().replace("postgresql://", "postgresql+psycopg://")
        root = write_project(work / "project", {"birthday": JOURNEY})
        spec = load_project(root)
        assert not spec.errors, [str(e) for e in spec.errors]
        store = open_store(url)
        generate(store, args.contacts)
        rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(work / ".nurture")})
        ticks = [timed_tick(rt, T0), timed_tick(rt, T0), timed_tick(rt, T0 + timedelta(days=1))]
        with store.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(enrollment_t)).scalar_one()
        print(json.dumps({"contacts": args.contacts, "backend": store.engine.dialect.name,
                          "ticks": ticks, "enrollments": total}, indent=2))
        rt.close()
        store.dispose()
    finally:
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

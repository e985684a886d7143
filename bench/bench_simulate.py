"""Benchmark of `nurture simulate`: a month of the demo's company (nurture.demo_data: 5,000
contacts in many time zones, mixed consent, a purchase history) meeting the six shipped
journeys, simulated by the real tick on a scratch copy (nurture.simulate).

The demo's company is written into a project database at the demo's start (its history
ingested), and its events of the month ahead into a JSONL file; the simulation then copies the
database, checks the file through the real ingest code, and runs the month with the events
fed in as the clock reaches them — exactly what `nurture simulate --events FILE` does.

With `--events-in-db` the month is a past one: its events are stored in the project database
before the copy (as a deployed project holds them) and no events file is given — the simulation
wakes for the database's own events (`nurture simulate --from` a past month).

Prints JSON: seconds per phase (generate is the world's set-up, not the simulation), journey
ticks and clock moments, events ingested, messages by outcome, the resolution used.

    python bench/bench_simulate.py [--contacts 5000] [--days 30] [--resolution 5m] [--heartbeat 1h] [--dir PATH]
                                   [--events-in-db]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nurture.demo import JOURNEYS, START  # noqa: E402
from nurture.demo_data import generate  # noqa: E402
from nurture.durations import parse_duration  # noqa: E402
from nurture.ingest import track_records  # noqa: E402
from nurture.scratch import open_scratch, scratch_runtime  # noqa: E402
from nurture.simulate import EventFeed, simulate  # noqa: E402
from nurture.spec.project import load_project  # noqa: E402
from nurture.store.db import open_store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resolution", default=None, help="e.g. 1m, 5m, 0 (default: the simulator's)")
    parser.add_argument("--heartbeat", default=None, help="e.g. 1h, 6h (default: the simulator's)")
    parser.add_argument("--dir", default=None, help="where the world's database and events go (default: a temp dir)")
    parser.add_argument("--events-in-db", action="store_true",
                        help="store the month's events in the database (a past month) instead of an events file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-simulate-", dir=args.dir))
    try:
        spec = load_project(REPO)
        assert not spec.errors, [str(e) for e in spec.errors]
        from datetime import timedelta
        end = START + timedelta(days=args.days)

        started = time.perf_counter()
        world = open_store(f"sqlite:///{work / 'nurture.db'}")
        company = generate(world, seed=args.seed, start=START, days=args.days, contacts=args.contacts)
        events = work / "events.jsonl"
        month = [record for at, _, record in company.events if at > START]
        in_db = len(month) if args.events_in_db else 0
        if args.events_in_db:
            tracked = track_records(world, list(enumerate(month, 1)), source="bench", now=end)
            assert not tracked.errors, tracked.errors[:3]
            month = []
        world.dispose()
        with open(events, "w", encoding="utf-8") as fh:
            for record in month:
                fh.write(json.dumps(record) + "\n")
        generated = time.perf_counter() - started

        timings: dict[str, float] = {}
        cpu = time.process_time()
        t = time.perf_counter()
        scratch = open_scratch(f"sqlite:///{work / 'nurture.db'}")
        rt = scratch_runtime(scratch, spec, {})
        timings["copy"] = time.perf_counter() - t
        t = time.perf_counter()
        feed = EventFeed.read(events)
        feed.check(rt, START)
        timings["read_and_check_events"] = time.perf_counter() - t
        t = time.perf_counter()
        kwargs = {}
        if args.resolution is not None:
            kwargs["resolution"] = timedelta(0) if args.resolution == "0" else parse_duration(args.resolution)
        if args.heartbeat is not None:
            kwargs["heartbeat"] = parse_duration(args.heartbeat)
        result = simulate(rt, [j for j in JOURNEYS if j in spec.journeys], START, end,
                          feed=feed if not args.events_in_db else None, **kwargs)
        timings["simulate"] = time.perf_counter() - t
        outcomes: Counter = Counter()
        for row in result.funnel:
            if row["step"]:
                outcomes[row["outcome"]] += row["count"]
        rt.close()
        scratch.close()
        total = sum(timings.values())
        cpu = time.process_time() - cpu
        print(json.dumps({
            "contacts": args.contacts, "days": args.days, "events": len(feed.records), "events_in_db": in_db,
            "resolution_seconds": int(result.resolution.total_seconds()),
            "heartbeat_seconds": int(result.heartbeat.total_seconds()),
            "seconds": round(total, 2), "cpu_seconds": round(cpu, 2),
            "phases": {k: round(v, 2) for k, v in timings.items()},
            "world_generate_seconds": round(generated, 2),
            "moments": result.moments, "journey_ticks": result.ticks, "ticks_by_journey": dict(result.ticks_by_journey),
            "ms_per_tick": round(result.tick_seconds / max(1, result.ticks) * 1000, 2),
            "scheduler_seconds": round(timings["simulate"] - result.tick_seconds, 2),
            "events_ingested": result.events_ingested, "timeline_rows": len(result.timeline),
            "enrolled": sum(r["count"] for r in result.funnel if r["outcome"] == "enrolled" and not r["step"]),
            "messages": dict(sorted(outcomes.items())),
        }, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

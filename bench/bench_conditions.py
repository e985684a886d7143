"""Benchmark: a numeric attribute condition over every contact, as a segment or a `when`
trigger evaluates it (one SQL statement).

Prints JSON per database: contacts, matches, and the best of five runs of
`SELECT count(*) FROM contact WHERE <condition>` for `{attribute: {ltv: {gte: 50}}}`, with the
value read as store/json_values.py reads it (a JSON number, or text that reads as one) and, for
comparison, with the bare casts it replaced (SQLAlchemy's `as_float()`: PostgreSQL's cast
fails on a stored "abc", SQLite compares any text as greater than any number). Half of the
contacts hold a number, a tenth the number as text, the rest no `ltv` at all.

    python bench/bench_conditions.py [--contacts 1000000] [--db sqlite,postgres]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from nurture import conditions  # noqa: E402
from nurture.conditions import ConditionScope, compile_condition  # noqa: E402
from nurture.spec.models import Condition  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import contact_t  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
CHUNK = 50_000
CONDITION = Condition.model_validate({"attribute": {"ltv": {"gte": 50}}})


def _attributes(i: int) -> dict:
    if i % 10 < 5:
        return {"ltv": i % 100, "plan": "pro"}
    if i % 10 == 5:
        return {"ltv": str(i % 100), "plan": "pro"}
    return {"plan": "basic"}


def generate(store, n: int) -> None:
    with store.engine.begin() as conn:
        for lo in range(0, n, CHUNK):
            conn.execute(contact_t.insert(), [
                {"email": f"user{i}@example.com", "lifecycle_stage": "lead", "score": 0.0,
                 "attributes": _attributes(i), "created_at": T0, "updated_at": T0}
                for i in range(lo, min(n, lo + CHUNK))])
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE contact")


def best_of(store, expr, runs: int = 5) -> tuple[int, float]:
    best, count = float("inf"), 0
    for _ in range(runs):
        with store.reading() as conn:
            started = time.perf_counter()
            count = conn.execute(select(func.count()).select_from(contact_t).where(expr)).scalar_one()
            best = min(best, time.perf_counter() - started)
    return count, best


def measure(url: str, n: int) -> dict:
    store = open_store(url)
    try:
        generate(store, n)
        count, seconds = best_of(store, compile_condition(CONDITION, ConditionScope(T0, {})))
        typed = conditions._typed
        conditions._typed = lambda column, sample: column.as_float()  # the cast it replaced
        try:
            bare_count, bare_seconds = best_of(store, compile_condition(CONDITION, ConditionScope(T0, {})))
        finally:
            conditions._typed = typed
        return {"database": store.engine.dialect.name, "contacts": n, "matches": count,
                "seconds": round(seconds, 4), "us_per_contact": round(seconds / n * 1e6, 3),
                "bare_cast_matches": bare_count, "bare_cast_seconds": round(bare_seconds, 4)}
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgres")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nurture-bench-conditions-"))
    results = []
    try:
        for db in args.db.split(","):
            if db == "sqlite":
                results.append(measure(f"sqlite:///{work / 'bench.db'}", args.contacts))
            elif db == "postgres":
                import pgserver
                pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
                try:
                    results.append(measure(pg.get_uri().replace("postgresql://", "postgresql+psycopg://"),
                                           args.contacts))
                finally:
                    pg.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"condition": "{attribute: {ltv: {gte: 50}}}", "results": results}, indent=1))


if __name__ == "__main__":
    main()

"""Delivery across processes: rendering and assembling messages is CPU-bound Python, so a large
tick delivers from several processes, each with its own database connection. Claims are
row-level (a batch goes `queued` → `sending` in one write transaction), so the processes share
one queue and never claim the same message.

`pipelined` overlaps the stages: delivery processes start with the tick and deliver each batch
the advance stage queues while it guards the next one; when the guards are done, the tick's own
process delivers too. On N cores that keeps N processes busy throughout (guards + N - 1
deliverers, then N deliverers), and the first messages leave early. On SQLite
the processes queue for the write lock in order (write_turns): without it the advance stage,
committing batch after batch, kept the delivery processes waiting for seconds. Starting the
processes costs ~1 s, so the flows pipeline only large ticks (`LARGE_TICK` due).

Processes come from a fork server that has imported the engine once (`forkserver` with
preloads): a worker then starts without paying the ~1 s of imports on the tick's two cores,
and — unlike a plain fork — never inherits the caller's threads or open database handles
(Prefect runs tasks in threads).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy import func, select

from nurture.runtime.context import Runtime
from nurture.store.write_turns import WriteTurns, taking_turns

# Due enrollments from which a tick pipelines delivery processes: below it one process is as
# fast (starting the fork server and a worker's project load cost ~1 s; measured with
# bench_tick: in-process wins at 4,000 due, they tie at 10,000).
LARGE_TICK = 20_000
IDLE_POLL = 0.05


PRELOAD = ["nurture.runtime.deliver", "nurture.spec.project", "nurture.store.db", "integrations.file_channels",
           "integrations.smtp", "integrations.twilio"]


def default_processes() -> int:
    """Delivery processes for a large tick when none are asked for: one per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def process_context() -> Any:
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:  # pragma: no cover - platforms without fork (Windows)
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _runtime(root: str, url: str, env: dict) -> Runtime:
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    # The caller's store is open, hence migrated: a worker's migration check would be one more
    # write transaction waiting for the lock.
    return Runtime(open_store(url, auto_migrate=False), load_project(Path(root)), env=env)


def _deliver_until_done(job: tuple, done: Any, results: Any, turns: Optional[WriteTurns]) -> None:
    """Deliver the journey's queued messages as they appear, until the advance stage is done
    and nothing is left."""
    root, url, env, now, journey = job
    rt = _runtime(root, url, env)
    report: Counter = Counter()
    try:
        with taking_turns(turns):
            _deliver_loop(rt, now, journey, done, report)
    finally:
        results.put(dict(report))
        rt.close()
        rt.store.dispose()


def _deliver_loop(rt: Runtime, now: datetime, journey: Optional[str], done: Any, report: Counter) -> None:
    from nurture.runtime.deliver import deliver
    while True:
        finished = done.is_set()  # read before delivering: nothing is queued after it is set
        got = deliver(rt, now, journey)
        report.update(got)
        if finished and not got:
            return
        if not got:
            time.sleep(IDLE_POLL)


def due_enrollments(rt: Runtime, now: datetime, journey: str) -> int:
    """How many of a journey's enrollments are due now: is a tick large enough for processes?"""
    from nurture.conditions import enrollment_t
    with rt.store.reading() as conn:
        return conn.execute(select(func.count()).select_from(enrollment_t).where(
            enrollment_t.c.journey == journey, enrollment_t.c.status == "active",
            enrollment_t.c.next_due_at <= now)).scalar() or 0


def pipelined(rt: Runtime, now: datetime, journey: Optional[str], workers: int,
              produce: Callable[[], Counter]) -> tuple[Counter, Counter]:
    """Run `produce` (the advance stage) here while `workers - 1` processes deliver what it
    queues; once it is done this process delivers too, so `workers` processes are busy
    throughout (on N cores: the guards + N - 1 deliverers, then N deliverers). Claims are
    row-level, so the deliverers share one queue. Returns (produce's report, delivery report)."""
    from nurture.runtime.deliver import deliver
    ctx = process_context()
    done, results = ctx.Event(), ctx.Queue()
    turns = None if rt.store.is_postgres else WriteTurns(ctx)  # PostgreSQL locks rows, not the database
    job = (str(rt.project.root), rt.store.engine.url.render_as_string(hide_password=False), rt.env, now, journey)
    procs = [ctx.Process(target=_deliver_until_done, args=(job, done, results, turns), daemon=True)
             for _ in range(max(1, workers - 1))]
    for proc in procs:
        proc.start()
    delivered: Counter = Counter()
    try:
        with taking_turns(turns):
            produced = produce()
            delivered.update(deliver(rt, now, journey))  # the guards are done: deliver alongside
    finally:
        done.set()
    for _ in procs:
        delivered.update(results.get())
    for proc in procs:
        proc.join()
    delivered.update(deliver(rt, now, journey))  # anything a crashed worker left queued
    return produced, delivered

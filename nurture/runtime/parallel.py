"""Delivery across processes: rendering and assembling messages is CPU-bound Python, so a large
backlog is split into id partitions (`id % n`), each delivered by its own process with its own
database connection. Claims are row-level (`status = 'queued'` → `sending` in one statement), so
partitions never overlap. Small backlogs stay in-process: a process costs ~1 s to start."""
from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Optional

from sqlalchemy import func, select

from nurture.runtime.context import Runtime
from nurture.store.models import Message

message_t = Message.__table__
MIN_PER_PROCESS = 4000


def _deliver_partition(args: tuple) -> dict:
    root, url, env, now, journey, partition, partitions = args
    from nurture.runtime.deliver import deliver
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    store = open_store(url)
    rt = Runtime(store, load_project(Path(root)), env=env)
    try:
        return dict(deliver(rt, now, journey, partition, partitions))
    finally:
        rt.close()
        store.dispose()


def backlog(rt: Runtime, now: datetime, journey: Optional[str]) -> int:
    with rt.store.engine.connect() as conn:
        stmt = select(func.count()).select_from(message_t).where(message_t.c.status == "queued",
                                                                 message_t.c.due_at <= now)
        if journey:
            stmt = stmt.where(message_t.c.journey == journey)
        count = conn.execute(stmt).scalar() or 0
        conn.rollback()
    return count


def deliver_parallel(rt: Runtime, now: datetime, journey: Optional[str], workers: int) -> Counter:
    from nurture.runtime.deliver import deliver
    pending = backlog(rt, now, journey) if workers > 1 else 0
    workers = min(workers, pending // MIN_PER_PROCESS)
    if workers <= 1:
        return deliver(rt, now, journey)
    url = rt.store.engine.url.render_as_string(hide_password=False)
    jobs = [(str(rt.project.root), url, rt.env, now, journey, i, workers) for i in range(workers)]
    report: Counter = Counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for part in pool.map(_deliver_partition, jobs):
            report.update(part)
    # Whatever a partition could not claim (e.g. queued meanwhile) goes out in-process.
    report.update(deliver(rt, now, journey))
    return report

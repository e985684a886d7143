"""One sync at a time per audience: the lock a sync (and an erasure's removal) holds on a target
key (`meta:123`) while it diffs, pushes and acknowledges.

Two runs of one target at once — the nightly deployment and a manual `nurture sync`, a Prefect
retry, two segments feeding one audience — would each diff against an acknowledged state the
other is changing: a removal planned by one could forget the row the other just wrote, and a
hash shared by two rows could be removed while the other still needs it. So a run takes the
target's lock first and the second one waits for it.

The lock is one that ends with its holder, however it ends (no lease to expire, no row left
behind by a killed worker):
- PostgreSQL: a session-level advisory lock on a connection held for the run;
- SQLite (one file, one machine): an exclusive `flock` on a lock file beside the database
  (`<database>.sync-locks/<hash>`), which the kernel releases when the process dies;
- in-memory SQLite (one process): a lock of the process.
A run that waits longer than its `wait` gets `TargetBusy` and does nothing.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import text

from nurture.store.db import Store, sqlite_path

POLL_SECONDS = 0.2


class TargetBusy(RuntimeError):
    """Another run held the target's lock for longer than this one would wait."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(f"nurture-sync:{key}".encode()).digest()


_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


@contextmanager
def target_lock(store: Store, key: str, *, wait: float) -> Iterator[None]:
    """Hold the lock of target `key` inside the block; TargetBusy after `wait` seconds."""
    deadline = time.monotonic() + wait
    if store.is_postgres:
        lock_id = int.from_bytes(_digest(key)[:8], "big", signed=True)
        with store.engine.connect() as conn:
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar_one():
                conn.commit()
                _wait_or_give_up(key, deadline)
            conn.commit()  # no transaction stays open while the run goes on (the lock is the session's)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                conn.commit()
        return
    path = sqlite_path(store.engine.url.render_as_string(hide_password=False))
    try:
        import fcntl
    except ImportError:  # no flock on this system: one process at a time is all we can promise
        path = None
    if path is None:
        with _local_guard:
            lock = _local_locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=max(0.0, wait)):
            raise TargetBusy(_busy(key))
        try:
            yield
        finally:
            lock.release()
        return
    folder = Path(f"{path}.sync-locks")
    folder.mkdir(exist_ok=True)
    fd = os.open(folder / _digest(key).hex()[:24], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _wait_or_give_up(key, deadline)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _wait_or_give_up(key: str, deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise TargetBusy(_busy(key))
    time.sleep(POLL_SECONDS)


def _busy(key: str) -> str:
    return f"another sync of {key} is still running; this run left the target to it"

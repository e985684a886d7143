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

The block receives the `Hold`; a run calls `hold.confirm()` before each request it sends. A file
or process lock cannot be lost while its holder lives, but a PostgreSQL session can end under a
live run (`pg_terminate_backend`, a server or proxy restart, `idle_session_timeout` on the idle
lock connection) and its advisory lock with it. `confirm()` notices: it takes the lock again at
once on a new connection when it is free, and otherwise answers False with the reason in
`hold.lost` — another run holds the target now, so this run stops (it does not wait: its plan
is stale once the other run has changed the target) and leaves the target to it. Releasing a
lock whose session is gone is nothing to do.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from nurture.store.db import Store, sqlite_path

POLL_SECONDS = 0.2


class TargetBusy(RuntimeError):
    """Another run held the target's lock for longer than this one would wait."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(f"nurture-sync:{key}".encode()).digest()


class Hold:
    """A target's lock, held: `confirm()` before each request (True: still held). A file or
    process lock ends only with its holder, so it is always still held."""

    lost: Optional[str] = None  # why the lock is no longer this run's

    def confirm(self) -> bool:
        return True


class _AdvisoryHold(Hold):
    """A PostgreSQL session advisory lock, held by one connection for the run."""

    def __init__(self, store: Store, key: str, conn: Connection) -> None:
        self.store, self.key, self.conn = store, key, conn
        self.lock_id = int.from_bytes(_digest(key)[:8], "big", signed=True)
        unsigned = self.lock_id & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows a bigint key in two oid halves
        self._halves = {"hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF}

    def confirm(self) -> bool:
        if self.lost is not None:
            return False
        try:
            held = self.conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND granted AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"),
                self._halves).scalar_one()
            self.conn.commit()
            if held:
                return True
        except DBAPIError:  # the lock's session is gone, and the lock with it
            pass
        _discard(self.conn)
        try:
            conn = self.store.engine.connect()
            try:
                got = _try_lock(conn, self.lock_id)
            except BaseException:
                _discard(conn)
                raise
        except DBAPIError as exc:
            self.lost = (f"the lock of {self.key} was lost with its database session and could not be taken "
                         f"again ({type(exc.orig).__name__}); this run stopped")
            return False
        if got:
            self.conn = conn
            return True
        conn.close()
        self.lost = (f"the lock of {self.key} was lost with its database session and another run holds it now; "
                     "this run stopped and left the target to it")
        return False

    def release(self) -> None:
        if self.lost is not None:  # its connection is already discarded
            return
        try:
            self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.lock_id})
            self.conn.commit()
        except DBAPIError:  # the session is gone: its lock went with it
            _discard(self.conn)
            return
        self.conn.close()


def _try_lock(conn: Connection, lock_id: int) -> bool:
    got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar_one()
    conn.commit()  # no transaction stays open while the run goes on (the lock is the session's)
    return bool(got)


def _discard(conn: Connection) -> None:
    """Close `conn` for good, not back into the pool: a session that might still hold the lock
    must end, and a dead one is of no further use."""
    try:
        conn.invalidate()
        conn.close()
    except DBAPIError:
        pass


_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


@contextmanager
def target_lock(store: Store, key: str, *, wait: float) -> Iterator[Hold]:
    """Hold the lock of target `key` inside the block; TargetBusy after `wait` seconds."""
    deadline = time.monotonic() + wait
    if store.is_postgres:
        hold = _AdvisoryHold(store, key, store.engine.connect())
        try:
            while not _try_lock(hold.conn, hold.lock_id):
                _wait_or_give_up(key, deadline)
        except BaseException:
            _discard(hold.conn)
            raise
        try:
            yield hold
        finally:
            hold.release()
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
            yield Hold()
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
            yield Hold()
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

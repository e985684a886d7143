"""First come, first served turns at SQLite's write lock for cooperating processes.

SQLite has one write lock per database. A writer that finds it taken sleeps in SQLite's busy
handler and polls (1 ms, growing to 100 ms steps), so a process that commits batch after batch
takes the lock again microseconds after releasing it, long before a sleeping one wakes. In a
pipelined tick that starved the delivery processes for seconds while the advance stage guarded
batch after batch: two cores, one of them idle.

`WriteTurns` is a ticket queue shared by the processes of one pipelined tick (made with their
multiprocessing context): a write transaction draws a ticket before `BEGIN IMMEDIATE` and
passes the turn on at its commit or rollback, so the lock goes to whoever asked first.
`taking_turns(turns)` makes every SQLite write transaction of the calling thread take turns.

The turns order the cooperating processes only; correctness still rests on SQLite's lock
(an outside writer is simply not queued). A wait longer than `TIMEOUT` (a participant died
holding its turn: a tick's transactions last well under a second) breaks the queue for
everyone, who then go back to SQLite's busy handler.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

TIMEOUT = 15.0
log = logging.getLogger(__name__)


class WriteTurns:
    def __init__(self, ctx: Any):
        self._cond = ctx.Condition()
        self._next = ctx.Value("q", 0, lock=False)  # guarded by _cond
        self._serving = ctx.Value("q", 0, lock=False)
        self._broken = ctx.Value("b", 0, lock=False)

    def acquire(self) -> bool:
        """Wait for this caller's turn; False if the queue broke (go on without one)."""
        with self._cond:
            if self._broken.value:
                return False
            ticket = self._next.value
            self._next.value = ticket + 1
            if self._cond.wait_for(lambda: self._broken.value or self._serving.value == ticket, TIMEOUT):
                return not self._broken.value
            self._broken.value = 1
            self._cond.notify_all()
            log.warning("waited %.0f s for a turn at the SQLite write lock: a participant died or stalled "
                        "holding it; going on without turns", TIMEOUT)
            return False

    def release(self) -> None:
        with self._cond:
            self._serving.value += 1
            self._cond.notify_all()


_active = threading.local()  # .turns: the WriteTurns this thread's write transactions queue in


def current_turns() -> Optional[WriteTurns]:
    """The turns this thread's write transactions take (for a helper thread to take them too)."""
    return getattr(_active, "turns", None)


@contextmanager
def taking_turns(turns: Optional[WriteTurns]) -> Iterator[None]:
    """SQLite write transactions of this thread take turns in `turns` while inside (no turns:
    SQLite's busy handler alone, as everywhere else)."""
    previous = getattr(_active, "turns", None)
    _active.turns = turns
    try:
        yield
    finally:
        _active.turns = previous


class TurnTakingConnection(sqlite3.Connection):
    """The DBAPI connection of a SQLite engine: holds a turn from its `BEGIN IMMEDIATE`
    (`begin_write`) to the end of that transaction, however it ends."""

    _turn: Optional[WriteTurns] = None

    def begin_write(self) -> None:
        turns = getattr(_active, "turns", None)
        if turns is not None and self._turn is None and turns.acquire():
            self._turn = turns
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._pass_turn()
            raise

    def _pass_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.release()

    def _ending(self, end: Callable[[], None]) -> None:
        try:
            end()
        finally:
            self._pass_turn()

    def commit(self) -> None:
        self._ending(super().commit)

    def rollback(self) -> None:
        self._ending(super().rollback)

    def close(self) -> None:
        self._ending(super().close)

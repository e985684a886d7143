"""Delivery leases: while a delivery run is alive, nobody else decides the fate of the messages
it marked `sending`.

A message is committed `sending` with its run's claim token before any channel is called
(nurture.send.deliver, nurture.send.handoff), and a crash leaves it so; nurture.send.reconcile
asks the channel about such a message once it has been `sending` for STUCK_AFTER, and re-queues
it when the channel has never seen it. A run that is merely slow looks the same: a large tick
on a slow relay, an SMS batch at a provider's rate limit, a worker paused for a while. Its
messages waiting their turn are not in the channel yet, so another tick's reconcile re-queued
them, a delivery sent them — and then the slow run sent them too.

So a run that marks messages `sending` holds a lease on its token, a `delivery_lease` row
written in the same transaction as the first message it claims (no transaction of its own):
the process that holds it (host, boot id, pid and the process's start time) and a heartbeat,
`beat_at`, renewed by one thread per process every BEAT_EVERY for all of the process's
leases. The run releases it when it ends, however it ends (its messages are then recorded, or
left for reconcile as after a crash). Reconcile leaves a token's messages alone while its lease
is held:
- on the same machine (same host name, boot id and pid namespace), while the process is alive
  and beat within LEASE_TTL — a killed process is seen at once, however recent its heartbeat;
- elsewhere, while it beat within LEASE_TTL (by the wall clock: liveness is about processes,
  not about the engine's `now`; keep the machines' clocks in sync, as NTP does).
Reconcile reads whose the stuck messages are before it locks any, and locks only those of runs
found dead: a live run's record never waits for another tick asking its channels. A message
with no lease (claimed before this existed, or the lease released while a delivery process
died holding it) is reconciled as before. Reconcile removes the leases it finds dead, and
every heartbeat any lease that has not beaten for a day (a run killed after its last record).

A run that cannot renew its lease for LEASE_TTL / 2 (the database unreachable from it, not
from the others) stops handing messages to its channel (`LeaseLost`): past LEASE_TTL another
tick may reconcile them. A pipelined tick's lease is its tick process's, and its delivery
processes end with that process; they learn when it last renewed the lease through the tick's
hand-off (`Renewed`) and stop as it does. A tick that fails waits for its delivery processes
before it releases the lease. And a run records a result only on a message still claimed with
its token (nurture.send.deliver's `_MINE`): a chunk already at the channel when the lease
lapsed does not overwrite what reconcile or another run recorded meanwhile.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import weakref
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Optional

from sqlalchemy import bindparam, delete, select, update

from nurture.runtime.sql import chunks, ignoring_conflicts, prebuilt
from nurture.store.tables import lease_t

log = logging.getLogger(__name__)

LEASE_TTL = timedelta(minutes=5)
BEAT_EVERY = 30.0  # seconds


class LeaseLost(RuntimeError):
    """This run could not renew its lease for too long: it must not hand over more messages."""


def boot_id() -> str:
    """This machine's boot id (Linux), or `noboot` where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return re.sub(r"[^0-9A-Za-z]", "", fh.read())[:16] or "noboot"
    except OSError:
        return "noboot"


def process_started(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks after boot (Linux), or None: with the pid, it
    names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:  # the fields after the command's closing parenthesis; starttime is the 22nd field
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def process_alive(pid: int, started: Optional[int]) -> bool:
    """Is process `pid` (started at `started`, when known) still running on this machine?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        pass
    except OSError:
        return True  # cannot tell: do not call it dead
    if started is not None:
        now_started = process_started(pid)
        if now_started is not None and now_started != started:
            return False  # the pid was reused
    return True


class _Clock:
    """When a lease was last renewed (time.monotonic()), where only its own process reads it."""

    def __init__(self, value: float):
        self.value = value


class Renewed:
    """A lease as a run that may hand messages over sees it: when it was last renewed (`renewal`:
    a Lease's own, or — in a pipelined tick's delivery processes — the multiprocessing Value
    the tick process's Lease writes, the monotonic clock being the machine's). The run stops
    handing messages over when it could not be renewed for LEASE_TTL / 2."""

    taken = True

    def __init__(self, renewal: Any):
        self.renewal = renewal

    def check(self) -> None:
        waited = time.monotonic() - self.renewal.value
        if waited > LEASE_TTL.total_seconds() / 2:
            raise LeaseLost(f"the delivery lease could not be renewed for {waited:.0f} s; "
                            "its messages are left `sending` for reconcile")


def wall_now() -> datetime:
    return datetime.now(timezone.utc)


def pid_namespace() -> str:
    """Which pid namespace this process sees (Linux; containers on one machine share its boot
    id, not their pids), or "" where there is none to tell."""
    try:
        return re.sub(r"[^0-9]", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        return ""


class _Me:
    """This process as a lease names it (computed once per process; a forked child recomputes)."""
    pid: Optional[int] = None

    @classmethod
    def values(cls) -> dict:
        if cls.pid != os.getpid():
            cls.pid = os.getpid()
            boot = boot_id()
            cls.cached = {"host": socket.gethostname()[:255],
                          # (where the pids of this process's kind can be checked: this boot, this namespace)
                          "boot": f"{boot}:{pid_namespace()}" if boot != "noboot" else boot,
                          "pid": cls.pid, "started": process_started(cls.pid)}
        return cls.cached


class Lease:
    """The lease of one delivery run on its claim `token`, in `store`."""

    def __init__(self, store: Any, token: str, shared: Any = None):
        self.store, self.token = store, token
        self.taken = False
        self.deleted = False  # by the run's last transaction (`release(conn)`), if it commits
        # The last time the database confirmed it (taken or beaten); `shared`: a pipelined
        # tick's multiprocessing Value, which its delivery processes read too (`Renewed`).
        self.renewal = shared if shared is not None else _Clock(time.monotonic())
        self.renewal.value = time.monotonic()

    def take(self, conn: Any) -> None:
        """Write the lease in the caller's transaction (the first that claims messages with the
        token): it exists as soon as they do. Once per run: a claiming transaction that fails
        ends its run (no stage retries a batch within a run), and were one to go on, its later
        messages would only be reconciled as before leases (after STUCK_AFTER)."""
        if self.taken:
            return
        now = wall_now()
        conn.execute(_insert_ignore(conn), {"token": self.token, **_Me.values(), "taken_at": now, "beat_at": now}).all()
        self.taken = True
        self.renewal.value = time.monotonic()
        _beater.add(self)

    def check(self) -> None:
        """Raise LeaseLost when the lease could not be renewed for LEASE_TTL / 2."""
        if self.taken:
            Renewed(self.renewal).check()

    def release(self, conn: Any = None) -> None:
        """The run is over: remove the lease — in `conn`, the run's last transaction (no
        transaction of its own; if that one fails, leaving the `with` removes it), or else in
        a transaction of its own, best effort (if the database cannot be reached, the lease
        ends with its heartbeat)."""
        if not self.taken:
            return
        if conn is not None:
            conn.execute(_DELETE, {"token": self.token})
            self.deleted = True
            return
        _beater.discard(self)
        self.taken = False
        if self.deleted:
            return
        try:
            with self.store.engine.begin() as conn:
                conn.execute(_DELETE, {"token": self.token})
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            log.warning("could not release delivery lease %s (it expires in %s): %s", self.token, LEASE_TTL, exc)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is not None:  # the last transaction may not have committed
            self.deleted = False
        self.release()


_DELETE = delete(lease_t).where(lease_t.c.token == bindparam("token"))
_BEAT = (update(lease_t).where(lease_t.c.token == bindparam("b_token"))
         .values(beat_at=bindparam("b_at")))
_FORGET = delete(lease_t).where(lease_t.c.beat_at < bindparam("f_before"))
_READ = select(lease_t.c.token, lease_t.c.host, lease_t.c.boot, lease_t.c.pid, lease_t.c.started, lease_t.c.beat_at)


def _insert_ignore(conn: Any) -> Any:
    # (RETURNING: the form SQLite's lean path runs, nurture.store.lean — ~0.5 ms less a run)
    return prebuilt(("lease.take", conn.dialect.name),
                    lambda: ignoring_conflicts(conn, lease_t, ("token",)).returning(lease_t.c.token))


class _Beater:
    """One thread per process renews every lease of the process each BEAT_EVERY (one UPDATE per
    store); started by the first lease taken."""

    def __init__(self) -> None:
        self.leases: "weakref.WeakSet[Lease]" = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None
        self.pid: Optional[int] = None

    def add(self, lease: Lease) -> None:
        with self.lock:
            self.leases.add(lease)
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="nurture-lease", daemon=True)
                self.thread.start()

    def discard(self, lease: Lease) -> None:
        with self.lock:
            self.leases.discard(lease)

    def _run(self) -> None:
        while True:
            time.sleep(BEAT_EVERY)
            self.beat()

    def beat(self) -> None:
        with self.lock:
            by_store: dict[int, list[Lease]] = defaultdict(list)
            for lease in list(self.leases):
                if lease.taken:
                    by_store[id(lease.store)].append(lease)
        for leases in by_store.values():
            now = wall_now()
            try:
                with leases[0].store.engine.begin() as conn:
                    conn.execute(_BEAT, [{"b_token": lease.token, "b_at": now} for lease in leases])
                    conn.execute(_FORGET, {"f_before": now - FORGOTTEN_AFTER})
            except Exception as exc:  # noqa: BLE001 - tried again; the runs stop when it lasts (check)
                log.warning("could not renew %d delivery lease(s): %s", len(leases), exc)
                continue
            renewed = time.monotonic()
            for lease in leases:
                lease.renewal.value = renewed


_beater = _Beater()


def held_tokens(conn: Any, tokens: Iterable[Optional[str]], now: Optional[datetime] = None) -> set[str]:
    """Of `tokens`, those whose lease is held by a live run (see the module's docstring)."""
    wanted = sorted({t for t in tokens if t})
    if not wanted:
        return set()
    now = now or wall_now()
    me = _Me.values()
    held = set()
    for part in chunks(wanted):
        for token, host, boot, pid, started, beat_at in conn.execute(_READ.where(lease_t.c.token.in_(part))):
            if beat_at < now - LEASE_TTL:
                continue
            local = host == me["host"] and boot == me["boot"] and boot != "noboot" and not boot.endswith(":")
            if local and not process_alive(pid, started):
                continue
            held.add(token)
    return held


FORGOTTEN_AFTER = timedelta(days=1)


def forget_dead(conn: Any, tokens: Iterable[str], now: Optional[datetime] = None) -> None:
    """Remove the leases of runs found dead (a crash left them), and any lease that has not
    beaten for FORGOTTEN_AFTER (a run killed after its last message was recorded)."""
    dead = sorted(set(tokens))
    for part in chunks(dead):
        conn.execute(delete(lease_t).where(lease_t.c.token.in_(part)))
    conn.execute(_FORGET, {"f_before": (now or wall_now()) - FORGOTTEN_AFTER})

"""Delivery across processes: rendering and assembling messages is CPU-bound Python, so a large
tick delivers from several processes, each with its own database connection.

`pipelined` overlaps the stages: delivery processes start with the tick (from a thread, so the
guards do not wait the ~1 s it takes) and deliver each batch the advance stage queues while it
guards the next one; when the guards are done, the tick's own process delivers too. On N cores
that keeps N processes busy throughout (guards + N - 1 deliverers, then N deliverers), and the
first messages leave early. The advance stage hands its messages over already claimed, in
chunks the processes take from one queue (nurture.send.handoff: no claim to read and write per
batch; at most a few chunks a process wait, beyond that the tick process delivers one itself);
what else is queued — a retry now due, a message put back — they then claim as usual,
row-level (a batch goes `queued` → `sending` in one write transaction), so no two processes
claim the same message. On SQLite the processes queue for the write lock in order
(write_turns): without it the advance stage, committing batch after batch, kept the delivery
processes waiting for seconds. Starting the processes costs ~1 s, so the flows pipeline only
large ticks (`LARGE_TICK` due). Every other tick (delivery not split into partitions) uses the
same hand-off in process (`handed_in_process`): each batch is sent as soon as its send
transaction commits.

Processes come from a fork server that has imported the engine once (`forkserver` with
preloads): a worker then starts without paying the ~1 s of imports on the tick's two cores,
and — unlike a plain fork — never inherits the caller's threads or open database handles
(Prefect runs tasks in threads).

Helper processes never outlive the tick process (a `kill -9` of `nurture run` must not leave a
delivery process sending, or waiting for chunks that will never come):
- a delivery process watches the tick process from a thread blocked on the pipe the tick
  process holds open for it (`multiprocessing.parent_process()`): when it closes — the tick
  process is gone, however it ended — the delivery process exits at once (`_exit_with`). Nothing
  is polled (no cost per message or per batch), and it works wherever multiprocessing does;
- on Linux it also asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`),
  should its Python be stuck. That parent is the fork server, single-threaded (the signal
  follows the parent *thread*), which exits when the last holder of its "alive" pipe is gone.
  Each process it forks inherits a copy, so a delivery process closes its copy at once (it
  starts no processes): the tick process is then the only holder and the fork server follows
  it, a moment later (its interpreter shuts down first, hence the watching thread above). The
  fork server gets no parent-death signal of its own: it is shared by every tick of the process
  and started by whichever thread first needed it, so the signal would come when that thread
  ends, not the process — its "alive" pipe is the process-wide equivalent;
- the multiprocessing resource tracker (started by the tick process, to unlink the shared
  semaphores of processes that died without doing so) exits when every holder of its pipe is
  gone — the tick process and the delivery processes — after cleaning up after them.

The other way round, the tick process does not wait forever for the report of a delivery process
that died without one (`_reports`).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy import bindparam, func, literal, select

from nurture.runtime.context import Runtime
from nurture.runtime.sql import prebuilt
from nurture.send.handoff import Handoff, LocalHandoff
from nurture.store.write_turns import WriteTurns, taking_turns

# Due enrollments from which a tick pipelines delivery processes: below it one process is as
# fast (starting the fork server and a worker's project load cost ~1 s; measured with
# bench_tick: in-process wins at 4,000 due, they tie at 10,000).
LARGE_TICK = 20_000
RESULT_POLL = 1.0  # how often the tick checks, while waiting for reports, that its workers are alive
log = logging.getLogger(__name__)


PRELOAD = ["nurture.send.deliver", "nurture.spec.project", "nurture.store.db", "integrations.file_channels",
           "integrations.smtp", "integrations.twilio"]
# On PostgreSQL the driver too: SQLAlchemy imports it when a process makes its first engine,
# ~0.2 s of CPU that every delivery process of every large tick paid again (a module the
# fork server cannot import is skipped: SQLite users need not install it).
PRELOAD_POSTGRES = [*PRELOAD, "psycopg", "sqlalchemy.dialects.postgresql.psycopg"]


def default_processes() -> int:
    """Delivery processes for a large tick when none are asked for: one per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def process_context(postgres: bool = False) -> Any:
    """Where delivery processes come from: the fork server (see the module's docstring), its
    preloads for the store's database (set before the server starts; it then serves every tick
    of the process)."""
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:  # pragma: no cover - platforms without fork (Windows)
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(PRELOAD_POSTGRES if postgres else PRELOAD)
    return ctx


def _die_with_tick() -> None:
    """First thing in a delivery process: make sure it does not outlive the tick process (see
    the module's docstring)."""
    from multiprocessing import forkserver
    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:  # forked by the fork server, with a copy of the server's "alive" pipe
        if sys.platform.startswith("linux"):  # SIGKILL when the fork server exits
            try:
                import ctypes
                PR_SET_PDEATHSIG = 1
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread below stops it
                pass
        server._forkserver_alive_fd = None
        try:
            os.close(alive_fd)
        except OSError:  # pragma: no cover
            pass
    tick = multiprocessing.parent_process()
    if tick is not None:
        threading.Thread(target=_exit_with, args=(tick,), name="nurture-exit-with-tick", daemon=True).start()


def _exit_with(tick: Any) -> None:
    """Block until the tick process is gone, then end this process at once (its claimed batch
    stays `sending` for `reconcile_stuck`, as after any crash)."""
    tick.join()  # the pipe the tick process holds open for this process closes when it dies
    try:
        os.write(2, b"nurture delivery process: the tick process is gone; stopping\n")
    except OSError:  # pragma: no cover - no stderr any more
        pass
    os._exit(1)


def _runtime(root: str, url: str, env: dict) -> Runtime:
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    # The caller's store is open, hence migrated: a worker's migration check would be one more
    # write transaction waiting for the lock.
    return Runtime(open_store(url, auto_migrate=False), load_project(Path(root)), env=env)


def _deliver_until_done(job: tuple, handoff: Handoff, results: Any, turns: Optional[WriteTurns]) -> None:
    """Deliver what the advance stage hands over as it goes, then — once it is done — whatever
    else of the journey is queued."""
    _die_with_tick()
    root, url, env, now, journey = job
    rt = _runtime(root, url, env)
    report: Counter = Counter()
    try:
        with taking_turns(turns):
            _deliver_loop(rt, now, journey, handoff, report)
    finally:
        results.put(dict(report))
        rt.close()
        rt.store.dispose()


def _deliver_loop(rt: Runtime, now: datetime, journey: Optional[str], handoff: Handoff, report: Counter) -> None:
    from nurture.send.deliver import channels_down, deliver, deliver_handed
    report.update(deliver_handed(rt, now, handoff.batches(), shared=handoff))
    # The advance stage is done and every chunk it handed over taken: anything else queued
    # (a retry now due, a message put back) is claimed as usual — not on a channel any process
    # of the tick found unusable (one try per channel and tick).
    report.update(deliver(rt, now, journey, skip_channels=channels_down(report) | set(handoff.down())))


def _reports(procs: list, results: Any) -> Counter:
    """The delivery processes' reports; one that died without reporting (killed: its claimed
    batch stays `sending` for `reconcile_stuck`) is not waited for."""
    delivered: Counter = Counter()
    waiting = len(procs)
    while waiting:
        try:
            delivered.update(results.get(timeout=RESULT_POLL))
            waiting -= 1
        except queue.Empty:
            if any(proc.is_alive() for proc in procs):
                continue
            try:  # all gone: what they reported is in the pipe already (flushed before exiting)
                while waiting:
                    delivered.update(results.get(timeout=0.1))
                    waiting -= 1
            except queue.Empty:
                log.warning("%d delivery process(es) exited without a report (exit codes %s)", waiting,
                            [proc.exitcode for proc in procs])
                break
    return delivered


class _Starter(threading.Thread):
    """Starts the delivery processes in the background, so that the caller's guards run
    meanwhile; `started` are the ones that did start (a failure is logged: the caller then
    delivers alone, as it does anyway once its guards are done)."""

    def __init__(self, procs: list):
        super().__init__(name="nurture-start-delivery", daemon=True)
        self.procs, self.started = procs, []
        self.start()

    def run(self) -> None:
        for proc in self.procs:
            try:
                proc.start()
            except Exception:  # noqa: BLE001 - no process: the tick delivers in its own
                log.exception("could not start a delivery process; the tick delivers without it")
                return
            self.started.append(proc)


def due_enrollments(rt: Runtime, now: datetime, journey: str, cap: int = LARGE_TICK) -> int:
    """How many of a journey's active enrollments are due now, counted up to `cap`: is a tick
    large enough for delivery processes? Read step by step of the journey's plan (a range
    of ix_enrollment_due each), so a tick with little due costs a few index seeks — not a
    read of every active enrollment of the journey, ~0.3 ms at 5,000, which every one of a
    month's 14,000 simulated ticks paid — and a large one stops counting at `cap`."""
    from nurture.store.tables import enrollment_t
    plan = rt.plan(journey)
    steps = tuple(plan.order)
    if not steps:
        return 0

    def build() -> Any:
        due = (select(literal(1)).where(
            enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active",
            # (one parameter per step, fixed in the statement: no list expanded per execution)
            enrollment_t.c.step_id.in_([bindparam(f"step_{i}", step) for i, step in enumerate(steps)]),
            enrollment_t.c.next_due_at <= bindparam("now"))
            .limit(bindparam("cap")).subquery())
        return select(func.count()).select_from(due)
    stmt = prebuilt(("due_enrollments", steps, rt.store.dialect), build)
    with rt.store.reading() as conn:
        return conn.execute(stmt, {"journey": journey, "now": now, "cap": cap}).scalar() or 0


def handed_in_process(rt: Runtime, now: datetime, produce: Callable[[], Counter],
                      delivered: Optional[Counter] = None) -> tuple[Counter, Counter]:
    """Run `produce` (the advance stage) with a hand-off in this process (`LocalHandoff`): a
    tick that does not pipeline processes (and whose delivery is not split into partitions)
    delivers each batch as soon as its send transaction has committed, from the rows its
    checks read, instead of leaving it queued for the deliver stage to claim and load again:
    a row version and a read less per message (on PostgreSQL a new row version writes an entry
    in each of the message table's five indexes). On PostgreSQL the batches are sent by a
    thread of this process (`_Sender`) while the advance stage guards the next one. Returns
    (produce's report, delivery report: `delivered`, given); what else is queued (retries,
    messages put back) is left to the deliver stage, as always. The delivery's outcomes are
    counted in `delivered` also when `produce` fails part-way: the batches it committed before
    were sent (a retried stage reports them, flows/journey.py)."""
    from nurture.send.deliver import HandedDelivery
    from nurture.send.lease import Lease
    delivered = Counter() if delivered is None else delivered
    lease = Lease(rt.store, uuid.uuid4().hex)  # held from the first send transaction (nurture.send.lease)
    delivery = HandedDelivery(rt, now, lease, last=True)
    try:
        with lease, delivery:
            sender = _Sender(delivery.take) if rt.store.is_postgres else None
            rt.handoff = LocalHandoff(sender.put if sender else delivery.take, lease)
            try:
                produced = produce()
            except BaseException:
                rt.handoff = None
                if sender:
                    sender.close(failing=True)
                raise
            rt.handoff = None
            if sender:
                sender.close()
    finally:  # (its recorder is done: what it recorded, failing or not)
        delivered.update(delivery.outcomes())
    return produced, delivered


class _Sender:
    """Sends the chunks of a one-process tick from a thread while the advance stage guards the
    next batch — on PostgreSQL, where each statement of the advance stage waits for the server:
    the thread renders meanwhile (Python's lock is free while a connection waits), so the
    server's work and the round trips overlap the rendering instead of adding to it (100,000
    due, one process: 7,440–7,868 → 8,621–10,181 messages/s on 2 cores, bench_tick). Not on
    SQLite: its engine works in this process and its one write lock is shared by the send
    transaction and the record (measured 8,309–8,383 → 7,466–7,577/s with the thread).

    At most one chunk waits for the thread (`put` blocks meanwhile: memory stays bounded) —
    not one chunk at a time, as HandedDelivery's record: a batch is published in several
    chunks, and waiting for each before handing the next kept the advance stage from its next
    batch (measured 7,256–8,806/s, the thread idle most of the time). A
    chunk the thread failed on stops it: the next `put` raises that error (the tick stops),
    chunks still waiting are not sent (their messages stay `sending`, for reconcile, as after a
    crash). `close` sends what waits, ends the thread and raises its error — unless the tick is
    failing already (`failing`): that error stands and the thread's is logged."""

    def __init__(self, take: Callable[[Any], None]):
        self.take = take
        self.chunks: queue.Queue = queue.Queue(maxsize=1)
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is None:
                try:
                    self.take(chunk)
                except BaseException as exc:  # noqa: BLE001 - handed to the tick's thread
                    self.error = exc

    def put(self, chunk: Any) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:  # (started by the first chunk: a tick that sends nothing starts none)
            self.thread = threading.Thread(target=self._run, name="nurture-send", daemon=True)
            self.thread.start()
        self.chunks.put(chunk)

    def close(self, failing: bool = False) -> None:
        if self.thread is not None:
            self.chunks.put(None)
            self.thread.join()
            self.thread = None
        if self.error is not None:
            if not failing:
                raise self.error
            log.error("sending a chunk failed too: %s", self.error)


def pipelined(rt: Runtime, now: datetime, journey: Optional[str], workers: int,
              produce: Callable[[], Counter], delivered: Optional[Counter] = None) -> tuple[Counter, Counter]:
    """Run `produce` (the advance stage) here while `workers - 1` processes deliver what it
    queues; once it is done this process delivers too, so `workers` processes are busy
    throughout (on N cores: the guards + N - 1 deliverers, then N deliverers). The advance
    stage hands its messages over claimed, in chunks the processes share
    (nurture.send.handoff), never more than AHEAD chunks per process ahead of them: beyond,
    this process delivers the chunk itself; what else is queued they then claim as usual
    (row-level claims). Returns (produce's report, delivery report: `delivered`, given — in
    which, when the tick fails part-way, the deliveries done until then are counted too)."""
    from nurture.send.deliver import HandedDelivery, channels_down, deliver
    from nurture.send.lease import Lease
    ctx = process_context(rt.store.is_postgres)
    takers = max(1, workers - 1)
    handoff, results = Handoff(ctx, takers), ctx.Queue()
    turns = None if rt.store.is_postgres else WriteTurns(ctx)  # PostgreSQL locks rows, not the database
    job = (str(rt.project.root), rt.store.engine.url.render_as_string(hide_password=False), rt.env, now, journey)
    procs = [ctx.Process(target=_deliver_until_done, args=(job, handoff, results, turns), daemon=True)
             for _ in range(takers)]
    # Starting them (the fork server's imports, the first time) takes ~1 s: the guards do not
    # wait for it.
    starter = _Starter(procs)

    def others_alive() -> bool:
        return starter.is_alive() or any(proc.is_alive() for proc in starter.started)
    delivered = Counter() if delivered is None else delivered

    def down() -> frozenset[str]:  # what this process or another of the tick found unusable
        return channels_down(delivered) | set(handoff.down())
    # Held by this process for the whole tick: it beats for the delivery processes too, which
    # end with it (see the module's docstring). A tick failing here still waits for them before
    # it releases the lease: released at once, the messages they had been handed were unleased
    # while they sent them, and another tick's reconcile could take them over.
    failing: Optional[BaseException] = None
    with Lease(rt.store, handoff.token, shared=handoff.renewed) as lease:
        try:
            with taking_turns(turns):
                # This process delivers too: a chunk the others are too far behind to take while
                # the guards run (nurture.send.handoff, AHEAD), then alongside them once they are done.
                own = HandedDelivery(rt, now, lease, shared=handoff)
                try:
                    with own:
                        rt.handoff = handoff.publishing_here(own.take, lease)
                        try:
                            produced = produce()
                        finally:
                            rt.handoff = None
                            handoff.close()
                        for batch in handoff.batches(alive=others_alive):
                            own.take(batch)
                finally:  # (failing too: what this process sent)
                    delivered.update(own.outcomes())
                deliver(rt, now, journey, skip_channels=down(), report=delivered)
        except BaseException as exc:
            failing = exc
            raise
        finally:
            handoff.close()
            starter.join()
            if failing is None or isinstance(failing, Exception):  # (interrupted: they die with this process)
                # (failing: the tick's error stands; what they sent is still counted)
                delivered.update(_reports(starter.started, results))
                for proc in starter.started:
                    proc.join()
    # anything a crashed worker left queued (not on a channel a process found unusable)
    deliver(rt, now, journey, skip_channels=down(), report=delivered)
    return produced, delivered

"""The hand-off of a pipelined tick: the advance stage gives its delivery processes the
messages it has just queued, already claimed and loaded, instead of leaving them for a claim.

Without it every message of a large tick is written four times — inserted `queued` by the
advance stage's send transaction, claimed (`queued` → `sending`, after the claim's read of the
queue), recorded (`sending` → `sent`), its enrollment moved on — and read once more to render
it. With a hand-off the send transaction inserts the messages that passed the checks directly
as `sending`, with the tick's claim token and `claimed_at` (what the claim would have written),
reads their ids back by their unique key and that token, and after its commit puts them — as
delivery's load would read them: the message, its contact, its trigger event, read with the
batch's checks — on a queue, in chunks, that the delivery processes and the tick process itself
take from. The claim's read and write and the load are gone; what makes delivery safe does not
change:

- a message is committed `sending` before any channel is called, so a crash leaves it
  `sending` for nurture.send.reconcile, exactly as after a crash between claim and record;
- nothing else takes it: claims read `queued` rows only;
- the checks ran in the send transaction at this tick's `now`, moments before — the same
  reason a claim does not re-check a message the tick has just queued
  (nurture.send.deliver's `_recheck`);
- only what this insert claimed is handed over: a message of the same (enrollment, step) that
  existed before (the insert skipped it) does not carry the tick's token.

Two kinds, the same to the advance stage (`token`, `publish`): `Handoff`, a queue the
processes of `nurture.runtime.parallel.pipelined` share, and `LocalHandoff`, which gives each
chunk at once to its taker in the same process (`handed_in_process`: a large tick in one
process). Every other delivery claims as before. Chunks are smaller than the advance stage's
batches, so the processes finish together (at the end of a tick one process with a whole batch
left, the others idle, cost ~0.5 s), and in one process a chunk's record overlaps the next
chunk's rendering.

The advance stage never runs far ahead of delivery: once `AHEAD` chunks per taking process
wait in the queue, the publishing process delivers the next chunk itself (`publish`'s `here`)
instead of queueing it. Unbounded, the guards — much faster than a real provider — claimed a
whole large tick at once: its messages waited `sending` in the tick process's memory for as
long as the channel took to send everything before them (a million messages at a relay's
200/s: 80 minutes), past `STUCK_AFTER`, when any other tick's reconcile asks the channel about
them; the channel has not seen them yet and says "never handed over", they are re-queued and
sent by that tick, and then by this one: twice. Bounded, a handed message waits at most
`AHEAD` + 1 chunks per process, and the tick process's memory holds that many.
"""
from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from typing import Any, Callable, Iterator, NamedTuple, Optional

from nurture.runtime.sql import chunks

log = logging.getLogger(__name__)

CHUNK = 2500
# Chunks that may wait in a pipelined hand-off's queue per process taking from it; beyond, the
# publishing process delivers a chunk itself: 20,000 messages, ~20 MB of rows, at most a few
# minutes of a slow relay's sending. (Unbounded, bench_tick's file channel had up to 21 of its
# 40 chunks waiting at 100,000 due; a real provider, slower, all of them.)
AHEAD = 8
POLL = 0.05
DOWN_BYTES = 4096  # room for the channels found unusable and their reasons, shared by the processes
# Closed, chunks left, none could be taken for this long: a delivery process died holding the
# queue's lock (killed). Its chunks stay `sending` for reconcile, as after any crash.
STALL = 30.0


class HandedBatch(NamedTuple):
    journey: str
    step_id: str
    token: str
    rows: list[tuple]  # the messages as nurture.send.deliver.LoadedMessage (plain tuples: less to pickle)


def handed_chunks(journey: str, step_id: str, token: str, rows: list[tuple]) -> Iterator[HandedBatch]:
    """A batch's claimed messages in chunks of CHUNK, as plain tuples (less to pickle)."""
    for part in chunks(rows, CHUNK):
        yield HandedBatch(journey, step_id, token, [tuple(r) for r in part])


class LocalHandoff:
    """The hand-off within one process: each chunk goes to `take` as soon as it is published
    (after the send transaction's commit), before the advance stage guards its next batch."""

    def __init__(self, take: Callable[[HandedBatch], None], lease: Any = None):
        self.lease = lease  # what holds its messages while the tick runs (nurture.send.lease)
        self.token = lease.token if lease is not None else uuid.uuid4().hex
        self._take = take

    def publish(self, journey: str, step_id: str, rows: list[tuple]) -> None:
        for batch in handed_chunks(journey, step_id, self.token, rows):
            self._take(batch)


class Handoff:
    """Made with the multiprocessing context of the tick's processes, and passed to them.
    `takers`: the processes that will take chunks from it (`limit` = AHEAD chunks each)."""

    lease: Any = None  # the publishing process's (PublishingHere), never the delivery processes'

    def __init__(self, ctx: Any, takers: int = 1):
        self.token = uuid.uuid4().hex
        self.limit = AHEAD * max(1, takers)
        self._queue = ctx.Queue()
        # This process puts the chunks. Chunks nobody took (every taker gone) must not keep it
        # from exiting: by default a process waits at exit until its queue's buffered data is
        # written to the pipe, which a chunk (hundreds of kB) never is without a reader. Their
        # messages stay `sending` for reconcile, as after any crash.
        self._queue.cancel_join_thread()
        self._handed = ctx.Value("q", 0)
        self._taken = ctx.Value("q", 0)
        self._closed = ctx.Event()
        # The channels a process of the tick found unusable ({name: reason} as JSON): the others
        # put their messages back without trying the channel themselves (one try a tick).
        self._down = ctx.Array("c", DOWN_BYTES)
        # When the tick process last renewed the tick's delivery lease (time.monotonic()):
        # nurture.send.lease's Lease(shared=) writes it, Renewed reads it in the delivery processes.
        self.renewed = ctx.Value("d", time.monotonic())

    def publish(self, journey: str, step_id: str, rows: list[tuple],
                here: Optional[Callable[[HandedBatch], None]] = None) -> None:
        """After the send transaction's commit: its claimed messages, for delivery. `here`:
        how the publishing process delivers a chunk itself, which it does with every chunk
        while `limit` chunks wait for the takers (see the module's docstring)."""
        for batch in handed_chunks(journey, step_id, self.token, rows):
            if here is not None and self.waiting() >= self.limit:
                here(batch)
                continue
            with self._handed.get_lock():  # counted before it is put: a taker never sees it early
                self._handed.value += 1
            self._queue.put(batch)

    def waiting(self) -> int:
        """Chunks put and not yet taken."""
        with self._taken.get_lock():
            return self._handed.value - self._taken.value

    def publishing_here(self, here: Callable[[HandedBatch], None], lease: Any = None) -> "PublishingHere":
        """What the publishing process's advance stage publishes to (its `rt.handoff`): this
        hand-off, with `here` delivering what the takers are too far behind to take, and the
        `lease` (nurture.send.lease) that holds its messages while the tick runs."""
        return PublishingHere(self, here, lease)

    def down(self) -> dict[str, str]:
        """The channels a process of this tick found unusable: name → reason."""
        with self._down.get_lock():
            raw = self._down.value
        return json.loads(raw) if raw else {}

    def mark_down(self, channels: dict[str, str]) -> None:
        """Tell the tick's other processes which channels this one found unusable."""
        with self._down.get_lock():
            known = json.loads(self._down.value or b"{}")
            if set(channels) <= set(known):
                return
            known.update({name: reason for name, reason in channels.items() if name not in known})
            raw = json.dumps(known).encode("ascii")
            for width in (80, 0):  # (a provider's long replies: the names are what matters)
                if len(raw) < DOWN_BYTES:
                    break
                raw = json.dumps({name: reason[:width] for name, reason in known.items()}).encode("ascii")
            if len(raw) < DOWN_BYTES:
                self._down.value = raw

    def close(self) -> None:
        """Nothing more will be published (the advance stage is done)."""
        self._closed.set()

    def batches(self, alive: Callable[[], bool] = lambda: True) -> Iterator[HandedBatch]:
        """Chunks as they come, until the hand-off is closed and every chunk is taken (by this
        process or another). `alive`: are the other takers still there (if not, a chunk one of
        them had taken off the queue but not counted is not waited for)."""
        stalled_since = None
        while True:
            try:
                batch = self._queue.get(timeout=POLL)
            except queue.Empty:
                if self._closed.is_set():
                    with self._taken.get_lock():
                        left = self._handed.value - self._taken.value
                    if left <= 0 or not alive():
                        return
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > STALL:
                        log.warning("%d handed chunk(s) could not be taken for %.0f s; they stay `sending` "
                                    "for reconcile", left, STALL)
                        return
                continue
            stalled_since = None
            with self._taken.get_lock():
                self._taken.value += 1
            yield batch


class PublishingHere:
    """A `Handoff` as the process that publishes to it sees it: the same token, and chunks the
    takers are too far behind for delivered by `here` (kept out of the `Handoff` itself, which
    is pickled for the delivery processes)."""

    def __init__(self, handoff: Handoff, here: Callable[[HandedBatch], None], lease: Any = None):
        self.handoff, self.here, self.token, self.lease = handoff, here, handoff.token, lease

    def publish(self, journey: str, step_id: str, rows: list[tuple]) -> None:
        self.handoff.publish(journey, step_id, rows, here=self.here)

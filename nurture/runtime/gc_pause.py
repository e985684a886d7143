"""Python's cyclic garbage collector paused for the length of one batch.

A delivery or advance batch allocates tens of thousands of short-lived objects (rows, render
contexts, message dicts). CPython starts a young-generation collection every 700 net
allocations and, as survivors pile up, full collections that walk every object of the process
(in a Prefect worker: the whole of Prefect too). Measured on a 5,000-message batch that is
~100 µs per message, a third of delivering it. Reference counting still frees almost
everything at once; the few cycles a batch creates are collected when the pause ends.

The pause nests and is safe across threads (Prefect runs tasks in threads): the collector is
switched off by the first batch that enters and back on by the last one that leaves, and only
if it was on to begin with. Batches of two threads that overlap without a gap (a sending
thread beside the advance stage, two slices of an import) may keep it off for a whole tick or
file, so a batch that leaves while another holds the pause collects the two young generations
itself once OVERDUE net allocations have piled up: what cycles the batches leave stays bounded
(an import's slices once left ~20 MB each, 1.2 GB at a million contacts).
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_paused_by_us = False
# Net container allocations (gc.get_count()[0], counted while the collector is off) after which
# a batch leaving an overlapped pause collects: a young collection walks what survived since the
# last one, ~10 ms per 200,000; a batch that frees what it made leaves the count near where it was.
OVERDUE = 200_000


@contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _paused_by_us
    with _lock:
        if _depth == 0 and gc.isenabled():
            gc.disable()
            _paused_by_us = True
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            overdue = _depth > 0 and _paused_by_us and gc.get_count()[0] > OVERDUE
            if _depth == 0 and _paused_by_us:
                _paused_by_us = False
                gc.enable()
                gc.collect(0)  # the batch's own cycles, young generation only
        if overdue:  # (outside the lock: a collection may run finalizers that pause in turn)
            gc.collect(1)


@contextmanager
def gc_relaxed(young: int = 50_000) -> Iterator[None]:
    """For a long run of small ticks in one process (a simulation, the demo): what exists now
    is frozen (never walked again by a collection — the project, the compiled plans, the
    imported libraries) and a young-generation collection comes every `young` net allocations
    instead of 700. Measured on a week of the demo's company: ~5 % of the run. Collections
    still happen; the previous thresholds are restored and the frozen objects released after."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()

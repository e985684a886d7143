"""Specification: nurture.runtime.gc_pause — the cyclic collector paused per batch. Reference
counting frees what a batch makes; the cycles it leaves are collected when the last pause ends,
or, when batches overlap without a gap (two threads), by a batch leaving once OVERDUE net
allocations have piled up, so that they cannot accumulate for a whole tick or file."""
from __future__ import annotations

import gc
import weakref

import pytest

from nurture.runtime import gc_pause
from nurture.runtime.gc_pause import gc_paused


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def cycles(n: int) -> weakref.ref:
    """n unreachable cycles; a weak reference to the last."""
    node = None
    for _ in range(n):
        node = Node()
    ref = weakref.ref(node)
    del node
    return ref


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    gc.collect()
    yield
    gc.enable() if was else gc.disable()


def test_a_batch_leaves_its_cycles_to_the_collection_when_the_last_pause_ends():
    with gc_paused():
        assert not gc.isenabled()
        left = cycles(10)
        assert left() is not None
    assert gc.isenabled() and left() is None


def test_a_batch_leaving_while_another_holds_the_pause_collects_once_cycles_pile_up(monkeypatch):
    monkeypatch.setattr(gc_pause, "OVERDUE", 1_000)
    with gc_paused():  # the other thread's batch, still under way
        with gc_paused():
            few = cycles(10)
        assert few() is not None  # under OVERDUE: the pause holds
        with gc_paused():
            many = cycles(5_000)
        assert many() is None and few() is None  # collected as that batch left
        assert not gc.isenabled()  # and the collector is still paused for the other batch
    assert gc.isenabled()


def test_the_collector_stays_off_when_it_was_off_before_the_pause(monkeypatch):
    monkeypatch.setattr(gc_pause, "OVERDUE", 1_000)
    gc.disable()
    with gc_paused():
        with gc_paused():
            many = cycles(5_000)
    assert not gc.isenabled() and many() is not None  # not ours to collect

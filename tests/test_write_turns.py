"""Cooperating processes queue for SQLite's write lock first come, first served, and a read-only
connection neither waits for a writer nor holds one up."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import pytest
from sqlalchemy import text

from nurture.store import write_turns
from nurture.store.db import open_store
from nurture.store.write_turns import TurnTakingConnection, WriteTurns, taking_turns


@pytest.fixture
def turns() -> WriteTurns:
    return WriteTurns(multiprocessing.get_context("forkserver"))


def _tickets_drawn(turns: WriteTurns) -> int:
    return turns._next.value


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_turns_are_granted_in_the_order_they_were_asked_for(turns):
    assert turns.acquire()
    order: list[str] = []

    def wait_turn(name: str) -> None:
        assert turns.acquire()
        order.append(name)
        turns.release()

    threads = []
    for i, name in enumerate(["first", "second", "third"]):
        threads.append(threading.Thread(target=wait_turn, args=(name,)))
        threads[-1].start()
        _wait_until(lambda: _tickets_drawn(turns) == i + 2)  # this one queued before the next starts
    time.sleep(0.05)
    assert order == []  # nobody gets in while the turn is held
    turns.release()
    for t in threads:
        t.join(10)
    assert order == ["first", "second", "third"]


def test_a_turn_held_past_the_timeout_breaks_the_queue_and_everyone_goes_on_without(turns, monkeypatch):
    monkeypatch.setattr(write_turns, "TIMEOUT", 0.1)
    assert turns.acquire()  # and never released: a participant that died holding its turn
    started = time.monotonic()
    assert turns.acquire() is False
    assert time.monotonic() - started < 5
    assert turns.acquire() is False  # broken for good: no more waiting


def _write_engine_transaction(store, turns, value: int) -> None:
    with taking_turns(turns), store.engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})


@pytest.fixture
def sqlite_store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'turns.db'}", auto_migrate=False)
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    yield store
    store.dispose()


def test_a_write_transaction_holds_its_turn_from_begin_to_commit(sqlite_store, turns):
    with taking_turns(turns):
        with sqlite_store.engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert turns._serving.value == 0 and _tickets_drawn(turns) == 1  # holding ticket 0
        assert turns._serving.value == 1  # passed on at commit
        with pytest.raises(RuntimeError):
            with sqlite_store.engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
                raise RuntimeError("boom")
        assert turns._serving.value == 2  # passed on at rollback
    with sqlite_store.engine.begin() as conn:  # outside taking_turns: no ticket drawn
        conn.execute(text("INSERT INTO t VALUES (3)"))
    assert _tickets_drawn(turns) == 2
    with sqlite_store.reading() as conn:
        assert sorted(r[0] for r in conn.execute(text("SELECT v FROM t"))) == [1, 3]


def test_a_begin_that_fails_passes_its_turn_on(tmp_path, turns):
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    conn = sqlite3.connect(path, timeout=0.05, isolation_level=None, factory=TurnTakingConnection)
    with taking_turns(turns):
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            conn.begin_write()
    assert turns._serving.value == _tickets_drawn(turns) == 1
    holder.rollback()
    with taking_turns(turns):
        conn.begin_write()
        conn.commit()
    assert turns._serving.value == 2
    holder.close()
    conn.close()


def test_queued_writers_in_other_threads_all_commit(sqlite_store, turns):
    threads = [threading.Thread(target=_write_engine_transaction, args=(sqlite_store, turns, i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with sqlite_store.reading() as conn:
        assert sorted(r[0] for r in conn.execute(text("SELECT v FROM t"))) == list(range(8))
    assert turns._serving.value == _tickets_drawn(turns) == 8


def test_a_read_only_connection_reads_the_last_commit_while_a_writer_holds_the_lock(sqlite_store):
    with sqlite_store.engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with sqlite_store.engine.begin() as writer:
        writer.execute(text("INSERT INTO t VALUES (2)"))
        started = time.monotonic()
        with sqlite_store.reading() as reader:
            assert [r[0] for r in reader.execute(text("SELECT v FROM t"))] == [1]
        assert time.monotonic() - started < 1  # no wait for the writer's lock (busy timeout is 60 s)

"""store.lean: a statement executed again on a SQLite engine runs straight on the DBAPI cursor.

Every form the engine uses is run both ways on the same data — SQLAlchemy's path (forced with
an execution option) and the lean one — and must give the same rows, keys, types and row
counts; errors are SQLAlchemy's exceptions; transactions are the connection's own; statement
listeners still see every statement.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, event, exc, func, select, union_all
from sqlalchemy.engine import Connection

from nurture.runtime.sql import ids_in, texts_in
from nurture.store import lean
from nurture.store.db import open_store
from nurture.store.tables import contact_t, enrollment_t, event_t

T0 = datetime(2026, 3, 10, 9, 30, 15, 120000, tzinfo=timezone.utc)
PLAIN = {"nurture_plain": True}  # any execution option: SQLAlchemy's own path


@pytest.fixture
def store(tmp_path, sqlite_template):
    shutil.copyfile(sqlite_template, tmp_path / "n.db")
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    with store.engine.begin() as conn:
        for i, email in enumerate(["ann@example.com", "bob@example.com", "cy@example.com"], start=1):
            conn.execute(contact_t.insert().values(id=i, email=email, first_name=f"N{i}", timezone="Europe/Berlin",
                                                   attributes={"plan": "pro", "n": i}, created_at=T0, updated_at=T0))
            conn.execute(event_t.insert().values(event_id=f"e{i}", contact_id=i, name="purchase",
                                                 properties={"value": 10.5 * i, "tags": ["a", i]},
                                                 occurred_at=T0 + timedelta(hours=i), received_at=T0))
    yield store
    store.dispose()


def both_ways(store, stmt, params=None):
    """(SQLAlchemy's rows, keys, rowcount), (the lean ones) — in rolled-back transactions."""
    out = []
    for options in (PLAIN, None):
        with store.engine.connect() as conn:
            if options is None:
                with conn.begin() as transaction:
                    conn.execute(stmt, params)  # a first execution: SQLAlchemy's path, the plan is made
                    transaction.rollback()
                assert lean._plan_for(stmt, conn.dialect) is not None, "not run lean"
            with conn.begin() as transaction:
                result = conn.execute(stmt, params, execution_options=options) if options else conn.execute(stmt, params)
                rows = result.all() if result.returns_rows else []
                out.append(([tuple(r) for r in rows], list(result.keys()) if result.returns_rows else [],
                            result.rowcount if not result.returns_rows else None, rows))
                transaction.rollback()
    return out


FORMS = {
    "datetime and JSON in and out": lambda: (
        select(event_t.c.id, event_t.c.occurred_at, event_t.c.properties).where(
            event_t.c.occurred_at > bindparam("after"), event_t.c.name == "purchase").order_by(event_t.c.id),
        {"after": T0}),
    "an aggregate keeps its type": lambda: (
        select(event_t.c.name, func.min(event_t.c.occurred_at), func.count()).group_by(event_t.c.name), {}),
    "a join with two columns of one name": lambda: (
        select(contact_t.c.id, event_t.c.id, contact_t.c.attributes["plan"].as_string())
        .join(event_t, event_t.c.contact_id == contact_t.c.id).order_by(event_t.c.id), {}),
    "expanding lists": lambda: (
        select(contact_t.c.email).where(ids_in(contact_t.c.id, ()), texts_in(contact_t.c.first_name, ()))
        .order_by(contact_t.c.id), {"ids_id": [1, 3], "texts_first_name": ["N1", "N3", "x"]}),
    "IN with datetimes": lambda: (
        select(event_t.c.id).where(event_t.c.occurred_at.in_(bindparam("when", expanding=True))),
        {"when": [T0 + timedelta(hours=2)]}),
    "limit and offset": lambda: (
        select(contact_t.c.id).order_by(contact_t.c.id).offset(bindparam("skip")).limit(1), {"skip": 1}),
    "a union": lambda: (
        union_all(select(contact_t.c.id).where(contact_t.c.id == bindparam("a")),
                  select(event_t.c.id).where(event_t.c.id == bindparam("b"))), {"a": 1, "b": 2}),
    "an update's row count": lambda: (
        contact_t.update().where(contact_t.c.id >= bindparam("low")).values(first_name=bindparam("name")),
        {"low": 2, "name": "Zed"}),
    "update … returning": lambda: (
        event_t.update().where(event_t.c.id == bindparam("eid")).values(occurred_at=bindparam("at"))
        .returning(event_t.c.id, event_t.c.occurred_at), {"eid": 2, "at": T0}),
    "a delete": lambda: (event_t.delete().where(event_t.c.contact_id == bindparam("cid")), {"cid": 3}),
    "insert … returning": lambda: (
        enrollment_t.insert().values(contact_id=1, journey="j", version=1, status="active", entered_at=T0,
                                     holdout=False, revenue=0.0, defer_count=0, state={"k": [1]})
        .returning(enrollment_t.c.journey, enrollment_t.c.state, enrollment_t.c.holdout), {}),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gives_what_sqlalchemy_gives(store, form):
    stmt, params = FORMS[form]()
    (rows, keys, count, plain_rows), (lean_rows, lean_keys, lean_count, lean_row_objects) = both_ways(store, stmt, params)
    assert lean_rows == rows and lean_keys == keys and lean_count == count
    assert [type(v) for r in lean_rows for v in r] == [type(v) for r in rows for v in r]
    for plain, fast in zip(plain_rows, lean_row_objects):  # attribute and mapping access alike
        assert dict(fast._mapping) == dict(plain._mapping)


def test_the_lean_path_does_not_go_through_sqlalchemys_execute(store, monkeypatch):
    stmt = select(contact_t.c.email).where(contact_t.c.id == bindparam("cid"))
    with store.reading() as conn:
        assert conn.execute(stmt, {"cid": 1}).scalar() == "ann@example.com"

    def refuse(*args, **kwargs):
        raise AssertionError("SQLAlchemy's execute was called")
    monkeypatch.setattr(Connection, "execute", refuse)
    with store.reading() as conn:
        assert conn.execute(stmt, {"cid": 2}).scalar() == "bob@example.com"
        assert conn.execute(stmt, {"cid": 9}).first() is None


def test_what_sqlalchemy_must_decide_takes_its_path(store):
    stmt = select(contact_t.c.email).where(contact_t.c.id == bindparam("cid"))
    listed = select(contact_t.c.email).where(ids_in(contact_t.c.id, ()))
    with store.reading() as conn:
        for _ in range(2):
            with pytest.raises(exc.StatementError, match="cid"):
                conn.execute(stmt, {})  # a parameter not given: SQLAlchemy's message
            assert conn.execute(listed, {"ids_id": []}).all() == []  # an empty list
    plain_insert = contact_t.insert().values(email=bindparam("email"), created_at=T0, updated_at=T0, attributes={})
    with store.engine.begin() as conn:
        for i in range(2):
            result = conn.execute(plain_insert, {"email": f"new{i}@example.com"})
            assert result.inserted_primary_key[0] > 3  # an INSERT without RETURNING stays SQLAlchemy's


def test_a_database_error_is_sqlalchemys_exception_and_the_transaction_is_the_connections(store):
    rename = contact_t.update().where(contact_t.c.id == bindparam("cid")).values(email=bindparam("email"))
    with store.engine.begin() as conn:
        conn.execute(rename, {"cid": 3, "email": "cy2@example.com"})
    with pytest.raises(exc.IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(rename, {"cid": 2, "email": "bob2@example.com"})  # lean now
            conn.execute(rename, {"cid": 1, "email": "bob2@example.com"})  # the unique address
    with store.reading() as conn:
        emails = conn.execute(select(contact_t.c.email).order_by(contact_t.c.id)).scalars().all()
    assert emails == ["ann@example.com", "bob@example.com", "cy2@example.com"]  # bob's rename rolled back


def test_statement_listeners_see_every_statement(store):
    stmt = select(contact_t.c.id).where(contact_t.c.id == bindparam("cid"))
    seen = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        with store.reading() as conn:
            for cid in (1, 2, 3):
                conn.execute(stmt, {"cid": cid})
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    assert len([s for s in seen if "FROM contact" in s]) == 3


@pytest.mark.parametrize("first_rows", [64, 2, 1])  # all at once; read on past the first rows
def test_a_select_is_read_as_it_is_asked_for_and_its_cursor_closed(store, monkeypatch, first_rows):
    monkeypatch.setattr(lean, "_FIRST_ROWS", first_rows)
    every = select(contact_t.c.id).order_by(contact_t.c.id)
    rename = contact_t.update().where(contact_t.c.id == bindparam("cid")).values(first_name=bindparam("name"))
    with store.engine.begin() as conn:
        conn.execute(every).all()  # (the plan is made)
        assert conn.execute(every).first() == (1,)  # the rest is never read: the cursor is closed
        rows = conn.execute(every)
        assert next(iter(rows)) == (1,) and [r.id for r in rows] == [2, 3]
        for cid in (1, 2):
            conn.execute(rename, {"cid": cid, "name": "New"})  # (and the write is not held up)
    with store.reading() as conn:
        assert conn.execute(select(contact_t.c.first_name).order_by(contact_t.c.id)).scalars().all() == [
            "New", "New", "N3"]

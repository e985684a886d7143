"""`write_many` and `ids_in` on both stores: on PostgreSQL a batch write is one statement over
arrays (`UPDATE … FROM unnest(…)`, `INSERT … SELECT FROM unnest(…)`) and an id list is one
array parameter — with exactly the results of a row-by-row executemany and of an IN list."""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import bindparam, select, text

from nurture.runtime.sql import ids_in, write_many
from nurture.store.tables import contact_t, message_t
from tests.conftest import utc

AT = utc(2026, 11, 18, 12)


def _contacts(conn, n: int) -> list[int]:
    conn.execute(contact_t.insert(), [{"email": f"c{i}@example.com", "lifecycle_stage": "lead", "score": 0.0,
                                       "attributes": {}, "created_at": AT, "updated_at": AT} for i in range(n)])
    return [r[0] for r in conn.execute(text("SELECT id FROM contact ORDER BY id"))]


def _messages(conn, cids: list[int]) -> list[int]:
    write_many(conn, message_t.insert(), [
        dict(contact_id=cid, journey="j", step_id="s", channel="email", purpose="marketing", template="t",
             status="sending", due_at=AT, created_at=AT, attempts=2, attempt_key="send") for cid in cids])
    return [r[0] for r in conn.execute(text("SELECT id FROM message ORDER BY id"))]


def test_a_batch_update_changes_each_row_as_its_own_statement_would(store):
    record = (message_t.update().where(message_t.c.id == bindparam("mid"))
              .values(status=bindparam("st"), sent_at=bindparam("sat"), claim=None))
    put_back = (message_t.update().where(message_t.c.id == bindparam("mid"))
                .values(attempts=message_t.c.attempts - 1))
    with store.engine.begin() as conn:
        mids = _messages(conn, _contacts(conn, 4))
        write_many(conn, record, [{"mid": mids[0], "st": "sent", "sat": AT},
                                  {"mid": mids[2], "st": "failed", "sat": None}])
        # a row named twice is changed twice, as by an executemany (the array form would once)
        write_many(conn, put_back, [{"mid": mids[1]}, {"mid": mids[1]}, {"mid": mids[3]}])
        rows = conn.execute(select(message_t.c.status, message_t.c.sent_at, message_t.c.attempts)
                            .order_by(message_t.c.id)).all()
        with pytest.raises(ValueError, match="timezone"):  # a naive datetime: refused, as SQLAlchemy would
            write_many(conn, record, [{"mid": mids[0], "st": "sent", "sat": datetime(2026, 11, 18, 12)}])
    assert [tuple(r) for r in rows] == [("sent", AT, 2), ("sending", None, 0), ("failed", None, 2),
                                        ("sending", None, 1)]


def test_the_same_id_query_with_other_ids_returns_the_other_rows(store):
    """The statement is compiled once and cached; every execution must bind its own ids."""
    with store.engine.begin() as conn:
        cids = _contacts(conn, 5)
    for wanted in ([cids[0], cids[1]], [cids[4]], [], cids):
        with store.reading() as conn:
            got = [r[0] for r in conn.execute(select(contact_t.c.id).where(ids_in(contact_t.c.id, wanted))
                                              .order_by(contact_t.c.id))]
            negated = [r[0] for r in conn.execute(select(contact_t.c.id).where(~ids_in(contact_t.c.id, wanted))
                                                  .order_by(contact_t.c.id))]
        assert got == sorted(wanted)
        assert negated == [c for c in cids if c not in wanted]


def test_json_values_are_written_as_their_text_and_read_back_as_they_were(store, monkeypatch):
    """Event properties in a batch insert: on PostgreSQL one statement over arrays (the JSON
    texts, cast on the server) — the same rows as an executemany, a duplicate event_id ignored,
    a NaN refused; a None in a JSON column takes the executemany."""
    from nurture.runtime import sql
    from nurture.runtime.sql import insert_ignore
    from nurture.store.tables import event_t
    props = [{"name": "Zoë \"Q\" \\ 🎉", "nested": {"list": [1, 2.5, None, True], "empty": {}}, "n": 1e300},
             {}, {"sql": "'); DROP TABLE event; --", "tab\t": "line\nbreak"}]
    calls = []
    original = sql._pg_unnest
    monkeypatch.setattr(sql, "_pg_unnest", lambda conn, stmt, rows: calls.append(original(conn, stmt, rows))
                        or calls[-1])
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        rows = [dict(event_id=f"e{i}", contact_id=cid, name="page_view", properties=p, occurred_at=AT, received_at=AT)
                for i, p in enumerate(props)]
        insert_ignore(conn, event_t, rows, ("event_id",))
        insert_ignore(conn, event_t, rows[:1] + [dict(rows[1], event_id="e9")], ("event_id",))  # e0 again: ignored
        stored = conn.execute(select(event_t.c.event_id, event_t.c.properties).order_by(event_t.c.id)).all()
        with pytest.raises(ValueError):
            insert_ignore(conn, event_t, [dict(rows[0], event_id="nan", properties={"x": float("nan")})],
                          ("event_id",))
    assert [tuple(r) for r in stored] == [("e0", props[0]), ("e1", {}), ("e2", props[2]), ("e9", {})]
    if store.is_postgres:
        assert len(calls) >= 2 and all(c is not False for c in calls[:2])  # the array form, not the executemany
        assert [c.rowcount for c in calls[:2]] == [3, 1]  # (e0 again: ignored)


def test_integer_arrays_reach_the_server_exactly(store):
    """`int4_array` (store/pg_arrays.py) encodes an id list in PostgreSQL's binary array format
    itself: the server must read back exactly the list — empty, one, the range's ends, negative,
    unsorted, repeated — and what it cannot encode (None, a bigint) goes as psycopg sends it."""
    from nurture.store.pg_arrays import Int4Array, int4_array
    lists = [[], [7], [1, 2, 3], [-2**31, 2**31 - 1, 0, -1], [5, 3, 5, 1], list(range(10_000, 0, -1))]
    for values in lists:
        assert isinstance(int4_array(values), Int4Array)
    assert int4_array([1, None]) == [1, None] and int4_array([2**31]) == [2**31]
    assert int4_array([1.5]) == [1.5]
    if not store.is_postgres:
        return
    with store.engine.connect() as conn:
        for values in lists:
            got = conn.exec_driver_sql("SELECT %(a)b::INTEGER[], array_lower(%(a)b::INTEGER[], 1)",
                                       {"a": int4_array(values)}).one()
            assert tuple(got) == (values, 1 if values else None)
        assert conn.exec_driver_sql("SELECT %(a)b::BIGINT[]", {"a": int4_array([2**40, None])}).scalar() == [2**40, None]


def test_an_id_list_over_the_integer_range_is_the_servers_error_not_a_wrong_answer(store):
    """An id out of `integer`'s range in `ids_in` (a bigint the array cannot hold) is the
    driver's array, cast by the server: an error, never rows of other ids."""
    with store.engine.begin() as conn:
        cids = _contacts(conn, 3)
    with store.reading() as conn:
        got = [r[0] for r in conn.execute(select(contact_t.c.id).where(ids_in(contact_t.c.id, [cids[1], cids[2]]))
                                          .order_by(contact_t.c.id))]
    assert got == cids[1:]
    if store.is_postgres:
        from sqlalchemy.exc import DataError
        with pytest.raises(DataError, match="out of range"), store.reading() as conn:
            conn.execute(select(contact_t.c.id).where(ids_in(contact_t.c.id, [cids[0], 2**40]))).all()


def test_json_columns_read_back_what_json_loads_would(store):
    """`read_json` (store/db.py), the engines' JSON reader: text from SQLite, bytes from
    psycopg, `{}` without parsing — each value exactly what `json.loads` returns."""
    import json
    from nurture.store.db import read_json
    values = ['{}', '{"a": 1, "b": [1.5, null, true], "c": {"d": "Zoë 🎉 \\u00e9"}}', '[]', '"x"', '3', 'null',
              '{"n": NaN}']
    for value in values:
        for given in (value, value.encode("utf-8")):
            got, want = read_json(given), json.loads(given)
            assert got == want or (got != got and want != want) or json.dumps(got) == json.dumps(want)
    first, second = read_json("{}"), read_json(b"{}")
    first["x"] = 1
    assert second == {} and read_json("{}") == {}  # a new dict each time: a caller may change it
    props = {"name": "Zoë", "nested": {"list": [1, 2.5, None]}}
    from nurture.store.tables import event_t
    with store.engine.begin() as conn:
        (cid,) = _contacts(conn, 1)
        conn.execute(event_t.insert(), [dict(event_id=f"r{i}", contact_id=cid, name="n", properties=p,
                                             occurred_at=AT, received_at=AT) for i, p in enumerate([props, {}])])
        got = [r[0] for r in conn.execute(select(event_t.c.properties).order_by(event_t.c.id))]
        attributes = conn.execute(select(contact_t.c.attributes)).scalar()
    assert got == [props, {}] and attributes == {}


def test_an_update_with_a_condition_after_its_key_writes_only_the_rows_it_matches(store):
    """`WHERE id = :mid AND claim = :tok` (a delivery's record, nurture.send.deliver): a row
    whose claim changed meanwhile is left alone, the count written says so — the token shared
    by the batch or not."""
    record = (message_t.update().where(message_t.c.id == bindparam("mid"), message_t.c.claim == bindparam("tok"))
              .values(status=bindparam("st"), claim=None))
    with store.engine.begin() as conn:
        mids = _messages(conn, _contacts(conn, 4))
        conn.execute(message_t.update().values(claim="a"))
        conn.execute(message_t.update().where(message_t.c.id == mids[1]).values(claim="b"))
        assert write_many(conn, record, [{"mid": m, "tok": "a", "st": "sent"} for m in mids[:3]]) == 2
        assert write_many(conn, record, [{"mid": mids[1], "tok": "b", "st": "failed"},
                                         {"mid": mids[3], "tok": "x", "st": "failed"}]) == 1
        got = conn.execute(select(message_t.c.status, message_t.c.claim).order_by(message_t.c.id)).all()
        # a row named twice: the executemany's path (its count the sum, as sqlite3's and psycopg's)
        conn.execute(message_t.update().values(claim="c"))
        assert write_many(conn, record.values(claim=bindparam("tok")),
                          [{"mid": mids[0], "tok": "c", "st": "x"}, {"mid": mids[0], "tok": "c", "st": "y"},
                           {"mid": mids[1], "tok": "z", "st": "y"}]) == 2
    assert [tuple(r) for r in got] == [("sent", None), ("failed", None), ("sent", None), ("sending", "a")]


def test_the_generic_plan_of_a_conditioned_batch_update_hashes_the_batch(store, monkeypatch):
    """psycopg prepares a statement from its sixth execution on a connection, and PostgreSQL
    then plans it once, generically (an id array of unknown length: 10 rows). With the claim
    as a condition on the table alone that plan joined the batch to the table in a nested loop
    (2,500 × 2,500 comparisons, ~1 s a chunk of a large tick); as a condition of the join the
    batch is hashed."""
    if not store.is_postgres:
        pytest.skip("PostgreSQL's plan cache")
    from nurture.runtime import sql
    seen = []
    real = sql.Connection.exec_driver_sql

    def watched(self, statement, parameters=None, *args, **kwargs):
        seen.append((statement, parameters))
        return real(self, statement, parameters, *args, **kwargs)
    record = (message_t.update().where(message_t.c.id == bindparam("mid"), message_t.c.claim == bindparam("tok"))
              .values(status=bindparam("st"), claim=None))
    with store.engine.begin() as conn:
        mids = _messages(conn, _contacts(conn, 20))
        conn.execute(message_t.update().values(claim="a"))
        monkeypatch.setattr(sql.Connection, "exec_driver_sql", watched)
        write_many(conn, record, [{"mid": m, "tok": "a", "st": "sent"} for m in mids])
        monkeypatch.undo()
        ((statement, params),) = seen
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
    assert "Hash Cond" in plan and "claim" in plan.split("Hash Cond")[1].splitlines()[0], plan
    assert "Nested Loop" not in plan, plan

"""`write_many`, the bulk write of a tick's per-message rows, stores exactly what SQLAlchemy's
own executemany stores — on SQLite it bypasses SQLAlchemy's parameter processing, so the
stored text (datetimes above all: string comparison drives every due-date query) must match
byte for byte, and the rows must read back as the same Python values."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, text

from nurture.runtime.sql import insert_ignore, sqlite_datetime, write_many
from nurture.store.tables import contact_t, enrollment_t, message_t

from tests.conftest import utc

BERLIN_SUMMER = timezone(timedelta(hours=2))


def _seed_contact_and_enrollments(conn, n: int) -> list[int]:
    at = utc(2026, 11, 18, 12)
    cid = conn.execute(contact_t.insert().values(email="a@example.com", lifecycle_stage="lead", score=0.0,
                                                 attributes={}, created_at=at, updated_at=at)).inserted_primary_key[0]
    conn.execute(enrollment_t.insert(), [
        {"contact_id": cid, "journey": "j", "version": "v1", "step_id": "s", "next_due_at": at, "step_entered_at": at,
         "status": "active", "holdout": False, "entered_at": at, "revenue": 0.0, "defer_count": 0, "state": {}}
        for _ in range(n)])
    return [r[0] for r in conn.execute(text("SELECT id FROM enrollment ORDER BY id"))]


def _message_rows(eids: list[int], cid: int) -> list[dict]:
    now = datetime(2026, 3, 29, 3, 30, 15, 123456, tzinfo=BERLIN_SUMMER)  # not UTC: stored as UTC
    return [dict(enrollment_id=eid, contact_id=cid, journey="j", step_id=f"s{i}", channel="email", purpose="marketing",
                 template="hello", address="Ä@example.com", status="queued", reason=None,
                 due_at=now + timedelta(microseconds=i), created_at=now, attempts=0,
                 counted_at=None if i % 3 == 1 else now, attempt_key="send")
            for i, eid in enumerate(eids)]


def _dump(conn, table: str) -> list[tuple]:
    return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id")]


def test_message_rows_written_raw_equal_rows_written_by_sqlalchemy(db_url):
    from nurture.store.db import open_store
    stores = [open_store(db_url)]
    try:
        with stores[0].engine.begin() as conn:
            eids = _seed_contact_and_enrollments(conn, 6)
            cid = conn.execute(text("SELECT id FROM contact")).scalar()
            rows = _message_rows(eids, cid)
            conn.execute(message_t.insert(), rows[:3])  # the reference: SQLAlchemy's own path
            insert_ignore(conn, message_t, [{**r, "step_id": rows[i]["step_id"]} for i, r in enumerate(rows[:3])],
                          ("enrollment_id", "step_id", "attempt_key"))  # duplicates: ignored
            insert_ignore(conn, message_t, rows[3:], ("enrollment_id", "step_id", "attempt_key"))
            stored = _dump(conn, "message")
            loaded = conn.execute(message_t.select().order_by(message_t.c.id)).all()
        assert len(stored) == 6
        reference, raw = stored[:3], stored[3:]
        for a, b in zip(reference, raw):  # same text/values in every column but id and identity
            cols = [c.name for c in message_t.columns]
            for name, x, y in zip(cols, a, b):
                if name in ("id", "enrollment_id", "step_id", "due_at"):
                    continue
                assert x == y, name
        # due_at differs by i microseconds by construction: compare as read back
        assert [r.due_at for r in loaded] == [r["due_at"] for r in rows]
        assert all(r.due_at.tzinfo is not None for r in loaded)
    finally:
        stores[0].dispose()


def test_update_with_fixed_values_and_named_parameters(db_url):
    from nurture.store.db import open_store
    store = open_store(db_url)
    try:
        finish = (enrollment_t.update().where(enrollment_t.c.id == bindparam("eid"))
                  .values(step_id=None, next_due_at=None, status="completed", left_at=bindparam("at")))
        at = utc(2026, 11, 18, 12, 5)
        with store.engine.begin() as conn:
            eids = _seed_contact_and_enrollments(conn, 4)
            write_many(conn, finish, [{"eid": eid, "at": at} for eid in eids[:2]])
            conn.execute(finish, [{"eid": eid, "at": at} for eid in eids[2:]])
            stored = _dump(conn, "enrollment")
            done = conn.execute(enrollment_t.select().where(enrollment_t.c.status == "completed")).all()
        assert len(done) == 4 and {r.left_at for r in done} == {at}
        assert all(r.step_id is None and r.next_due_at is None for r in done)
        left = [row[[c.name for c in enrollment_t.columns].index("left_at")] for row in stored]
        assert len(set(left)) == 1  # the same stored form, whichever path wrote it
    finally:
        store.dispose()


@pytest.mark.parametrize("value, expected", [
    (datetime(2026, 11, 18, 12, 0, tzinfo=timezone.utc), "2026-11-18 12:00:00.000000"),
    (datetime(2026, 3, 29, 3, 30, 0, 5, tzinfo=BERLIN_SUMMER), "2026-03-29 01:30:00.000005"),
])
def test_sqlite_datetime_is_utc_with_microseconds(value, expected):
    assert sqlite_datetime(value) == expected


def test_a_naive_datetime_is_refused_like_sqlmodel_refuses_it():
    with pytest.raises(ValueError):
        sqlite_datetime(datetime(2026, 11, 18, 12, 0))

"""Shared helpers of the engine specification tests: writing contacts, events, consent and
suppressions straight into a real store, and reading back the message log and enrollments.

They use the store's own tables (SQLAlchemy Core), the same way the engine does, so a test
sets up exactly the rows it talks about and nothing else.
"""
from __future__ import annotations

import textwrap
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator, Optional

import pytest
from sqlalchemy import select

from nurture.consent_ledger import record_consent, suppress
from nurture.store.db import Store
# The table handles, re-exported for tests that import them from here.
from nurture.store.tables import consent_t, contact_t, enrollment_t, event_t, message_t, suppression_t  # noqa: F401

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_store(request, tmp_path_factory) -> Iterator[Store]:
    """One store per backend for a whole test module whose tests only read shared rows."""
    import shutil

    from nurture.store.db import open_store
    from tests.conftest import _fresh_pg_database
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "nurture.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:  # (a copy of the migrated template)
        url = _fresh_pg_database(request.getfixturevalue("pg_server_url"), request.getfixturevalue("pg_template"))
    s = open_store(url)
    yield s
    s.dispose()


def journey_yaml(name: str, steps: str, *, trigger: str = "{event: signup}", extra: str = "") -> str:
    """A journey file: `steps` and `extra` are YAML blocks written without indentation."""
    extra = textwrap.dedent(extra).strip()
    return (f"name: {name}\ntrigger: {trigger}\n" + (extra + "\n" if extra else "") + "steps:\n"
            + textwrap.indent(textwrap.dedent(steps).strip(), "  ") + "\n")


def add_contact(store: Store, email: Optional[str], *, at: datetime = EPOCH, **fields: Any) -> int:
    row = {"email": email.lower() if email else None, "phone": None, "first_name": None, "last_name": None,
           "timezone": None, "country": None, "locale": None, "lifecycle_stage": "lead", "score": 0.0,
           "attributes": {}, "created_at": at, "updated_at": at, **fields}
    with store.engine.begin() as conn:
        return conn.execute(contact_t.insert().values(**row)).inserted_primary_key[0]


def add_event(store: Store, contact_id: int, name: str, at: datetime, properties: Optional[dict] = None,
              event_id: Optional[str] = None) -> int:
    with store.engine.begin() as conn:
        return conn.execute(event_t.insert().values(
            event_id=event_id or uuid.uuid4().hex, contact_id=contact_id, name=name,
            properties=properties or {}, occurred_at=at, received_at=at)).inserted_primary_key[0]


def set_consent(store: Store, contact_id: int, channel: str = "email", status: str = "granted", *,
                at: datetime = EPOCH, purpose: str = "marketing", confirmed: bool = True) -> None:
    with store.engine.begin() as conn:
        record_consent(conn, contact_id, channel, status, purpose=purpose, source="test", at=at,
                       confirmed=confirmed)


def add_suppression(store: Store, reason: str, *, contact_id: Optional[int] = None,
                    address: Optional[str] = None, channel: Optional[str] = None, at: datetime = EPOCH) -> None:
    with store.engine.begin() as conn:
        suppress(conn, reason=reason, at=at, contact_id=contact_id, address=address, channel=channel)


def subscriber(store: Store, email: str, *, channels: tuple[str, ...] = ("email",), **fields: Any) -> int:
    """A contact with confirmed marketing consent on `channels` (the usual happy path)."""
    cid = add_contact(store, email, **fields)
    for channel in channels:
        set_consent(store, cid, channel)
    return cid


def messages(store: Store, **where: Any) -> list[Any]:
    """Message rows (ordered by id), optionally filtered by column values."""
    stmt = select(message_t).order_by(message_t.c.id)
    for column, value in where.items():
        stmt = stmt.where(message_t.c[column] == value)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
        conn.rollback()
    return rows


def enrollments(store: Store, **where: Any) -> list[Any]:
    stmt = select(enrollment_t).order_by(enrollment_t.c.id)
    for column, value in where.items():
        stmt = stmt.where(enrollment_t.c[column] == value)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
        conn.rollback()
    return rows


def contact_row(store: Store, contact_id: int) -> Any:
    with store.engine.connect() as conn:
        row = conn.execute(select(contact_t).where(contact_t.c.id == contact_id)).one()
        conn.rollback()
    return row


def outcomes(store: Store, **where: Any) -> list[tuple[str, str, Optional[str]]]:
    """(step id, status, reason) per message row: the audit log in a comparable form."""
    return [(m.step_id, m.status, m.reason) for m in messages(store, **where)]


def add_subscribers(store: Store, count: int, *, event: Optional[str] = None, at: datetime = EPOCH,
                    channel: str = "email") -> list[int]:
    """`count` contacts c<i>@example.com with confirmed consent on `channel` (and each an `event`
    at `at`), written in one transaction: the bulk setup of the batch and concurrency tests."""
    emails = [f"c{i}@example.com" for i in range(count)]
    with store.engine.begin() as conn:
        conn.execute(contact_t.insert(), [{"email": e, "lifecycle_stage": "lead", "score": 0.0, "attributes": {},
                                           "created_at": EPOCH, "updated_at": EPOCH} for e in emails])
        ids = [r[0] for r in conn.execute(select(contact_t.c.id).where(contact_t.c.email.in_(emails))
                                          .order_by(contact_t.c.id))]
        conn.execute(consent_t.insert(), [dict(contact_id=cid, channel=channel, purpose="marketing", status="granted",
                                               source="test", policy_version="", recorded_at=EPOCH,
                                               confirmed_at=EPOCH) for cid in ids])
        if event:
            conn.execute(event_t.insert(), [dict(event_id=uuid.uuid4().hex, contact_id=cid, name=event,
                                                 properties={}, occurred_at=at, received_at=at) for cid in ids])
    return ids


def reads_meet(monkeypatch, store: Store) -> None:
    """Two threads' reads meet: after each `store.reading()` block a thread waits until the
    other has finished one too. Two workers of one tick then both read before either writes."""
    import threading
    from contextlib import contextmanager
    real_reading, both_read = store.reading, threading.Barrier(2, timeout=30)

    @contextmanager
    def reading_then_wait_for_the_other():
        with real_reading() as conn:
            yield conn
        both_read.wait()
    monkeypatch.setattr(store, "reading", reading_then_wait_for_the_other)


def at_once(run: Any) -> list[Any]:
    """`run()` in two threads at once (two workers on one tick): what each returned; an error
    in either fails the test."""
    import threading
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker():
        try:
            results.append(run())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2, errors
    return results

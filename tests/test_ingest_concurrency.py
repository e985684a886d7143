"""Specification: two writers that create the same new person at the same time make one contact
and neither fails — Meta delivering a lead twice at once, a page's first calls to /v1, an event
over /events beside `nurture import contacts`. On the real PostgreSQL and SQLite.

Each test keeps a first writer's transaction open after it wrote the person, starts the second
writer in a thread, and commits the first only once the second waits for it — on PostgreSQL
at the unique key the first holds (pg_locks shows the wait), on SQLite at the write lock the
first holds since its first statement. So the second has read before the first committed, and
the race is run every time, not by chance."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from sqlalchemy import func, select, text

from nurture.identities import Who, resolve
from nurture.ingest import import_contacts, track_in, track_records
from nurture.store.tables import contact_t, event_t, identity_t
from tests.conftest import utc

NOW = utc(2026, 3, 10, 12, 0)
ADA = "ada@example.com"


def event(event_id: str, email: str = ADA) -> tuple[int, dict]:
    return 1, {"event_id": event_id, "email": email, "event": "signup", "timestamp": "2026-03-10T11:00:00Z"}


def race(store, first: Callable[[Any], None], second: Callable[[], Any]) -> Any:
    """`first(conn)` in a transaction held open until `second()`, in a thread, waits for it;
    then committed. What `second` returned; what it raised is raised here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = second()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    with store.engine.begin() as conn:
        first(conn)
        thread = threading.Thread(target=run)
        thread.start()
        _until_waiting(store, thread)
    thread.join(60)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def in_transaction(store, work: Callable[[Any], Any]) -> Any:
    with store.engine.begin() as conn:
        return work(conn)


def _until_waiting(store, thread: threading.Thread) -> None:
    """Until the second writer waits for a lock (PostgreSQL), or a moment (SQLite: it waits for
    the write lock at its BEGIN IMMEDIATE, which nothing shows)."""
    if store.dialect != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 20
    with store.engine.connect() as probe:
        while thread.is_alive() and time.monotonic() < deadline:
            if probe.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
                return
            probe.rollback()
            time.sleep(0.02)
    raise AssertionError("the second writer never waited for the first")


def contacts(store) -> list:
    with store.engine.connect() as conn:
        return list(conn.execute(select(contact_t.c.id, contact_t.c.email, contact_t.c.phone,
                                        contact_t.c.external_id, contact_t.c.first_name).order_by(contact_t.c.id)))


def events_of(store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(select(event_t.c.event_id, event_t.c.contact_id)).all())


def test_two_first_events_of_one_new_address_at_once_make_one_contact(store):
    """/events (and `nurture track`, and a Meta lead with an e-mail): the second writer's insert
    of the address waited for the first's and failed with a UniqueViolation on PostgreSQL."""
    second = race(store, lambda conn: track_in(conn, [event("e-1")], now=NOW),
                  lambda: track_records(store, [event("e-2")], now=NOW))
    assert second.inserted == 1 and not second.errors
    (ada,) = contacts(store)
    assert ada.email == ADA
    assert events_of(store) == {"e-1": ada.id, "e-2": ada.id}


def test_two_phone_only_leads_of_one_new_number_at_once_make_one_contact(store):
    """A phone-only Meta lead (identities.resolve): the second call found the number taken and
    left an empty contact behind, with the event on it."""
    phone = "+4915112345678"
    got = race(store, lambda conn: resolve(conn, Who(phone=phone), NOW),
               lambda: in_transaction(store, lambda conn: resolve(conn, Who(phone=phone), NOW)))
    (person,) = contacts(store)
    assert person.phone == phone and got == (person.id, None)


def test_identify_beside_a_first_event_of_its_address_makes_one_contact(store):
    """/v1/identify naming a new user id and an e-mail that an event over /events creates at the
    same moment: the identify's update of its new contact's e-mail waited for the event's
    insert and failed with a UniqueViolation on PostgreSQL. Now the one contact gets both."""
    who = Who(external_id="user-1", email=ADA)
    got = race(store, lambda conn: track_in(conn, [event("e-1")], now=NOW),
               lambda: in_transaction(store, lambda conn: resolve(conn, who, NOW)))
    (ada,) = contacts(store)
    assert (ada.email, ada.external_id) == (ADA, "user-1") and got == (ada.id, None)
    with store.engine.connect() as conn:
        assert set(conn.execute(select(identity_t.c.contact_id)).scalars()) == {ada.id}


def test_an_import_beside_a_first_event_of_its_address_updates_that_contact(store, tmp_path):
    """`nurture import contacts` while `nurture web` stores the first event of an address on the
    file: the import's insert waited for the event's and failed (PostgreSQL), the whole slice
    with it. Now the slice is written again and updates the contact the event made."""
    people = tmp_path / "people.csv"
    people.write_text(f"email,first_name\n{ADA},Ada\nbob@example.com,Bob\n")
    result = race(store, lambda conn: track_in(conn, [event("e-1")], now=NOW),
                  lambda: import_contacts(store, people, now=NOW))
    assert not result.errors and (result.created, result.updated) == (1, 1)
    ada, bob = contacts(store)
    assert (ada.email, ada.first_name, bob.email) == (ADA, "Ada", "bob@example.com")
    assert events_of(store) == {"e-1": ada.id}


def test_a_first_event_beside_an_import_of_its_address_finds_the_imported_contact(store):
    """The other way round: the event's writer waits for the import's uncommitted contact and
    then finds it (an import slice holds its transaction as the first writer here)."""
    def imported(conn) -> None:
        conn.execute(contact_t.insert().values(email=ADA, first_name="Ada", lifecycle_stage="lead", score=0.0,
                                               attributes={}, created_at=NOW, updated_at=NOW))

    second = race(store, imported, lambda: track_records(store, [event("e-1")], now=NOW))
    assert second.inserted == 1 and not second.errors
    (ada,) = contacts(store)
    assert ada.first_name == "Ada" and events_of(store) == {"e-1": ada.id}


def test_many_writers_of_one_new_address_at_once_make_one_contact_and_no_error(store):
    """Eight writers released together (no forced order): every one succeeds, one contact."""
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        start.wait()
        try:
            track_records(store, [event(f"e-{i}")], now=NOW)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(contact_t)).scalar() == 1
        assert conn.execute(select(func.count(func.distinct(event_t.c.contact_id)))).scalar() == 1
        assert conn.execute(select(func.count()).select_from(event_t)).scalar() == 8

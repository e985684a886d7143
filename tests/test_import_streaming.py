"""Specification: `import contacts` and `track FILE` stream a file through in slices
(IMPORT_CHUNK contacts, TRACK_CHUNK events, each slice its own transaction), and the end state
is the one a single pass over the whole file gives: contacts, merged duplicates (later values
win, attributes merge) across slices, the file-wide "also on line N" conflict, erased people
refused, the current consent, errors and warnings by line. A failure midway keeps the slices
written, and a rerun of the file completes the import. The slices are shrunk to a few rows, so
every boundary falls between rows that matter. SQLite, and PostgreSQL where the writes differ
(new contacts in one statement, ids read back by identifier)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from sqlalchemy import select

import nurture.ingest as ingest
from nurture.consent_ledger import suppress
from nurture.ingest import import_contacts, track_file
from nurture.privacy.tombstones import ERASED_REASON, subject_hash
from nurture.store.db import open_store
from nurture.store.tables import consent_t, contact_t, event_t
from tests.conftest import utc

NOW = utc(2026, 5, 4, 10)
ONE_PASS = 1_000_000  # a slice larger than any file here: the unsliced semantics

CONTACTS = """\
email,external_id,first_name,timezone,plan,consent_email
ann@example.com,,Ann,Europe/Berlin,free,granted
bob@example.com,B-1,Bob,Mars/Olympus,pro,pending
,B-2,Bea,,,revoked
not-an-email,,Nobody,,,
ann@example.com,,Anne,,gold,revoked
cid@example.com,,Cid,,,granted
bob@example.com,B-9,Bobby,,,
,B-1,,,team,granted
dan@example.com,,Dan,,,granted
zed@example.com,,Zed,,,granted
cid@example.com,,,Europe/Paris,,
"""


@pytest.fixture
def new_store(sqlite_template, tmp_path):
    """new_store(name) -> a fresh migrated SQLite store (several per test, to compare)."""
    stores = []

    def make(name: str = "nurture"):
        path = tmp_path / f"{name}.db"
        shutil.copyfile(sqlite_template, path)
        stores.append(open_store(f"sqlite:///{path}"))
        return stores[-1]
    yield make
    for s in stores:
        s.dispose()


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def contacts(store) -> list[tuple]:
    with store.reading() as conn:
        return sorted((r.email or "", r.external_id or "", r.first_name, r.timezone, json.dumps(r.attributes,
                                                                                             sort_keys=True))
                      for r in conn.execute(select(contact_t)))


def current_consent(store) -> dict[tuple[str, str], str]:
    """(contact's e-mail or external id, channel) -> the ledger's latest status."""
    with store.reading() as conn:
        who = {r.id: r.email or r.external_id for r in conn.execute(select(contact_t))}
        latest: dict[tuple[str, str], str] = {}
        for row in conn.execute(select(consent_t).order_by(consent_t.c.recorded_at, consent_t.c.id)):
            latest[(who[row.contact_id], row.channel)] = row.status
    return latest


def lines(messages) -> list[str]:
    return [str(m) for m in messages]


def imported(store, path, chunk, monkeypatch, read_aside=False):
    monkeypatch.setattr(ingest, "IMPORT_CHUNK", chunk)
    monkeypatch.setattr(ingest, "READ_ASIDE_BYTES", 0 if read_aside else 1 << 40)
    if read_aside:  # whatever threads other tests of this session left running
        monkeypatch.setattr(ingest.threading, "active_count", lambda: 1)
    return import_contacts(store, path, now=NOW)


ONE_PASS_CONTACTS = [("", "B-2", "Bea", None, "{}"),
                     ("ann@example.com", "", "Anne", "Europe/Berlin", json.dumps({"plan": "gold"})),
                     ("bob@example.com", "B-1", "Bob", None, json.dumps({"plan": "team"})),
                     ("cid@example.com", "", "Cid", "Europe/Paris", "{}"),
                     ("dan@example.com", "", "Dan", None, "{}"), ("zed@example.com", "", "Zed", None, "{}")]


@pytest.mark.parametrize("read_aside", [False, True], ids=["in-process", "read-aside"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
def test_a_file_imported_in_slices_ends_as_one_pass_over_it_would(new_store, tmp_path, monkeypatch, chunk,
                                                                  read_aside):
    path = write(tmp_path, "contacts.csv", CONTACTS)
    whole, sliced = new_store("whole"), new_store("sliced")
    expected = imported(whole, path, ONE_PASS, monkeypatch)
    got = imported(sliced, path, chunk, monkeypatch, read_aside)
    assert contacts(sliced) == contacts(whole)
    assert current_consent(sliced) == current_consent(whole)
    assert lines(got.errors) == lines(expected.errors)
    assert lines(got.warnings) == lines(expected.warnings)
    assert (got.created, got.updated) == (expected.created, expected.updated) == (6, 0)
    # what one pass gives, spelled out: Ann's later row wins and the attributes merge; the empty
    # cells of Bob's and Cid's later rows change nothing …
    assert contacts(sliced) == ONE_PASS_CONTACTS
    assert current_consent(sliced)[("ann@example.com", "email")] == "revoked"
    # … and an e-mail on two rows with different keys is an error of the later row, slices apart
    assert "contacts.csv:8: email: 'bob@example.com' is also on line 3 with another external_id ('B-1')" in lines(
        got.errors)
    assert [e.line for e in got.errors] == [5, 8]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_file_imported_in_slices_into_postgres_ends_as_one_pass_would(store, tmp_path, monkeypatch):
    path = write(tmp_path, "contacts.csv", CONTACTS)
    first = imported(store, path, 2, monkeypatch)
    assert contacts(store) == ONE_PASS_CONTACTS
    assert current_consent(store) == {("ann@example.com", "email"): "revoked", ("bob@example.com", "email"): "granted",
                                      ("B-2", "email"): "revoked", ("cid@example.com", "email"): "granted",
                                      ("dan@example.com", "email"): "granted", ("zed@example.com", "email"): "granted"}
    assert (first.created, first.updated, [e.line for e in first.errors]) == (6, 0, [5, 8])
    with store.reading() as conn:
        created = set(conn.execute(select(contact_t.c.created_at)).scalars())
    assert created == {NOW}
    again = imported(store, path, 4, monkeypatch)
    assert (again.created, again.updated) == (0, 6) and contacts(store) == ONE_PASS_CONTACTS


MOVED = ("external_id,email,first_name,consent_email\n"
         "X,new@example.com,,granted\n"  # Xavier's e-mail changed …
         "Y,yan@example.com,Yan,granted\n"
         ",old@example.com,Olga,revoked\n"  # … and his old one is Olga's now
         "X,,Xavi,\n")


@pytest.mark.parametrize("chunk", [1, 2, 3, ONE_PASS])
def test_an_email_a_row_moves_away_is_free_for_a_later_row_in_any_slice(store, tmp_path, monkeypatch, chunk):
    """Rows of one slice are matched together, before any is written: the later row naming
    Xavier's old e-mail was matched to him, and wrote Olga's name and that e-mail over his
    record. A slice where two keys match one contact is written as two, split at the later
    row, which then finds the e-mail free — as rows taken one at a time do."""
    imported(store, write(tmp_path, "crm.csv", "external_id,email,first_name\nX,old@example.com,Xavier\n"),
             ONE_PASS, monkeypatch)
    result = imported(store, write(tmp_path, "people.csv", MOVED), chunk, monkeypatch)
    assert contacts(store) == [("new@example.com", "X", "Xavi", None, "{}"),
                               ("old@example.com", "", "Olga", None, "{}"),
                               ("yan@example.com", "Y", "Yan", None, "{}")]
    assert current_consent(store) == {("new@example.com", "email"): "granted",
                                      ("yan@example.com", "email"): "granted",
                                      ("old@example.com", "email"): "revoked"}
    assert (result.created, result.updated, result.errors) == (2, 1, [])


def test_rows_that_agree_on_the_identifier_they_match_by_keep_their_slice_whole(store, tmp_path, monkeypatch):
    """Rows under different keys matching one contact by an identifier none of them changes (a
    switchboard phone) match it row by row too: their slice is written once, not split at each."""
    imported(store, write(tmp_path, "crm.csv", "email,phone\nhq@example.com,+4930123456\n"), ONE_PASS, monkeypatch)
    writes = []
    real_write = ingest._write_contacts
    monkeypatch.setattr(ingest, "_write_contacts", lambda *a, **k: writes.append(1) or real_write(*a, **k))
    rows = "".join(f"E{i},+4930123456,Name{i}\n" for i in range(50))
    result = imported(store, write(tmp_path, "b2b.csv", "external_id,phone,first_name\n" + rows), ONE_PASS,
                      monkeypatch)
    assert len(writes) == 1 and (result.created, result.updated) == (0, 50)


def test_a_contact_the_file_names_again_slices_later_is_updated_and_counted_once(new_store, tmp_path, monkeypatch):
    store = new_store()
    path = write(tmp_path, "people.csv", "email,first_name,tier\n"
                 "ann@example.com,Ann,1\nbob@example.com,Bob,\ncid@example.com,Cid,\nann@example.com,,3\n")
    result = imported(store, path, 2, monkeypatch)
    assert (result.created, result.updated) == (3, 0)
    assert contacts(store)[0] == ("ann@example.com", "", "Ann", None, json.dumps({"tier": 3}))
    again = imported(store, path, 2, monkeypatch)  # a rerun: every contact known, each updated once
    assert (again.created, again.updated) == (0, 3)
    assert contacts(store)[0] == ("ann@example.com", "", "Ann", None, json.dumps({"tier": 3}))


def test_an_erased_person_is_refused_in_whichever_slice_they_come(new_store, tmp_path, monkeypatch):
    store = new_store()
    with store.engine.begin() as conn:
        suppress(conn, reason=ERASED_REASON, at=NOW, address=subject_hash("gone@example.com"))
    path = write(tmp_path, "people.csv", "email\nann@example.com\nbob@example.com\ngone@example.com\n"
                                          "cid@example.com\n")
    result = imported(store, path, 2, monkeypatch)
    assert [(e.line, e.field) for e in result.errors] == [(4, "email")]
    assert result.erased == 1 and result.created == 3
    assert "gone@example.com" not in {c[0] for c in contacts(store)}


def test_an_import_that_fails_midway_keeps_its_written_slices_and_a_rerun_completes_it(
        new_store, tmp_path, monkeypatch):
    path = write(tmp_path, "contacts.csv", CONTACTS)
    whole, broken = new_store("whole"), new_store("broken")
    imported(whole, path, ONE_PASS, monkeypatch)
    real, calls = ingest.append_consents, []

    def failing_on_the_second_slice(conn, entries):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(conn, entries)
    monkeypatch.setattr(ingest, "append_consents", failing_on_the_second_slice)
    with pytest.raises(RuntimeError, match="disk full"):
        imported(broken, path, 3, monkeypatch, read_aside=True)
    assert [c[0] or c[1] for c in contacts(broken)] == ["B-2", "ann@example.com", "bob@example.com"]  # slice 1
    monkeypatch.setattr(ingest, "append_consents", real)
    imported(broken, path, 3, monkeypatch, read_aside=True)
    assert contacts(broken) == contacts(whole)
    assert current_consent(broken) == current_consent(whole)


class Rendezvous:
    """append_consents of the import's slices, held: the slice whose contacts include `holder`
    waits there (at most WAIT s) until `arrives` is seen — the slice after it, at the same
    point or at `_match_contacts` — then does `then` (write, or raise). `met`: whether it did
    not have to give up waiting, i.e. the two slices were being written at once."""
    WAIT = 5.0

    def __init__(self, monkeypatch, holder: str, arrives: str, then=None, at_match: bool = False):
        import threading
        self.seen, self.met, self.holder, self.arrives, self.then = threading.Event(), None, holder, arrives, then
        real_append, real_match = ingest.append_consents, ingest._match_contacts

        def append_consents(conn, entries):
            entries = list(entries)
            emails = self.emails(conn, [e["contact_id"] for e in entries])
            if self.arrives in emails and not at_match:
                self.seen.set()
            if self.holder in emails and self.met is None:
                self.met = self.seen.wait(self.WAIT)
                if self.then is not None:
                    self.then()
            return real_append(conn, entries)

        def match_contacts(rows, holders):
            if at_match and any(r.fields.get("email") == self.arrives for r in rows.values()):
                self.seen.set()
            return real_match(rows, holders)
        monkeypatch.setattr(ingest, "append_consents", append_consents)
        monkeypatch.setattr(ingest, "_match_contacts", match_contacts)

    @staticmethod
    def emails(conn, ids) -> set[str]:
        return set(conn.execute(select(contact_t.c.email).where(contact_t.c.id.in_(ids))).scalars())


PEOPLE = "email,first_name,consent_email\n" + "".join(f"p{i}@example.com,P{i},granted\n" for i in range(1, 7))


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgres_a_slice_of_new_contacts_is_written_beside_the_one_before_it(store, tmp_path, monkeypatch):
    path = write(tmp_path, "people.csv", PEOPLE)
    meeting = Rendezvous(monkeypatch, holder="p1@example.com", arrives="p3@example.com")
    result = imported(store, path, 2, monkeypatch, read_aside=True)
    assert meeting.met  # slice 2 reached its consents while slice 1 had not committed
    assert (result.created, result.consents, result.errors) == (6, 6, [])
    assert [c[0] for c in contacts(store)] == [f"p{i}@example.com" for i in range(1, 7)]
    assert set(current_consent(store).values()) == {"granted"}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgres_a_slice_written_beside_one_that_fails_is_rolled_back_with_it(store, tmp_path, monkeypatch):
    path = write(tmp_path, "people.csv", PEOPLE)

    def disk_full():
        raise RuntimeError("disk full")
    meeting = Rendezvous(monkeypatch, holder="p3@example.com", arrives="p5@example.com", then=disk_full)
    with pytest.raises(RuntimeError, match="disk full"):
        imported(store, path, 2, monkeypatch, read_aside=True)
    assert meeting.met  # slice 3 was being written while slice 2 failed …
    # … and what the failure leaves is the slices before it: slice 1, not slice 3
    assert [c[0] for c in contacts(store)] == ["p1@example.com", "p2@example.com"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgres_a_slice_beside_one_that_frees_an_email_it_matched_is_written_again_after_it(
        store, new_store, tmp_path, monkeypatch):
    """Slice 1 moves contact X from old@ to new@; slice 2, written beside it, names old@. Read
    before slice 1's commit, old@ still matched X: slice 2 waits for that commit and is written
    again, to a new contact — as slices written one after the other do, and one pass over the
    file — not over X's new e-mail."""
    crm = write(tmp_path, "crm.csv", "external_id,email,first_name\nX,old@example.com,Xavier\n")
    path = write(tmp_path, "people.csv", "external_id,email,first_name,consent_email\n"
                 "X,new@example.com,,granted\n,old@example.com,Olga,granted\n")
    serial = new_store("serial")  # one pass over the file (SQLite)
    imported(serial, crm, ONE_PASS, monkeypatch)
    one_by_one = imported(serial, path, ONE_PASS, monkeypatch)
    imported(store, crm, ONE_PASS, monkeypatch)
    writes = []
    real_write = ingest._write_contacts
    monkeypatch.setattr(ingest, "_write_contacts", lambda *a, **k: writes.append(1) or real_write(*a, **k))
    meeting = Rendezvous(monkeypatch, holder="new@example.com", arrives="old@example.com", at_match=True)
    result = imported(store, path, 1, monkeypatch)
    assert meeting.met and len(writes) == 3  # slice 2 read X's old@, and was written once more
    assert contacts(store) == contacts(serial) == [("new@example.com", "X", "Xavier", None, "{}"),
                                                   ("old@example.com", "", "Olga", None, "{}")]
    assert current_consent(store) == current_consent(serial)
    assert (result.created, result.updated) == (one_by_one.created, one_by_one.updated) == (1, 1)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgres_a_written_slice_leaves_nothing_for_the_cyclic_collector(store, tmp_path, monkeypatch):
    """Two slices written at once keep the collector paused (nurture.runtime.gc_pause) from the
    first slice of a file to its last: what a slice leaves behind must go by reference
    counting. A slice's rows bound into a SQLAlchemy statement (whose objects hold cycles)
    stayed until the collector ran — 1.2 GB at a million contacts."""
    import gc
    path = write(tmp_path, "people.csv", "email,first_name,consent_email\n" + "".join(
        f"p{i}@example.com,P{i},granted\n" for i in range(600)))
    gc.collect()
    gc.disable()
    try:
        result = imported(store, path, 200, monkeypatch)
        left = gc.collect()
    finally:
        gc.enable()
    assert result.created == 600
    assert left < 100  # (the statements compiled once, the pool's threads; not a row's dict)


def test_the_consent_of_a_row_whose_email_a_later_row_moves_is_recorded(store, tmp_path, monkeypatch):
    """Ann's row (by e-mail) and then her CRM row (by external id, with her new e-mail) in one
    slice: both are hers. On PostgreSQL the rows' contacts were looked up again by identifier
    after the updates — Ann's old e-mail then named nobody, and her consent was not written."""
    imported(store, write(tmp_path, "crm.csv", "external_id,email,first_name\nX1,ann@example.com,Ann\n"),
             ONE_PASS, monkeypatch)
    result = imported(store, write(tmp_path, "people.csv", "external_id,email,consent_email\n"
                                   ",ann@example.com,granted\nX1,ann@new.example.com,\n"), ONE_PASS, monkeypatch)
    assert (result.created, result.updated, result.consents) == (0, 2, 1)
    assert contacts(store) == [("ann@new.example.com", "X1", "Ann", None, "{}")]
    assert current_consent(store) == {("ann@new.example.com", "email"): "granted"}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgres_a_contact_erased_while_its_slice_is_written_gets_nothing_written(store, tmp_path, monkeypatch):
    """The erasure commits after the slice matched Ann (PostgreSQL: no write lock held): her
    row is not written to her record, nor her consent to the ledger; Bob's row is."""
    imported(store, write(tmp_path, "crm.csv", "email,first_name\nann@example.com,Ann\n"), ONE_PASS, monkeypatch)
    with store.reading() as conn:
        ann = conn.execute(select(contact_t.c.id)).scalar_one()
    real_insert = ingest._insert_contacts

    def erased_meanwhile(conn, rows, now):
        with store.engine.begin() as other:  # another connection: the erasure of Ann, committed
            suppress(other, reason=ERASED_REASON, at=NOW, contact_id=ann, address=subject_hash("ann@example.com"))
            other.execute(contact_t.update().where(contact_t.c.id == ann).values(email=None, first_name=None))
        return real_insert(conn, rows, now)
    monkeypatch.setattr(ingest, "_insert_contacts", erased_meanwhile)
    imported(store, write(tmp_path, "people.csv", "email,first_name,consent_email\n"
                          "ann@example.com,Anne,granted\nbob@example.com,Bob,granted\n"), ONE_PASS, monkeypatch)
    with store.reading() as conn:
        assert conn.execute(select(contact_t.c.email, contact_t.c.first_name).where(contact_t.c.id == ann)).one() == (
            None, None)
        assert conn.execute(select(consent_t.c.id).where(consent_t.c.contact_id == ann)).all() == []
    assert current_consent(store) == {("bob@example.com", "email"): "granted"}


def mixed_file(seed: int, rows: int = 1_200) -> str:
    """A file of new people, known people (some under another key than their record's), moved
    e-mails, shared phones, repeated rows and consent changes, in a random order."""
    import random
    rng = random.Random(seed)
    lines = ["external_id,email,phone,first_name,consent_email"]
    for i in range(rows):
        person = rng.randrange(rows // 2)
        roll = rng.random()
        external = f"X{person}" if roll < 0.5 else ""
        email = f"p{person}@example.com" if roll > 0.2 else (f"moved{person}@example.com" if external else "")
        phone = f"+49301{rng.randrange(50):04d}" if roll < 0.3 else ""
        if not (external or email or phone):
            email = f"p{person}@example.com"
        lines.append(f"{external},{email},{phone},N{i},{rng.choice(['granted', 'revoked', ''])}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("seed", [1, 2])
def test_on_postgres_slices_written_at_once_end_as_slices_written_one_by_one(store, new_store, tmp_path,
                                                                            monkeypatch, seed):
    """Differential: the same known contacts, then a mixed file in slices of 50 — on PostgreSQL
    (slices beside each other where nothing ties them) and on SQLite (one after the other)."""
    known = write(tmp_path, "known.csv", "external_id,email,first_name\n" + "".join(
        f"X{i},p{i}@example.com,Known{i}\n" for i in range(0, 600, 3)))
    path = write(tmp_path, "mixed.csv", mixed_file(seed))
    serial = new_store("serial")
    results = []
    for target in (serial, store):
        imported(target, known, ONE_PASS, monkeypatch)
        results.append(imported(target, path, 50, monkeypatch, read_aside=True))
    assert contacts(store) == contacts(serial)
    assert current_consent(store) == current_consent(serial)
    got, expected = results[1], results[0]
    assert (got.created, got.updated, got.consents) == (expected.created, expected.updated, expected.consents)
    assert lines(got.errors) == lines(expected.errors)


def events_file(tmp_path, n: int, extra: str = ""):
    rows = [json.dumps({"event_id": f"e{i}", "email": f"u{i % 3}@example.com", "event": "signup",
                        "timestamp": "2026-05-01T10:00:00Z"}) for i in range(n)]
    rows.insert(2, "{not json")
    rows.insert(5, json.dumps({"event_id": "e1", "email": "u1@example.com", "event": "signup",
                               "timestamp": "2026-05-01T10:00:00Z"}))  # a duplicate of line 2's event, slices later
    rows.insert(7, json.dumps({"event_id": "bad", "email": "x@example.com", "event": "signup"}))
    return write(tmp_path, "events.jsonl", "\n".join(rows) + "\n" + extra)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_a_file_tracked_in_slices_stores_what_one_pass_would(new_store, tmp_path, monkeypatch, chunk):
    path = events_file(tmp_path, 9)
    whole, sliced = new_store("whole"), new_store("sliced")
    monkeypatch.setattr(ingest, "TRACK_CHUNK", ONE_PASS)
    expected = track_file(whole, path, now=NOW)
    monkeypatch.setattr(ingest, "TRACK_CHUNK", chunk)
    got = track_file(sliced, path, now=NOW)
    assert (got.inserted, got.duplicates) == (expected.inserted, expected.duplicates) == (9, 1)
    assert lines(got.errors) == lines(expected.errors) == [
        "events.jsonl:3: line: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "events.jsonl:8: timestamp: required"]
    assert sorted(got.inserted_ids) == sorted(expected.inserted_ids)

    def stored(store):
        with store.reading() as conn:
            return sorted(conn.execute(select(event_t.c.event_id, contact_t.c.email, event_t.c.received_at).join(
                contact_t, contact_t.c.id == event_t.c.contact_id)).all())
    assert stored(sliced) == stored(whole)
    assert len({c[0] for c in contacts(sliced)}) == 3  # each address's contact created once, not per slice


# A BOM, CR LF and a lone CR (split across blocks of a few bytes), a quoted line break, a
# character of four bytes, U+2028 (no line break to JSON nor to this reader), bytes that are
# not UTF-8, an empty line and no newline at the end.
TRICKY = ("\ufeffemail,name\r\nann@example.com,\"Ann\r\nLine two\"\r\nbob@example.com,Bj\u00f6rn \u2028x\r"
          "cid@example.com,\U0001F600\n").encode() + b"dan@example.com,\xff\xfe bad\r\n\r\n\neve@example.com,no newline"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 64])
def test_a_utf8_file_read_a_block_at_a_time_reads_as_the_whole_file_decoded_at_once(tmp_path, monkeypatch, suffix,
                                                                                    block):
    path = tmp_path / f"people{suffix}"
    data = TRICKY if suffix == ".csv" else b"\n".join(
        json.dumps({"line": n, "text": t}).encode() for n, t in enumerate(["a\u2028b", "\u00e9\r", "x"])
    ).replace(b"\\r", b"\r\n") + b"\r\n\xff{\"bad\": 1}\r\r\n{\"end\": \"\xc3\xa9\"}"
    path.write_bytes(data)
    text = data.decode("utf-8-sig", "surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
    assert "".join(ingest._utf8_lines(path)) == text
    monkeypatch.setattr(ingest, "_READ_BLOCK", 1 << 20)
    whole = list(ingest.read_records(path))
    monkeypatch.setattr(ingest, "_READ_BLOCK", block)
    assert list(ingest.read_records(path)) == whole
    assert len(whole) >= 3


def test_a_file_the_reading_process_cannot_read_fails_the_import_with_its_error(new_store, tmp_path, monkeypatch):
    path = write(tmp_path, "contacts.csv", CONTACTS)

    def broken_cleaning(record):
        raise ValueError(f"cannot clean {record['first_name']} (process {os.getpid()})")
    monkeypatch.setattr(ingest, "_clean_contact", broken_cleaning)
    monkeypatch.setattr(ingest.threading, "active_count", lambda: 1)  # whatever else this test session runs
    with pytest.raises(ValueError, match="cannot clean Ann") as raised:
        imported(new_store(), path, 2, monkeypatch, read_aside=True)
    assert f"(process {os.getpid()})" not in str(raised.value)  # it was read aside

"""Specification: bringing data in. Contacts from CSV or JSONL — upsert by e-mail, unknown
columns to attributes (numbers coerced), consent columns to the ledger with the import as
source, a bad row named by line and field while the good rows are kept; events from JSONL —
idempotent by event_id, bad lines named. On SQLite and PostgreSQL."""
from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from nurture.ingest import import_contacts, track_file
from nurture.store.tables import consent_t, contact_t, event_t
from tests.conftest import utc

NOW = utc(2026, 3, 4, 10, 0)


def rows(store, table, order=None):
    with store.engine.connect() as conn:
        result = conn.execute(select(table).order_by(order if order is not None else table.c.id)).all()
        conn.rollback()
    return result


def contacts_by_email(store) -> dict:
    return {r.email: r for r in rows(store, contact_t)}


CSV = """email,first_name,phone,country,timezone,plan,seats,ratio,vip,zip,consent_email,consent_sms
ann@example.com,Ann,+49 151 12345678,de,Europe/Berlin,pro,12,0.5,true,01234,granted,pending
not-an-address,Bob,,,,basic,3,,,,granted,
cy@example.com,Cy,12345,US,,basic,3,,,,,
dee@example.com,Dee,,FR,Mars/Olympus,,,,,,,
eve@example.com,Eve,,,,,,,,,maybe,
Fay@Example.com,Fay,,GB,Europe/London,,,,false,,revoked,
"""


def test_csv_import_keeps_the_good_rows_and_names_each_bad_row_by_line_and_field(store, tmp_path):
    """A row without a usable identifier, or with a bad consent, is skipped; a bad optional
    field (a phone that is no number, an unknown time zone) is left out and the person kept."""
    path = tmp_path / "contacts.csv"
    path.write_text(CSV, encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    errors = [str(e) for e in result.errors]
    assert [e.split(": ")[0:2] for e in errors] == [
        ["contacts.csv:3", "email"],
        ["contacts.csv:6", "consent_email"],
    ]
    assert "'maybe' is not one of granted, revoked, pending" in errors[1]
    assert [str(w).split(": ")[0:2] for w in result.warnings] == [["contacts.csv:4", "phone"],
                                                                 ["contacts.csv:5", "timezone"]]
    assert (result.created, result.updated) == (4, 0)
    people = contacts_by_email(store)
    assert sorted(people) == ["ann@example.com", "cy@example.com", "dee@example.com", "fay@example.com"]
    assert (people["cy@example.com"].phone, people["dee@example.com"].timezone) == (None, None)


def test_nothing_in_a_csv_is_lost_without_a_word(store, tmp_path):
    """csv's lenient reader lost rows silently (exit 0): a column named twice (the later cell
    won, the other address vanished), a quote never closed (every later row became one first
    name), cells past the header's (dropped), `"a"b` (read as `ab`). Each is now an error of
    its line, which is the line a record starts on (a quoted cell may span several)."""
    def problems(name, text):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        result = import_contacts(store, path, now=NOW)
        return [str(e) for e in result.errors], result.created

    assert problems("twice.csv", "email,first_name,Email ,email\nfirst@example.com,F,x,second@example.com\n") == (
        ["twice.csv:1: header: the column 'email' appears more than once (columns 1, 4): rename or remove one"], 0)
    assert problems("open.csv", 'email,first_name\nn@example.com,"never closed\no@example.com,O\np@example.com,P\n') == (
        ["open.csv:2: line: a quoted cell is never closed: nothing from this line to the end of the file could be read"],
        0)
    errors, created = problems("ragged.csv", "email,first_name\nr@example.com,R,extra\ns@example.com,S,,\n"
                                             'q@example.com,"Multi\nline",\nt@example.com,"a"b\nu@example.com,U\n')
    assert errors == ["ragged.csv:2: line: 3 cells, but the header names 2 columns",
                      "ragged.csv:6: line: not valid CSV (',' expected after '\"')"]
    assert created == 3  # s (Excel's trailing empty cells are no data), q, u
    assert contacts_by_email(store)["q@example.com"].first_name == "Multi line"


def test_import_normalizes_fields_and_sends_unknown_columns_to_typed_attributes(store, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(CSV, encoding="utf-8")
    import_contacts(store, path, now=NOW)
    ann = contacts_by_email(store)["ann@example.com"]
    assert (ann.first_name, ann.phone, ann.country, ann.timezone) == ("Ann", "+4915112345678", "DE", "Europe/Berlin")
    assert ann.attributes["plan"] == "pro"
    assert ann.attributes["seats"] == 12 and isinstance(ann.attributes["seats"], int)
    assert ann.attributes["ratio"] == 0.5
    assert ann.attributes["vip"] is True
    assert contacts_by_email(store)["fay@example.com"].attributes == {"vip": False}


def test_a_number_with_a_leading_zero_stays_text(store, tmp_path):
    """A ZIP code or customer number like 01234 is an identifier, not the number 1234."""
    path = tmp_path / "contacts.csv"
    path.write_text(CSV, encoding="utf-8")
    import_contacts(store, path, now=NOW)
    assert contacts_by_email(store)["ann@example.com"].attributes["zip"] == "01234"


def test_a_number_too_small_for_a_float_stays_text_instead_of_becoming_zero(store, tmp_path):
    # 1e-400 was stored as 0.0 without a word (1e400 is refused by line and field)
    path = tmp_path / "c.csv"
    path.write_text("email,ratio\nann@example.com,1e-400\nbob@example.com,-2.5e-999\ncy@example.com,0.0e5\n",
                    encoding="utf-8")
    assert import_contacts(store, path, now=NOW).errors == []
    ratios = {email: c.attributes["ratio"] for email, c in contacts_by_email(store).items()}
    assert ratios == {"ann@example.com": "1e-400", "bob@example.com": "-2.5e-999", "cy@example.com": 0.0}


def test_consent_columns_go_to_the_ledger_with_the_import_as_source(store, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(CSV, encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    ids = {r.email: r.id for r in rows(store, contact_t)}
    ledger = {(r.contact_id, r.channel): (r.status, r.source, r.confirmed_at) for r in rows(store, consent_t)}
    assert ledger == {
        (ids["ann@example.com"], "email"): ("granted", "import:contacts.csv", NOW),
        (ids["ann@example.com"], "sms"): ("pending", "import:contacts.csv", None),
        (ids["fay@example.com"], "email"): ("revoked", "import:contacts.csv", None),
    }
    assert result.consents == 3


def test_import_upserts_by_email_and_merges_attributes(store, tmp_path):
    first = tmp_path / "first.csv"
    first.write_text("email,first_name,plan,seats\nann@example.com,Ann,pro,12\n", encoding="utf-8")
    import_contacts(store, first, now=NOW)
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"email": "ANN@Example.com", "last_name": "Lee", "seats": 20, "industry": "retail"})
                      + "\n" + json.dumps({"email": "bob@example.com", "first_name": "Bob"}) + "\n", encoding="utf-8")
    result = import_contacts(store, second, now=NOW + timedelta(days=1))
    assert (result.created, result.updated, result.errors) == (1, 1, [])
    people = contacts_by_email(store)
    assert sorted(people) == ["ann@example.com", "bob@example.com"]
    ann = people["ann@example.com"]
    assert (ann.first_name, ann.last_name) == ("Ann", "Lee")  # columns missing from the file are kept
    assert ann.attributes == {"plan": "pro", "seats": 20, "industry": "retail"}
    assert ann.updated_at == NOW + timedelta(days=1) and ann.created_at == NOW


def test_a_null_in_jsonl_attributes_changes_nothing_as_a_top_level_null_does(store, tmp_path):
    """docs/import.md: `null` in JSONL is as if the field were missing; inside `attributes`
    it overwrote the attribute with null."""
    first = tmp_path / "first.jsonl"
    first.write_text('{"email": "a@example.com", "plan": "pro", "attributes": {"tier": "gold", "seats": 3}}\n')
    second = tmp_path / "second.jsonl"
    second.write_text('{"email": "a@example.com", "plan": null, "attributes": {"tier": null, "seats": 4}}\n')
    import_contacts(store, first, now=NOW)
    assert import_contacts(store, second, now=NOW).errors == []
    assert contacts_by_email(store)["a@example.com"].attributes == {"plan": "pro", "tier": "gold", "seats": 4}


def test_jsonl_import_names_bad_lines(store, tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text('{"email": "ann@example.com"}\n{"email": "bob@example.com",\n["not", "an", "object"]\n'
                    '{"first_name": "NoMail"}\n', encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    errors = [str(e) for e in result.errors]
    assert errors[0].startswith("contacts.jsonl:2: line: not valid JSON")
    assert errors[1] == "contacts.jsonl:3: line: each line must be a JSON object"
    assert errors[2] == "contacts.jsonl:4: email: required (contacts are matched by e-mail)"
    assert list(contacts_by_email(store)) == ["ann@example.com"]


EVENTS = [
    {"event_id": "e1", "email": "ann@example.com", "event": "signup", "properties": {"source": "ads"},
     "timestamp": "2026-03-04T09:00:00Z"},
    {"event_id": "e2", "email": "new@example.com", "event": "add_to_cart", "properties": {"cart_value": 42.5},
     "timestamp": "2026-03-04T11:30:00+02:00"},
    {"event_id": "e3", "email": "ann@example.com", "event": "purchase", "timestamp": 1772618400},
]


def write_events(tmp_path, extra_lines: str = "") -> object:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in EVENTS) + "\n" + extra_lines, encoding="utf-8")
    return path


def test_track_inserts_events_and_creates_unknown_contacts(store, tmp_path):
    result = track_file(store, write_events(tmp_path), now=NOW)
    assert (result.inserted, result.duplicates, result.errors) == (3, 0, [])
    ids = {r.email: r.id for r in rows(store, contact_t)}
    assert sorted(ids) == ["ann@example.com", "new@example.com"]
    events = {r.event_id: r for r in rows(store, event_t)}
    assert events["e1"].contact_id == ids["ann@example.com"] and events["e1"].properties == {"source": "ads"}
    assert events["e2"].occurred_at == utc(2026, 3, 4, 9, 30)  # offsets become UTC
    assert events["e3"].occurred_at == utc(2026, 3, 4, 10, 0)  # epoch seconds
    assert events["e3"].properties == {}


def test_tracking_the_same_file_twice_adds_nothing(store, tmp_path):
    path = write_events(tmp_path)
    track_file(store, path, now=NOW)
    again = track_file(store, path, now=NOW + timedelta(hours=1))
    assert (again.inserted, again.duplicates) == (0, 3)
    assert len(rows(store, event_t)) == 3


def test_a_repeated_event_id_within_one_file_is_stored_once(store, tmp_path):
    path = write_events(tmp_path, json.dumps(EVENTS[0]) + "\n")
    result = track_file(store, path, now=NOW)
    assert (result.inserted, result.duplicates) == (3, 1)


def test_track_names_bad_lines_and_fields_and_keeps_the_good_events(store, tmp_path):
    bad = ('{"event_id": "e4", "email": "ann@example.com", "event": "x"\n'
           '{"event_id": "e5", "email": "ann@example.com", "timestamp": "2026-03-04T10:00:00Z"}\n'
           '{"event_id": "e6", "email": "ann@example.com", "event": "x", "timestamp": "yesterday"}\n'
           '{"event_id": "e7", "email": "ann@example.com", "event": "x", "timestamp": "2026-03-04T10:00:00Z", '
           '"properties": [1, 2]}\n')
    result = track_file(store, write_events(tmp_path, bad), now=NOW)
    errors = [str(e) for e in result.errors]
    assert errors[0].startswith("events.jsonl:4: line: not valid JSON")
    assert errors[1:] == [
        "events.jsonl:5: event: required",
        "events.jsonl:6: timestamp: 'yesterday' is not an ISO 8601 timestamp",
        "events.jsonl:7: properties: must be a JSON object",
    ]
    assert result.inserted == 3
    assert sorted(r.event_id for r in rows(store, event_t)) == ["e1", "e2", "e3"]


def test_the_fast_path_for_plain_addresses_agrees_with_email_validator():
    """normalize_email checks plain addresses with a regular expression and leaves the rest to
    email-validator: wherever the fast path answers, the validator answers the same."""
    from email_validator import EmailNotValidError, validate_email
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nurture.ingest import _PLAIN_EMAIL, normalize_email

    label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
    address = st.builds(lambda local, labels, tld, upper: (f"{local}@{'.'.join(labels)}.{tld}".upper() if upper
                                                           else f"{local}@{'.'.join(labels)}.{tld}"),
                        st.from_regex(r"[a-z0-9_%+-]{1,12}(\.[a-z0-9_%+-]{1,8}){0,2}", fullmatch=True),
                        st.lists(label, min_size=1, max_size=3),
                        st.sampled_from(["com", "de", "io", "b", "test", "local", "xn", "museum"]), st.booleans())

    @settings(max_examples=60, deadline=None)
    @given(address)
    def agree(text):
        try:
            expected = validate_email(text, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            expected = None
        try:
            got = normalize_email(text)
        except ValueError:
            got = None
        assert got == expected, (text, got, expected)

    agree()
    assert _PLAIN_EMAIL.fullmatch("anna.k+news@mail.shop.example")

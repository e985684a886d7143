"""Issue 10, ingest side: hostile input at every door. Bad input gets a clear error naming the
line (or event) and field, the good rows/events in the same file or body are kept, the exit
code is non-zero, HTTP answers 4xx (never 500), and nothing that would break a later tick
(NaN/Infinity in JSON, absurd nesting, out-of-range times, NUL, lone surrogates, control
characters in names) reaches the store. On SQLite and PostgreSQL."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from nurture import ingest  # ingest.clean_name, ingest.MAX_NAME_LENGTH: read at call time
from nurture.ingest import import_contacts, track_file
from nurture.store.tables import contact_t, event_t, suppression_t
from tests.conftest import utc
from tests.engine_fixtures import subscriber
from tests.test_cli import nurture, project  # noqa: F401  (the CLI through its real entry point)
from tests.test_web_webhooks import HOOKS, INGEST, _post_twilio, site, twilio  # noqa: F401

NOW = utc(2026, 3, 4, 10, 0)


def good_event(event_id: str, **overrides) -> dict:
    return {"event_id": event_id, "email": "ann@example.com", "event": "add_to_cart",
            "properties": {"cart_value": 40}, "timestamp": "2026-03-04T09:00:00Z", **overrides}


def event_line(event_id: str, properties_json: str = '{"cart_value": 40}', timestamp_json: str = '"2026-03-04T09:00:00Z"') -> str:
    """A JSONL line written by hand: json.dumps cannot write what hostile producers write."""
    return (f'{{"event_id": "{event_id}", "email": "ann@example.com", "event": "add_to_cart", '
            f'"properties": {properties_json}, "timestamp": {timestamp_json}}}')


def errors_by_line(result) -> list[tuple[int, str]]:
    return [(e.line, e.field) for e in result.errors]


def stored_event_ids(store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(select(event_t.c.event_id)))


def contacts(store) -> dict:
    with store.engine.connect() as conn:
        return {r.email: r for r in conn.execute(select(contact_t))}


def nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# ---------------------------------------------------------------- 1. non-finite numbers, nesting


def test_track_refuses_nan_and_infinity_by_line_and_field_and_keeps_the_good_events(store, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([
        event_line("e1"),
        event_line("e2", '{"cart_value": NaN}'),
        event_line("e3", '{"cart_value": Infinity}'),
        event_line("e4", '{"items": [{"price": -Infinity}]}'),
        event_line("e5", '{"cart_value": 1e999}'),
        event_line("e6", '{"cart_value": 1' + "0" * 400 + "}"),
        event_line("e7", '{"cart_value": 12.5}'),
    ]) + "\n", encoding="utf-8")
    result = track_file(store, path, now=NOW)
    assert errors_by_line(result) == [(2, "properties.cart_value"), (3, "properties.cart_value"),
                                      (4, "properties.items[0].price"), (5, "properties.cart_value"),
                                      (6, "properties.cart_value")]
    assert "NaN is not a finite number" in str(result.errors[0])
    assert str(result.errors[0]).startswith("events.jsonl:2: properties.cart_value: ")
    assert result.inserted == 2 and stored_event_ids(store) == ["e1", "e7"]
    with store.engine.connect() as conn:  # the store's JSON stays readable by SQL
        values = conn.execute(select(event_t.c.properties["cart_value"].as_float()).order_by(event_t.c.id)).scalars().all()
    assert values == [40.0, 12.5]


def test_csv_numbers_that_overflow_to_infinity_are_refused_not_stored_as_inf(store, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("email,ltv,score\n"
                    "ann@example.com,12.5,3\n"
                    "bob@example.com,1e999,\n"
                    "cy@example.com,-1E999,\n"
                    "dee@example.com,NaN,inf\n"
                    "eve@example.com,1e3,\n", encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    assert errors_by_line(result) == [(3, "ltv"), (4, "ltv"), (5, "score")]
    assert "'1e999' is too large a number (it overflows to Infinity)" in str(result.errors[0])
    people = contacts(store)
    assert sorted(people) == ["ann@example.com", "eve@example.com"]
    assert people["ann@example.com"].attributes == {"ltv": 12.5} and people["eve@example.com"].attributes == {"ltv": 1000.0}


def test_jsonl_contacts_refuse_non_finite_attributes_and_scores(store, tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text('{"email": "ann@example.com", "ltv": 3}\n'
                    '{"email": "bob@example.com", "ltv": NaN}\n'
                    '{"email": "cy@example.com", "attributes": {"orders": [1, Infinity]}}\n'
                    '{"email": "dee@example.com", "score": -Infinity}\n', encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    assert errors_by_line(result) == [(2, "ltv"), (3, "attributes.orders[1]"), (4, "score")]
    assert sorted(contacts(store)) == ["ann@example.com"]


def test_absurd_nesting_is_one_bad_line_not_a_lost_file(store, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([
        event_line("e1"),
        event_line("e2", "[" * 50_000 + "]" * 50_000),
        event_line("e3", json.dumps(nested(33))),
        event_line("e4", json.dumps(nested(32))),  # 32 levels, properties itself the first: the limit, accepted
    ]) + "\n", encoding="utf-8")
    result = track_file(store, path, now=NOW)
    assert [e.line for e in result.errors] == [2, 3]
    assert result.errors[0].field == "line" and "nested" in result.errors[0].message
    assert result.errors[1].field.startswith("properties.a.a") and "nested deeper than 32 levels" in result.errors[1].message
    assert stored_event_ids(store) == ["e1", "e4"]

    contacts_path = tmp_path / "contacts.jsonl"
    contacts_path.write_text(json.dumps({"email": "deep@example.com", "tree": nested(40)}) + "\n"
                             + json.dumps({"email": "bob@example.com", "tree": nested(3)}) + "\n", encoding="utf-8")
    imported = import_contacts(store, contacts_path, now=NOW)
    assert [(e.line, e.field.split(".")[0]) for e in imported.errors] == [(1, "tree")]
    assert "deep@example.com" not in contacts(store) and contacts(store)["bob@example.com"].attributes == {"tree": nested(3)}


def test_nul_and_lone_surrogates_are_refused_by_field(store, tmp_path):
    """PostgreSQL refuses NUL in text and JSONB; a lone surrogate cannot be written as UTF-8."""
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([
        event_line("e1"),
        event_line("e2", '{"note": "a\\u0000b"}'),
        event_line("e3", '{"note": "\\ud83d"}'),
        '{"event_id": "e4", "email": "ann@example.com", "event": "a\\u0000b", "timestamp": "2026-03-04T09:00:00Z"}',
    ]) + "\n", encoding="utf-8")
    result = track_file(store, path, now=NOW)
    assert errors_by_line(result) == [(2, "properties.note"), (3, "properties.note"), (4, "event")]
    assert "NUL" in result.errors[0].message and "lone surrogate" in result.errors[1].message
    assert stored_event_ids(store) == ["e1"]


# ---------------------------------------------------------------- 2. encoding


GERMAN_EXCEL = "email,first_name,last_name\nann@example.com,Ann,Lee\nmax@example.com,Max,Müller\nzoe@example.com,Zoë,Ng\n"


def test_a_cp1252_csv_names_the_bad_lines_keeps_the_others_and_suggests_the_encoding(store, tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(GERMAN_EXCEL.encode("cp1252"))
    result = import_contacts(store, path, now=NOW)
    assert errors_by_line(result) == [(3, "last_name"), (4, "first_name")]
    assert "not valid UTF-8 (byte 0xfc" in result.errors[0].message and "--encoding cp1252" in result.errors[0].message
    assert sorted(contacts(store)) == ["ann@example.com"]

    again = import_contacts(store, path, now=NOW, encoding="cp1252")
    assert (again.created, again.updated, again.errors) == (2, 1, [])
    people = contacts(store)
    assert (people["max@example.com"].last_name, people["zoe@example.com"].first_name) == ("Müller", "Zoë")


def test_utf8_with_a_bom_and_a_cp1252_header(store, tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(GERMAN_EXCEL.encode("utf-8-sig"))
    assert import_contacts(store, bom, now=NOW).errors == []
    assert contacts(store)["max@example.com"].last_name == "Müller"
    header = tmp_path / "header.csv"
    header.write_bytes("email,Straße\nbob@example.com,Hauptstr. 1\n".encode("cp1252"))
    result = import_contacts(store, header, now=NOW)
    assert errors_by_line(result) == [(1, "header")] and "--encoding" in result.errors[0].message
    assert "bob@example.com" not in contacts(store)


def test_cli_import_of_a_cp1252_file_exits_1_without_a_traceback_then_imports_with_encoding(project, tmp_path):  # noqa: F811
    path = tmp_path / "export.csv"
    path.write_bytes(GERMAN_EXCEL.encode("cp1252"))
    first = nurture(project, "import", "contacts", str(path))  # asserts: no traceback
    assert first.returncode == 1 and "internal error" not in first.stderr
    assert "export.csv:3: last_name: not valid UTF-8" in first.stderr and "--encoding cp1252" in first.stderr
    assert "1 created" in first.stdout
    second = nurture(project, "import", "contacts", str(path), "--encoding", "cp1252")
    assert second.returncode == 0, second.stderr
    assert "2 created, 1 updated" in second.stdout
    wrong = nurture(project, "import", "contacts", str(path), "--encoding", "klingon")
    assert wrong.returncode == 2 and "unknown encoding 'klingon'" in wrong.stderr
    assert "--encoding" in nurture(project, "import", "contacts", "--help").stdout
    assert "--encoding" in nurture(project, "track", "--help").stdout


def test_a_spreadsheet_instead_of_its_csv_export_is_named(store, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    result = import_contacts(store, path, now=NOW)
    assert len(result.errors) == 1 and "Excel workbook" in result.errors[0].message


def test_a_csv_field_over_the_size_limit_is_one_bad_row(store, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text('email,note\nann@example.com,hi\nbob@example.com,"' + "x" * 200_000 + '"\ncy@example.com,yo\n',
                    encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    assert errors_by_line(result) == [(3, "line")] and "not valid CSV" in result.errors[0].message
    assert sorted(contacts(store)) == ["ann@example.com", "cy@example.com"]


# ---------------------------------------------------------------- 3. out-of-range times


@pytest.mark.parametrize("timestamp_json, words", [
    ("1e20", "outside the years"),
    ("1772618400000", "milliseconds?"),
    ('"99999-01-01T00:00:00Z"', "not an ISO 8601 timestamp"),
    ('"9999-12-31T23:59:59-05:00"', "outside the years"),
    ('"0001-01-01T00:00:00+14:00"', "outside the years"),
    ('"9999-12-31T00:00:00Z"', "outside the years"),
    ("NaN", "not a time"),
    ("true", "expected an ISO 8601 timestamp"),
])
def test_out_of_range_timestamps_are_one_bad_line(store, tmp_path, timestamp_json, words):
    path = tmp_path / "events.jsonl"
    path.write_text(event_line("e1") + "\n" + event_line("e2", timestamp_json=timestamp_json) + "\n"
                    + event_line("e3") + "\n", encoding="utf-8")
    result = track_file(store, path, now=NOW)
    assert errors_by_line(result) == [(2, "timestamp")] and words in result.errors[0].message
    assert stored_event_ids(store) == ["e1", "e3"]


def test_cli_track_with_an_overflowing_timestamp_keeps_the_file(project, tmp_path):  # noqa: F811
    path = tmp_path / "events.jsonl"
    path.write_text(event_line("e1") + "\n" + event_line("e2", timestamp_json="1e20") + "\n"
                    + event_line("e3", '{"cart_value": NaN}') + "\n", encoding="utf-8")
    out = nurture(project, "track", str(path))
    assert out.returncode == 1 and "internal error" not in out.stderr
    assert "events.jsonl:2: timestamp:" in out.stderr and "events.jsonl:3: properties.cart_value:" in out.stderr
    assert "1 new event(s)" in out.stdout


# ---------------------------------------------------------------- HTTP: /events


def _events(site, body, raw: bool = False):
    headers = {"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"}
    return site.http.post("/events", content=body if raw else json.dumps(body), headers=headers)


def test_events_endpoint_names_each_bad_event_and_keeps_the_good_ones(site):  # noqa: F811
    body = json.dumps({"events": [
        good_event("e1"),
        good_event("e2", properties={"cart_value": float("nan")}),
        good_event("e3", timestamp=1e20),
        good_event("e4", timestamp="9999-12-31T23:59:59-05:00"),
        {**good_event("e5"), "event_id": {"id": 5}},
        good_event("e6", event=["add_to_cart"]),
        "not an object",
        good_event("e8", properties=nested(40)),
    ]})
    response = _events(site, body, raw=True)
    assert response.status_code == 200
    payload = response.json()
    assert (payload["inserted"], payload["duplicates"]) == (1, 0)
    assert [(e["record"], e["field"]) for e in payload["errors"]] == [
        (2, "properties.cart_value"), (3, "timestamp"), (4, "timestamp"), (5, "event_id"), (6, "event"),
        (7, "record"), (8, "properties.a.a.a.….a.a")]
    assert stored_event_ids(site.store) == ["e1"]


def test_events_endpoint_answers_4xx_when_nothing_was_good(site):  # noqa: F811
    only_bad = _events(site, [good_event("e1", timestamp=1e20), good_event("e2", properties={"x": float("inf")})])
    assert only_bad.status_code == 422
    assert [e["field"] for e in only_bad.json()["errors"]] == ["timestamp", "properties.x"]
    deep = _events(site, b"[" * 50_000 + b"]" * 50_000, raw=True)
    assert deep.status_code == 400 and "nested" in deep.json()["detail"]
    huge_int = _events(site, b'{"event_id": 1' + b"0" * 5000 + b"}", raw=True)
    assert huge_int.status_code == 400
    assert stored_event_ids(site.store) == []


# ---------------------------------------------------------------- HTTP: bounces, Twilio


def _bounces(site, body):
    return site.http.post("/webhooks/bounces", content=json.dumps(body),
                          headers={"Authorization": f"Bearer {HOOKS}", "Content-Type": "application/json"})


def test_bounce_webhook_with_an_out_of_range_timestamp_keeps_the_good_events(site):  # noqa: F811
    response = _bounces(site, {"events": [
        {"type": "bounce", "email": "gone@example.com", "timestamp": "2026-03-02T10:00:00Z"},
        {"type": "bounce", "email": "far@example.com", "timestamp": 1e20},
        {"type": "complaint", "email": "odd@example.com", "timestamp": "9999-12-31T23:59:59-05:00"},
    ]})
    assert response.status_code == 200
    assert response.json()["applied"] == {"hard_bounce": 1}
    assert [e.split(":")[0] for e in response.json()["errors"]] == ["events[1].timestamp", "events[2].timestamp"]
    only_bad = _bounces(site, [{"type": "bounce", "email": "far@example.com", "timestamp": 1e20}])
    assert only_bad.status_code == 422 and only_bad.json()["errors"][0].startswith("events[0].timestamp: ")
    with site.store.engine.connect() as conn:
        assert conn.execute(select(suppression_t.c.address)).scalars().all() == ["gone@example.com"]


def test_a_replayed_bounce_reports_what_was_stored(site):  # noqa: F811
    subscriber(site.store, "angry@example.com")
    payload = [{"type": "bounce", "email": "gone@example.com"}, {"type": "complaint", "email": "angry@example.com"}]
    first = _bounces(site, payload).json()
    assert first == {"applied": {"hard_bounce": 1, "complaint": 1}, "errors": []}
    replay = _bounces(site, payload)
    assert replay.status_code == 200
    assert replay.json() == {"applied": {}, "duplicates": {"hard_bounce": 1, "complaint": 1}, "errors": []}
    twice_in_one = _bounces(site, [{"type": "bounce", "email": "new@example.com"}] * 2).json()
    assert (twice_in_one["applied"], twice_in_one["duplicates"]) == ({"hard_bounce": 1}, {"hard_bounce": 1})


def test_twilio_parameters_with_nul_are_a_400_not_a_500(site, twilio):  # noqa: F811
    response = _post_twilio(site, twilio, twilio.inbound("+4915112345678\x00", "STOP"))
    assert response.status_code == 400 and "NUL" in response.json()["detail"]
    with site.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(suppression_t)).scalar() == 0


# ---------------------------------------------------------------- 5. names (header injection, write path)


@pytest.mark.parametrize("raw, clean", [
    ("Eve\r\nBcc: evil@x.test", "Eve Bcc: evil@x.test"),
    ("  Ann \t\t Lee ", "Ann Lee"),
    ("A\u2028B\u2029C\x85D\x00E\x7fF", "A B C D E F"),
    ("\r\n\t", None),
    (None, None),
    ("Zoë", "Zoë"),
])
def test_clean_name(raw, clean):
    assert ingest.clean_name(raw) == clean


def test_clean_name_caps_the_length():
    assert ingest.clean_name("x" * 1000) == "x" * ingest.MAX_NAME_LENGTH
    assert ingest.clean_name("y" * (ingest.MAX_NAME_LENGTH - 1) + " z") == "y" * (ingest.MAX_NAME_LENGTH - 1)


def test_imported_names_lose_control_characters(store, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text('email,first_name,last_name\n'
                    'eve@example.com,"Eve\r\nBcc: evil@x.test","Lee\tTo: x@y.test"\n'
                    f'ann@example.com,{"A" * 500},\u2028\n', encoding="utf-8", newline="")
    assert import_contacts(store, path, now=NOW).errors == []
    lines = tmp_path / "contacts.jsonl"
    # A raw U+2028 is legal inside a JSON string: it must not split the line.
    lines.write_text('{"email": "bob@example.com", "first_name": "Bob\u2028Cc: x@y.test", "last_name": "\\r\\nKay"}\n'
                     '{"email": "cy@example.com", "first_name": {"html": "<b>"}}\n', encoding="utf-8")
    result = import_contacts(store, lines, now=NOW)
    assert errors_by_line(result) == [(2, "first_name")]
    people = contacts(store)
    assert (people["eve@example.com"].first_name, people["eve@example.com"].last_name) == ("Eve Bcc: evil@x.test",
                                                                                          "Lee To: x@y.test")
    assert people["ann@example.com"].first_name == "A" * ingest.MAX_NAME_LENGTH and people["ann@example.com"].last_name is None
    assert (people["bob@example.com"].first_name, people["bob@example.com"].last_name) == ("Bob Cc: x@y.test", "Kay")


def test_an_event_only_nurture_records_is_refused_by_line_and_field(store, tmp_path):
    """`whatsapp_received` opens a contact's 24-hour WhatsApp window for free text: only Twilio's
    inbound webhook records it (docs/whatsapp.md), never `track` or `/events`."""
    path = tmp_path / "events.jsonl"
    path.write_text(event_line("e1") + "\n" + event_line("e2").replace('"add_to_cart"', '"whatsapp_received"') + "\n",
                    encoding="utf-8")
    assert '"whatsapp_received"' in path.read_text(encoding="utf-8")
    result = track_file(store, path, now=NOW)
    assert errors_by_line(result) == [(2, "event")]
    assert "'whatsapp_received' is reserved: recorded only by an inbound WhatsApp message" in str(result.errors[0])
    assert stored_event_ids(store) == ["e1"]

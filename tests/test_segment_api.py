"""The Segment-compatible API of `nurture web` (POST /v1/track, /v1/identify, /v1/batch), served
by uvicorn on 127.0.0.1 over SQLite and PostgreSQL: HTTP Basic with the write key, Segment's
answers, the mapping of a message onto contacts and events, messageId idempotency, clock-skew
correction, context.campaign → UTMs (and so the lead source), anonymous → identified merges,
and bad bodies answered 400 naming the field (never 500)."""
from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from nurture.store.tables import contact_t, event_t, identity_t, merge_t, touch_t
from nurture.web.segment_api import Bad, read_message
from tests.conftest import utc
from tests.test_web_site import running_site

NOW = utc(2026, 3, 2, 12, 0)
KEY = "wk_test_segment_write_key_1"


def basic(key: str = KEY) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
def site(make_runtime):
    rt = make_runtime({})
    with running_site(rt, NOW, NURTURE_WRITE_KEY=KEY) as s:
        yield s


def _rows(store, table, *where):
    with store.engine.connect() as conn:
        return list(conn.execute(select(table).where(*where).order_by(*table.primary_key.columns)))


def _count(store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_the_write_key_is_http_basic_and_a_missing_or_wrong_one_is_401(site):
    body = {"userId": "u1", "event": "signed_up", "messageId": "m-auth"}
    assert site.http.post("/v1/track", json=body).status_code == 401
    wrong = site.http.post("/v1/track", json=body, headers=basic("not-the-key"))
    assert wrong.status_code == 401 and wrong.json()["success"] is False and KEY not in wrong.text
    assert site.http.post("/v1/track", json=body, headers={"Authorization": "Basic %%%"}).status_code == 401
    assert site.http.post("/v1/track", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
    assert _count(site.rt.store, event_t) == 0
    ok = site.http.post("/v1/track", json=body, headers=basic())
    assert (ok.status_code, ok.json()) == (200, {"success": True})
    in_body = site.http.post("/v1/track", json={**body, "messageId": "m-auth-2", "writeKey": KEY})
    assert in_body.status_code == 200
    assert _count(site.rt.store, event_t) == 2


def test_without_a_configured_write_key_the_api_refuses(make_runtime):
    rt = make_runtime({})
    with running_site(rt, NOW) as s:
        assert s.http.post("/v1/track", json={"userId": "u", "event": "x"}, headers=basic("")).status_code == 401
        assert s.http.post("/v1/batch", json={"batch": []}, headers=basic("anything")).status_code == 401


def test_track_maps_a_segment_message_onto_an_event_once(site):
    body = {"type": "track", "userId": "user-42", "event": "Order Completed", "messageId": "msg-1",
            "properties": {"total": 12.5, "items": [{"sku": "A"}]},
            "context": {"campaign": {"source": "newsletter", "medium": "email", "name": "spring", "term": "shoes"},
                        "page": {"url": "https://shop.example/checkout"}, "traits": {"email": "Ann@Example.COM"}},
            "timestamp": "2026-03-02T11:00:00Z", "sentAt": "2026-03-02T11:30:00Z"}
    assert site.http.post("/v1/track", json=body, headers=basic()).json() == {"success": True}
    assert site.http.post("/v1/track", json=body, headers=basic()).json() == {"success": True}  # re-sent
    events = _rows(site.rt.store, event_t)
    assert len(events) == 1
    event = events[0]
    assert (event.event_id, event.name) == ("msg-1", "Order Completed")
    # the device's clock was 30 minutes behind the server's (sentAt 11:30, received 12:00)
    assert event.occurred_at == utc(2026, 3, 2, 11, 30)
    assert event.properties == {"total": 12.5, "items": [{"sku": "A"}], "utm_source": "newsletter",
                                "utm_medium": "email", "utm_campaign": "spring", "utm_term": "shoes",
                                "url": "https://shop.example/checkout"}
    contact = _rows(site.rt.store, contact_t, contact_t.c.id == event.contact_id)[0]
    assert (contact.external_id, contact.email) == ("user-42", "ann@example.com")
    touch = _rows(site.rt.store, touch_t, touch_t.c.touch == "first")[0]
    assert (touch.contact_id, touch.source, touch.medium, touch.campaign) == (contact.id, "newsletter", "email", "spring")


def test_time_without_sent_at_is_the_timestamp_and_without_timestamp_the_arrival(site):
    site.http.post("/v1/batch", headers=basic(), json={"batch": [
        {"type": "track", "anonymousId": "a1", "event": "e", "messageId": "t1", "timestamp": "2026-03-01T08:00:00Z"},
        {"type": "track", "anonymousId": "a1", "event": "e", "messageId": "t2"},
        {"type": "track", "anonymousId": "a1", "event": "e", "messageId": "t3",
         "originalTimestamp": "2026-03-01T08:00:00Z"}],
        "sentAt": "2026-03-01T07:00:00Z"})  # batch-level sentAt applies to t3 (and t1)
    times = {e.event_id: e.occurred_at for e in _rows(site.rt.store, event_t)}
    assert times == {"t1": utc(2026, 3, 2, 13, 0), "t2": NOW, "t3": utc(2026, 3, 2, 13, 0)}


def test_a_message_relayed_by_a_segment_webhook_keeps_the_time_segment_corrected(site):
    # The purchase happened at 09:00:00 and reached Segment at 09:00:05; Segment's webhook
    # destination relays it (retried for three hours) and it reaches Nurture at 12:00.
    relayed = {"type": "track", "userId": "u-relay", "event": "Order Completed", "messageId": "relay-1",
               "originalTimestamp": "2026-03-02T09:00:00Z", "sentAt": "2026-03-02T09:00:05Z",
               "receivedAt": "2026-03-02T09:00:05Z", "timestamp": "2026-03-02T09:00:00Z"}
    assert site.http.post("/v1/track", json=relayed, headers=basic()).status_code == 200
    [event] = _rows(site.rt.store, event_t)
    assert event.occurred_at == utc(2026, 3, 2, 9, 0)  # was 11:59:55: the relay's delay corrected twice


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text + "+00:00")


# Nurture receives every message at NOW (12:00). ts = timestamp, orig = originalTimestamp,
# sent = sentAt, recv = receivedAt (the relay's receipt: the message went through Segment or RudderStack).
@pytest.mark.parametrize("times, happened", [
    # relayed by a Segment / RudderStack webhook: the formula with the relay's receivedAt
    ({"ts": "2026-03-02T09:00:00", "orig": "2026-03-02T09:00:00", "sent": "2026-03-02T09:00:05",
      "recv": "2026-03-02T09:00:05"}, "2026-03-02T09:00:00"),
    # ... device clock 1 h behind
    ({"ts": "2026-03-02T09:00:00", "orig": "2026-03-02T08:00:00", "sent": "2026-03-02T08:00:05",
      "recv": "2026-03-02T09:00:05"}, "2026-03-02T09:00:00"),
    # ... device clock two days ahead (the device's times in the future)
    ({"ts": "2026-03-02T09:00:00", "orig": "2026-03-04T09:00:00", "sent": "2026-03-04T09:00:05",
      "recv": "2026-03-02T09:00:05"}, "2026-03-02T09:00:00"),
    # ... from a phone's offline queue: happened the evening before, sent and relayed the morning after
    ({"ts": "2026-03-01T20:00:01", "orig": "2026-03-01T20:00:00", "sent": "2026-03-02T08:00:00",
      "recv": "2026-03-02T08:00:01"}, "2026-03-01T20:00:01"),
    # ... without Segment's timestamp: the formula all the same
    ({"orig": "2026-03-02T08:00:00", "sent": "2026-03-02T08:00:05", "recv": "2026-03-02T09:00:05"},
     "2026-03-02T09:00:00"),
    # ... without originalTimestamp: the relay's timestamp as is (corrected upstream already)
    ({"ts": "2026-03-02T09:00:00", "sent": "2026-03-02T08:00:05", "recv": "2026-03-02T09:00:05"},
     "2026-03-02T09:00:00"),
    ({"ts": "2026-03-02T09:00:00", "recv": "2026-03-02T09:00:05"}, "2026-03-02T09:00:00"),
    # a library posting to Nurture directly: Nurture's receipt stands in for receivedAt
    ({"ts": "2026-03-02T11:00:00", "sent": "2026-03-02T11:30:00"}, "2026-03-02T11:30:00"),  # analytics.js
    ({"orig": "2026-03-02T11:00:00", "sent": "2026-03-02T11:30:00"}, "2026-03-02T11:30:00"),  # RudderStack SDK
    ({"ts": "2026-03-03T11:00:00", "sent": "2026-03-03T11:30:00"}, "2026-03-02T11:30:00"),  # clock a day ahead
    ({"ts": "2026-03-02T10:00:00", "orig": "2026-03-02T11:00:00", "sent": "2026-03-02T11:30:00"},
     "2026-03-02T11:30:00"),  # both: originalTimestamp is the device's
    # no sentAt: no skew to correct, the time as sent (timestamp first); one in the future waits for its time
    ({"ts": "2026-03-01T08:00:00"}, "2026-03-01T08:00:00"),
    ({"ts": "2026-03-05T08:00:00"}, "2026-03-05T08:00:00"),
    ({"orig": "2026-03-01T08:00:00"}, "2026-03-01T08:00:00"),
    ({"ts": "2026-03-01T09:00:00", "orig": "2026-03-01T08:00:00", "recv": "2026-03-01T09:00:05"},
     "2026-03-01T09:00:00"),
    # no time of the event: when it was received, by the relay or else by Nurture
    ({}, "2026-03-02T12:00:00"),
    ({"recv": "2026-03-02T09:00:05"}, "2026-03-02T09:00:05"),
    ({"sent": "2026-03-02T11:30:00"}, "2026-03-02T12:00:00"),
    # a correction landing outside the years 1900–2999: the time as sent
    ({"ts": "1950-01-01T00:00:00", "sent": "2990-01-01T00:00:00"}, "1950-01-01T00:00:00"),
    ({"ts": "2026-03-02T09:00:00", "orig": "1950-01-01T00:00:00", "sent": "2990-01-01T00:00:00",
      "recv": "2026-03-02T09:00:05"}, "2026-03-02T09:00:00"),
])
def test_the_time_of_a_message_follows_segments_clock_skew_rule(times, happened):
    keys = {"ts": "timestamp", "orig": "originalTimestamp", "sent": "sentAt", "recv": "receivedAt"}
    message = {"userId": "u", "event": "e", **{keys[k]: v + "Z" for k, v in times.items()}}
    assert read_message(message, "track", NOW)["occurred_at"] == _at(happened)


@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt", "receivedAt"])
def test_a_time_that_is_no_time_is_refused_naming_its_field(field):
    message = {"userId": "u", "event": "e", "timestamp": "2026-03-02T09:00:00Z", "originalTimestamp":
               "2026-03-02T09:00:00Z", "sentAt": "2026-03-02T09:00:05Z", "receivedAt": "2026-03-02T09:00:05Z",
               field: "yesterday"}
    with pytest.raises(Bad) as refused:
        read_message(message, "track", NOW)
    assert [f for f, _ in refused.value.problems] == [field]


def test_identify_fills_the_contacts_fields_and_attributes(site):
    body = {"userId": "u-7", "messageId": "i-1", "traits": {
        "email": "bea@example.com", "phone": "+49 30 1234567", "firstName": "Bea\r\nX", "lastName": "Lund",
        "timezone": "Europe/Berlin", "address": {"country": "de", "city": "Berlin"}, "language": "de-DE",
        "plan": "pro", "seats": 3}}
    assert site.http.post("/v1/identify", json=body, headers=basic()).json() == {"success": True}
    [c] = _rows(site.rt.store, contact_t)
    assert (c.external_id, c.email, c.phone, c.first_name, c.last_name, c.timezone, c.country, c.locale) == (
        "u-7", "bea@example.com", "+49301234567", "Bea X", "Lund", "Europe/Berlin", "DE", "de-DE")
    assert c.attributes == {"plan": "pro", "seats": 3, "address": {"city": "Berlin"}}
    # a second identify updates, attributes merge; the contact stays one
    site.http.post("/v1/identify", headers=basic(), json={"userId": "u-7", "traits": {"plan": "team", "lastName": "Berg"}})
    [c] = _rows(site.rt.store, contact_t)
    assert (c.last_name, c.attributes["plan"], c.attributes["seats"]) == ("Berg", "team", 3)
    kinds = {(i.kind, i.value) for i in _rows(site.rt.store, identity_t)}
    assert {("external_id", "u-7"), ("email", "bea@example.com"), ("phone", "+49301234567")} <= kinds
    assert _count(site.rt.store, event_t) == 0


def test_an_anonymous_visitor_who_identifies_is_merged_into_the_known_contact(site):
    store = site.rt.store
    site.http.post("/v1/identify", headers=basic(), json={"userId": "known-1", "traits": {"email": "cy@example.com"}})
    site.http.post("/v1/track", headers=basic(), json={
        "anonymousId": "anon-9", "event": "page_visit", "messageId": "v-1",
        "context": {"page": {"url": "https://shop.example/?utm_source=google&utm_medium=cpc&utm_campaign=x"}}})
    anon = _rows(store, event_t)[0].contact_id
    assert _rows(store, contact_t, contact_t.c.id == anon)[0].email is None
    known = _rows(store, contact_t, contact_t.c.external_id == "known-1")[0].id
    assert anon != known
    link = {"userId": "known-1", "anonymousId": "anon-9", "messageId": "i-2", "traits": {"email": "cy@example.com"}}
    assert site.http.post("/v1/identify", headers=basic(), json=link).json() == {"success": True}
    assert {e.contact_id for e in _rows(store, event_t)} == {known}
    [merge] = _rows(store, merge_t)
    assert (merge.from_contact_id, merge.into_contact_id, merge.reason) == (anon, known, "identify")
    assert merge.counts["events"] == 1 and merge.counts["touches"] == 2
    assert _rows(store, touch_t, touch_t.c.contact_id == known)[0].source == "google"
    # later anonymous events land on the known contact; identifying again merges nothing
    site.http.post("/v1/track", headers=basic(), json={"anonymousId": "anon-9", "event": "again", "messageId": "v-2"})
    site.http.post("/v1/identify", headers=basic(), json=link)
    assert {e.contact_id for e in _rows(store, event_t)} == {known}
    assert _count(store, merge_t) == 1


def test_a_batch_merging_a_visitor_moves_its_events_of_the_same_batch(site):
    store = site.rt.store
    site.http.post("/v1/batch", headers=basic(), json={"batch": [
        {"type": "track", "anonymousId": "b-anon", "event": "viewed", "messageId": "b1"},
        {"type": "identify", "anonymousId": "b-anon", "userId": "b-user", "traits": {"email": "dee@example.com"}},
        {"type": "track", "userId": "b-user", "event": "bought", "messageId": "b2"},
        {"type": "page", "anonymousId": "b-anon", "name": "Home", "messageId": "b3",
         "properties": {"url": "https://shop.example/"}},
        {"type": "group", "userId": "b-user", "groupId": "g"}]})
    [contact] = [c for c in _rows(store, contact_t) if c.external_id == "b-user"]
    assert contact.email == "dee@example.com"
    assert {(e.event_id, e.name, e.contact_id) for e in _rows(store, event_t)} == {
        ("b1", "viewed", contact.id), ("b2", "bought", contact.id), ("b3", "page_viewed", contact.id)}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # parsing: one backend is enough
@pytest.mark.parametrize("path, body, field", [
    ("/v1/track", {"userId": "u", "messageId": "x"}, "event"),
    ("/v1/track", {"event": "e", "messageId": "x"}, "userId"),
    # only Twilio's inbound webhook records it: with the public write key a page could open
    # anyone's 24-hour WhatsApp window for free text (docs/whatsapp.md)
    ("/v1/track", {"userId": "u", "messageId": "x", "event": "whatsapp_received"}, "event"),
    ("/v1/track", {"userId": "u", "event": "e", "properties": {"price": float("nan")}}, "properties.price"),
    ("/v1/track", {"userId": "u", "event": "e", "properties": [1]}, "properties"),
    ("/v1/track", {"userId": {"a": 1}, "event": "e"}, "userId"),
    ("/v1/track", {"userId": "u", "event": "e", "timestamp": "yesterday"}, "timestamp"),
    ("/v1/track", {"userId": "u", "event": "e", "properties": {"k": "a\u0000b"}}, "properties.k"),
    # a trait of the wrong kind or one the store cannot keep (a merely invalid one is left out: below)
    ("/v1/identify", {"userId": "u", "traits": {"email": {"a": 1}}}, "traits.email"),
    ("/v1/identify", {"userId": "u", "traits": {"phone": ["12"]}}, "traits.phone"),
    ("/v1/identify", {"userId": "u", "traits": {"timezone": "Mars/\ud800"}}, "traits.timezone"),
    ("/v1/identify", {"userId": "u", "traits": {"address": {"country": True}}}, "traits.address.country"),
    ("/v1/track", {"userId": "u", "event": "e", "context": {"traits": {"phone": {"n": 1}}}}, "context.traits.phone"),
    ("/v1/page", {"userId": "u", "name": "Pri\u0000cing"}, "name"),
    ("/v1/page", {"userId": "u", "name": "Pri\ud800cing"}, "name"),
    ("/v1/alias", {"userId": "u"}, "previousId"),
    ("/v1/identify", [1, 2], "message"),
    ("/v1/track", {"userId": "u" * 201, "event": "e"}, "userId"),
    ("/v1/track", {"anonymousId": "a", "event": "e", "context": {"campaign": {"source": float("inf")}}},
     "context.campaign.source"),
    ("/v1/batch", {"batch": "nope"}, "batch"),
    ("/v1/batch", {"batch": [{"type": "fly", "userId": "u"}]}, "batch[0].type"),
])
def test_a_bad_body_is_400_naming_the_field(site, path, body, field):
    import json
    raw = json.dumps(body)  # (NaN written as JSON's non-standard NaN, as a buggy client would)
    response = site.http.post(path, content=raw, headers={**basic(), "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert _count(site.rt.store, event_t) == 0


def test_not_json_is_400_and_a_too_large_batch_413(site):
    assert site.http.post("/v1/track", content=b"{nope", headers=basic()).status_code == 400
    big = {"batch": [{"type": "track", "userId": "u", "event": "e", "properties": {"pad": "x" * 1000}}] * 600}
    assert site.http.post("/v1/batch", json=big, headers=basic()).status_code == 413


def _track_of_bytes(message_id: str, size: int, char: str = "x") -> dict:
    """A track message whose JSON without whitespace is `size` bytes in UTF-8."""
    message = {"type": "track", "userId": f"user-{message_id}", "event": "viewed", "messageId": message_id,
               "properties": {"pad": ""}}
    pad = size - len(json.dumps(message, separators=(",", ":")))
    width = len(char.encode())
    message["properties"]["pad"] = char * (pad // width) + "x" * (pad % width)
    assert len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return message


def test_a_message_over_32_kb_in_a_batch_is_refused_alone_as_on_its_own_path(site):
    limit = 32 * 1024
    too_big = _track_of_bytes("too-big", limit + 1)
    assert site.http.post("/v1/track", json=too_big, headers=basic()).status_code == 413  # on its own
    response = site.http.post("/v1/batch", headers=basic(), json={"batch": [
        {"type": "track", "userId": "u1", "event": "ok", "messageId": "small"},
        _track_of_bytes("at-limit", limit),
        too_big,
        _track_of_bytes("accents", limit + 2, char="é")]})  # counted in bytes, not characters
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["batch[2]", "batch[3]"]
    assert "32768 bytes" in response.json()["error"]
    assert sorted(e.event_id for e in _rows(site.rt.store, event_t)) == ["at-limit", "small"]
    # nothing of a refused message is stored: not even the contact its userId would have made
    assert {c.external_id for c in _rows(site.rt.store, contact_t)} == {"u1", "user-at-limit"}


def test_a_batch_keeps_its_good_messages_and_names_the_bad_ones(site):
    response = site.http.post("/v1/batch", headers=basic(), json={"batch": [
        {"type": "track", "userId": "u1", "event": "ok", "messageId": "g1"},
        {"type": "track", "userId": "u1", "messageId": "g2"},
        {"type": "identify", "userId": "u1", "traits": {"email": ["@@"]}}]})
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["batch[1].event", "batch[2].traits.email"]
    assert [e.event_id for e in _rows(site.rt.store, event_t)] == ["g1"]


def test_messages_of_an_erased_person_are_not_stored(site):
    from nurture.privacy.tombstones import subject_hash
    from nurture.store.tables import suppression_t
    with site.rt.store.engine.begin() as conn:
        conn.execute(suppression_t.insert().values(address=subject_hash("gone@example.com"), reason="erased",
                                                   created_at=NOW - dt.timedelta(days=1)))
    response = site.http.post("/v1/track", headers=basic(), json={
        "userId": "g", "event": "e", "messageId": "gone-1", "context": {"traits": {"email": "gone@example.com"}}})
    assert response.status_code == 200
    assert _count(site.rt.store, event_t) == 0 and _count(site.rt.store, contact_t) == 0


def test_browser_sdks_get_cors_and_the_short_paths_of_analytics_js(site):
    preflight = site.http.options("/v1/batch", headers={"Origin": "https://shop.example",
                                                        "Access-Control-Request-Method": "POST",
                                                        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    # analytics.js: writeKey in a text/plain body, posted to /v1/t and /v1/p
    import json
    for path, body in (("/v1/t", {"anonymousId": "x", "event": "e", "messageId": "s1"}),
                       ("/v1/p", {"anonymousId": "x", "messageId": "s2"}),
                       ("/v1/i", {"anonymousId": "x", "traits": {"plan": "a"}}),
                       ("/v1/b", {"batch": [{"type": "track", "anonymousId": "x", "event": "e", "messageId": "s3"}]})):
        response = site.http.post(path, content=json.dumps({**body, "writeKey": KEY}),
                                  headers={"content-type": "text/plain"})
        assert response.json() == {"success": True} and response.headers["access-control-allow-origin"] == "*"
    assert sorted(e.event_id for e in _rows(site.rt.store, event_t)) == ["s1", "s2", "s3"]
    assert site.http.post("/v1/t", json={"anonymousId": "x", "event": "e"}).headers[
        "access-control-allow-origin"] == "*"  # a 401 is readable by the browser too


def test_absurd_nesting_is_400_naming_the_properties(site):
    deep: dict = {}
    inner = deep
    for _ in range(40):
        inner["k"] = {}
        inner = inner["k"]
    response = site.http.post("/v1/track", headers=basic(), json={"userId": "u", "event": "e", "properties": deep})
    assert response.status_code == 400 and response.json()["errors"][0]["field"].startswith("properties")


def test_a_segment_track_starts_its_journey_at_once(make_runtime):
    """/v1 events are handed to the instant triggers (nurture.runtime.instant) like /events."""
    from tests.engine_fixtures import journey_yaml, messages, subscriber
    from tests.test_instant_triggers import client, wait_for
    rt = make_runtime({"welcome": journey_yaml(
        "welcome", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}", trigger="{event: lead}")})
    subscriber(rt.store, "ada@example.com")
    with client(rt, NOW, NURTURE_WRITE_KEY=KEY) as http:
        response = http.post("/v1/track", headers=basic(), json={
            "userId": "ada-1", "event": "lead", "messageId": "lead-1", "timestamp": NOW.isoformat(),
            "context": {"traits": {"email": "ada@example.com"}}})
        assert response.json() == {"success": True}
        assert wait_for(lambda: [m.status for m in messages(rt.store)] == ["sent"])


@pytest.mark.parametrize("raw_name", [b"Pri\\u0000cing", b"Pri\\ud800cing"])
def test_a_page_name_the_store_cannot_keep_is_400_naming_name_and_nothing_is_stored(site, raw_name):
    """The page's `name` becomes a property: checked as properties are (a NUL or lone surrogate
    stored there broke `nurture export-contact` later)."""
    body = b'{"userId": "u1", "messageId": "p1", "name": "' + raw_name + b'"}'
    response = site.http.post("/v1/page", content=body, headers={**basic(), "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["name"]
    assert _count(site.rt.store, event_t) == 0 and _count(site.rt.store, contact_t) == 0
    ok = site.http.post("/v1/page", headers=basic(), json={"userId": "u1", "messageId": "p2", "name": "Pricing",
                                                            "properties": {"name": "kept"}})
    assert ok.json() == {"success": True}
    assert [e.properties["name"] for e in _rows(site.rt.store, event_t)] == ["kept"]  # a property wins


def test_an_invalid_trait_is_left_out_named_as_sent_and_the_rest_of_the_message_kept(site):
    """As `import contacts` does: a phone that is no number, an unknown time zone or an e-mail
    that is no address is left out with a warning (in the 200 answer); the event is stored,
    the rest of the traits written, the visitor merged."""
    store = site.rt.store
    track = site.http.post("/v1/track", headers=basic(), json={
        "anonymousId": "a-1", "event": "Order Completed", "messageId": "m1", "properties": {"value": 50},
        "context": {"traits": {"email": "ann@example.com", "phone": "12345"}}})
    assert track.status_code == 200, track.text
    assert [w["field"] for w in track.json()["warnings"]] == ["context.traits.phone"]
    assert "left out" in track.json()["warnings"][0]["message"]
    assert [e.event_id for e in _rows(store, event_t)] == ["m1"]
    identify = site.http.post("/v1/identify", headers=basic(), json={
        "userId": "u1", "anonymousId": "a-1", "traits": {
            "email": "ann@example.com", "firstName": "Ann", "phone": "12345", "timezone": "CET+1", "plan": "pro"}})
    assert identify.status_code == 200, identify.text
    assert [w["field"] for w in identify.json()["warnings"]] == ["traits.phone", "traits.timezone"]
    [ann] = _rows(store, contact_t, contact_t.c.external_id == "u1")
    assert (ann.email, ann.first_name, ann.phone, ann.timezone, ann.attributes) == (
        "ann@example.com", "Ann", None, None, {"plan": "pro"})
    assert {e.contact_id for e in _rows(store, event_t)} == {ann.id}  # the visitor was merged
    no_address = site.http.post("/v1/batch", headers=basic(), json={"batch": [
        {"type": "identify", "userId": "u2", "traits": {"email": "@@", "firstName": "Bo"}}]})
    assert no_address.status_code == 200
    assert [w["field"] for w in no_address.json()["warnings"]] == ["batch[0].traits.email"]
    [bo] = _rows(store, contact_t, contact_t.c.external_id == "u2")
    assert (bo.email, bo.first_name) == (None, "Bo")


def test_identify_leaves_out_a_locale_that_is_no_language_tag(site):
    response = site.http.post("/v1/identify", headers=basic(), json={
        "userId": "u8", "traits": {"email": "l@example.com", "locale": "not a locale!!"}})
    assert [w["field"] for w in response.json()["warnings"]] == ["traits.locale"]
    site.http.post("/v1/identify", headers=basic(), json={"userId": "u9", "traits": {"language": "pt_BR"}})
    assert [(c.external_id, c.locale) for c in _rows(site.rt.store, contact_t)] == [("u8", None), ("u9", "pt_BR")]


@pytest.mark.parametrize("path", ["/v1/group", "/v1/g", "/v1/screen", "/v1/s"])
def test_group_and_screen_calls_are_accepted_and_ignored_on_their_own_paths(site, path):
    body = {"userId": "u1", "anonymousId": "a1", "groupId": "g1", "name": "Home", "traits": {"plan": "x"}}
    assert site.http.post(path, json=body).status_code == 401
    response = site.http.post(path, headers=basic(), json=body)
    assert response.json() == {"success": True} and response.headers["access-control-allow-origin"] == "*"
    assert _count(site.rt.store, contact_t) == 0 and _count(site.rt.store, event_t) == 0


def test_an_alias_merges_the_visitor_of_previous_id_into_the_user_id(site):
    """analytics.js posts alias to /v1/a (previousId: the anonymous id, userId: the new one);
    a previousId that is another known user's id merges nobody."""
    store = site.rt.store
    site.http.post("/v1/track", headers=basic(), json={"anonymousId": "a-5", "event": "viewed", "messageId": "v1"})
    site.http.post("/v1/identify", headers=basic(), json={"userId": "u5", "traits": {"email": "eve@example.com"}})
    assert site.http.post("/v1/a", headers=basic(), json={"userId": "u5", "previousId": "a-5"}).json() == {
        "success": True}
    [eve] = _rows(store, contact_t, contact_t.c.external_id == "u5")
    assert {e.contact_id for e in _rows(store, event_t)} == {eve.id}
    assert [(m.into_contact_id, m.reason) for m in _rows(store, merge_t)] == [(eve.id, "identify")]
    site.http.post("/v1/track", headers=basic(), json={"anonymousId": "a-5", "event": "again", "messageId": "v2"})
    assert {e.contact_id for e in _rows(store, event_t)} == {eve.id}
    # a user id renamed (previousId: u5) is no anonymous visitor: nothing is merged or linked
    people = _count(store, contact_t)
    response = site.http.post("/v1/batch", headers=basic(), json={"batch": [
        {"type": "alias", "userId": "u6", "previousId": "u5"}]})
    assert response.json() == {"success": True}
    assert _count(store, contact_t) == people and _count(store, merge_t) == 1
    assert not _rows(store, identity_t, identity_t.c.value.in_(("u6",)))


def test_a_merge_fills_the_known_contacts_empty_fields_with_what_the_visitor_said(site):
    """An anonymous identify gave the visitor a name, time zone, locale and country; merged, the
    known contact takes those it has none of (its own values win, as attributes do)."""
    store = site.rt.store
    site.http.post("/v1/identify", headers=basic(), json={"anonymousId": "a-7", "traits": {
        "firstName": "Ann", "lastName": "Lee", "timezone": "Europe/Berlin", "locale": "de-DE",
        "address": {"country": "de"}, "plan": "trial"}})
    site.http.post("/v1/identify", headers=basic(), json={"userId": "u7", "traits": {
        "email": "ann7@example.com", "lastName": "Berg", "plan": "pro"}})
    assert site.http.post("/v1/identify", headers=basic(), json={"userId": "u7", "anonymousId": "a-7"}).status_code == 200
    [merge] = _rows(store, merge_t)
    rows = {c.id: c for c in _rows(store, contact_t)}
    known, visitor = rows[merge.into_contact_id], rows[merge.from_contact_id]
    assert (known.first_name, known.last_name, known.timezone, known.locale, known.country, known.attributes) == (
        "Ann", "Berg", "Europe/Berlin", "de-DE", "DE", {"plan": "pro"})
    assert (visitor.first_name, visitor.last_name, visitor.timezone, visitor.locale, visitor.country) == (None,) * 5

"""Webhooks of `nurture web`, served by uvicorn on 127.0.0.1: the tracking endpoint
(bearer token, same validation and idempotency as `nurture track`), Twilio inbound keywords
and status callbacks (X-Twilio-Signature), and the generic bounce/complaint webhook."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from nurture.consent_ledger import record_consent
from nurture.store.tables import consent_t, event_t, message_t, suppression_t
from nurture.web.webhooks import twilio_signature
from tests.conftest import utc
from tests.engine_fixtures import add_contact, messages, subscriber
from tests.fakes.twilio import FakeTwilio
from tests.test_web_site import running_site

NOW = utc(2026, 3, 2, 12, 0)
INGEST = "ingest-token-for-tests-42"
HOOKS = "webhook-token-for-tests-77"


@pytest.fixture
def twilio():
    fake = FakeTwilio().start()
    yield fake
    fake.stop()


@pytest.fixture
def site(make_runtime, twilio):
    rt = make_runtime({})
    with running_site(rt, NOW, NURTURE_INGEST_TOKEN=INGEST, NURTURE_WEBHOOK_TOKEN=HOOKS,
                      NURTURE_TWILIO_AUTH_TOKEN=twilio.auth_token) as s:
        yield s


def _count(store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def _suppressions(store):
    with store.engine.connect() as conn:
        return [(s.contact_id, s.address, s.channel, s.reason) for s in conn.execute(select(suppression_t).order_by(suppression_t.c.id))]


def _consents(store, contact_id):
    with store.engine.connect() as conn:
        return [(r.channel, r.status, r.source, r.policy_version, r.recorded_at) for r in conn.execute(
            select(consent_t).where(consent_t.c.contact_id == contact_id).order_by(consent_t.c.id))]


# ---------------------------------------------------------------- signature algorithm

def test_signature_matches_twilios_published_example():
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
    assert twilio_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


# ---------------------------------------------------------------- /events

def test_events_need_the_bearer_token(site):
    event = {"event_id": "e1", "email": "a@example.com", "event": "page_view", "timestamp": NOW.isoformat()}
    assert site.http.post("/events", json=event).status_code == 401
    assert site.http.post("/events", json=event).headers["www-authenticate"] == "Bearer"
    wrong = site.http.post("/events", json=event, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "nope" not in wrong.text and INGEST not in wrong.text
    assert _count(site.store, event_t) == 0


def test_events_validate_like_track_and_are_idempotent(site):
    auth = {"Authorization": f"Bearer {INGEST}"}
    batch = {"events": [
        {"event_id": "e1", "email": "a@example.com", "event": "add_to_cart", "properties": {"cart_value": 42},
         "timestamp": "2026-03-02T11:00:00Z"},
        {"event_id": "e2", "email": "not-an-address", "event": "add_to_cart", "timestamp": "2026-03-02T11:00:00Z"},
        {"event_id": "e3", "email": "b@example.com", "timestamp": "yesterday"},
    ]}
    response = site.http.post("/events", json=batch, headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert (body["inserted"], body["duplicates"]) == (1, 0)
    assert {(e["record"], e["field"]) for e in body["errors"]} == {(2, "email"), (3, "event"), (3, "timestamp")}
    again = site.http.post("/events", json=batch["events"][0], headers=auth).json()
    assert (again["inserted"], again["duplicates"]) == (0, 1)
    with site.store.engine.connect() as conn:
        [(name, props, at)] = conn.execute(select(event_t.c.name, event_t.c.properties, event_t.c.occurred_at)).all()
    assert (name, props, at) == ("add_to_cart", {"cart_value": 42}, utc(2026, 3, 2, 11))

    only_bad = site.http.post("/events", json=[batch["events"][1]], headers=auth)
    assert only_bad.status_code == 422
    assert site.http.post("/events", content=b"{not json", headers=auth).status_code == 400
    huge = site.http.post("/events", content=b"[" + b"{}," * 400_000 + b"{}]", headers=auth)
    assert huge.status_code == 413


def test_hostile_events_get_a_4xx_naming_the_field_and_the_good_ones_are_kept(site):
    """An `email` of [] or 0 was no error (the batch failed with a 500 in the write and the good
    events of it were lost); a lone surrogate echoed in an error message made the answer
    itself fail (Starlette encodes strict UTF-8): a 500 instead of the 4xx."""
    auth = {"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"}
    good = '{"event_id": "ok", "email": "a@example.com", "event": "signup", "timestamp": "2026-03-02T11:00:00Z"}'
    bad = ['{"event_id": "b1", "email": [], "event": "signup", "timestamp": "2026-03-02T11:00:00Z"}',
           '{"event_id": "b2", "email": 0, "event": "signup", "timestamp": "2026-03-02T11:00:00Z"}',
           '{"event_id": "b3", "email": {}, "event": "signup", "timestamp": "2026-03-02T11:00:00Z"}',
           '{"event_id": "b4", "email": "a@example.com", "event": "signup", "timestamp": "\\ud800"}',
           '{"event_id": "b5", "email": "a@example.com", "event": "signup", "timestamp": "2026-03-02T11:00:00Z",'
           ' "properties": {"\\ud800": 1}}']
    response = site.http.post("/events", content=f"[{good}, {', '.join(bad)}]".encode(), headers=auth)
    assert response.status_code == 200
    body = json.loads(response.content)  # valid JSON, the surrogate written as its escape again
    assert body["inserted"] == 1
    assert [(e["record"], e["field"]) for e in body["errors"]] == [
        (2, "email"), (3, "email"), (4, "email"), (5, "timestamp"), (6, "properties.\ud800")]
    assert "must be text" in body["errors"][0]["message"]
    for one in bad:
        assert site.http.post("/events", content=one.encode(), headers=auth).status_code == 422
    assert _count(site.store, event_t) == 1


# ---------------------------------------------------------------- Twilio

def _post_twilio(site, fake: FakeTwilio, params: dict, *, signature: str | None = "sign"):
    url = site.url + "/webhooks/twilio"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature == "sign":
        headers["X-Twilio-Signature"] = fake.signature(url, params)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    return site.http.post("/webhooks/twilio", data=params, headers=headers)


def test_twilio_webhook_refuses_missing_or_wrong_signatures(site, twilio):
    cid = subscriber(site.store, "s@example.com", channels=("sms",), phone="+4915112345678")
    stop = twilio.inbound("+4915112345678", "STOP")
    assert _post_twilio(site, twilio, stop, signature=None).status_code == 401
    assert _post_twilio(site, twilio, stop, signature=twilio.signature(site.url + "/webhooks/twilio",
                                                                       {**stop, "Body": "START"})).status_code == 403
    impostor = FakeTwilio(auth_token="someone-elses-token")
    assert _post_twilio(site, twilio, stop, signature=impostor.signature(site.url + "/webhooks/twilio", stop)).status_code == 403
    assert _consents(site.store, cid) == [("sms", "granted", "test", "", utc(2026, 1, 1))]


def test_stop_and_start_keywords_change_sms_consent_and_suppression(site, twilio):
    cid = subscriber(site.store, "s@example.com", channels=("sms",), phone="+4915112345678")
    response = _post_twilio(site, twilio, twilio.inbound("+4915112345678", " stop "))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    assert _consents(site.store, cid)[-1] == ("sms", "revoked", "twilio:STOP", "test-1", NOW)
    assert _suppressions(site.store) == [(cid, "+4915112345678", "sms", "sms_stop")]

    site.at(NOW + dt.timedelta(days=1))
    _post_twilio(site, twilio, twilio.inbound("+4915112345678", "Start"))
    assert _consents(site.store, cid)[-1] == ("sms", "granted", "twilio:START", "test-1", NOW + dt.timedelta(days=1))
    assert _suppressions(site.store) == []

    _post_twilio(site, twilio, twilio.inbound("+4915112345678", "stop sending me deals please"))  # not a keyword
    assert _consents(site.store, cid)[-1][1] == "granted"


def test_yes_or_start_from_a_number_that_never_opted_in_records_no_consent(site, twilio):
    """A "Yes" answering a transactional text ("reply YES to confirm your appointment") recorded
    confirmed SMS marketing consent. START/YES/UNSTOP only lift a STOP: they give back the grant
    a STOP took, and nothing when there was no STOP (or the revocation came from elsewhere)."""
    never = add_contact(site.store, "cy@example.com", phone="+4915112345678")
    for body in ("Yes", "START", "unstop"):
        assert _post_twilio(site, twilio, twilio.inbound("+4915112345678", body)).status_code == 200
    assert _consents(site.store, never) == []

    # revoked on the preference center, not by STOP: a START does not undo it
    elsewhere = subscriber(site.store, "di@example.com", channels=("sms",), phone="+4915112345679")
    with site.store.engine.begin() as conn:
        record_consent(conn, elsewhere, "sms", "revoked", source="web:preferences", at=NOW - dt.timedelta(hours=1))
    _post_twilio(site, twilio, twilio.inbound("+4915112345679", "START"))
    assert [c[1:3] for c in _consents(site.store, elsewhere)] == [("granted", "test"), ("revoked", "web:preferences")]

    # granted, STOP, STOP again, YES: the grant before the STOPs comes back
    stopped = subscriber(site.store, "ed@example.com", channels=("sms",), phone="+4915112345670")
    for body in ("STOP", "stop all", "Yes"):
        _post_twilio(site, twilio, twilio.inbound("+4915112345670", body))
    assert [c[1:3] for c in _consents(site.store, stopped)] == [
        ("granted", "test"), ("revoked", "twilio:STOP"), ("revoked", "twilio:STOP ALL"), ("granted", "twilio:YES")]
    assert _suppressions(site.store) == []


def test_start_or_yes_confirms_a_pending_opt_in_from_that_number_and_nothing_expired(site, twilio):
    """SMS consent asked for under double opt-in (a lead form's `sms_opt_in`) stayed `pending`
    for good: START only lifted a STOP. A keyword texted from the number proves it is the
    person's: the pending consent becomes a confirmed grant. WhatsApp the same; a request older
    than `pending_consent_expires` (30d) is not confirmed."""
    sms = add_contact(site.store, "sy@example.com", phone="+4915112345671")
    chat = add_contact(site.store, "wa@example.com", phone="+4915112345672")
    late = add_contact(site.store, "la@example.com", phone="+4915112345673")
    with site.store.engine.begin() as conn:
        record_consent(conn, sms, "sms", "pending", source="meta_lead_ads:1", at=NOW - dt.timedelta(hours=1))
        record_consent(conn, chat, "whatsapp", "pending", source="meta_lead_ads:1", at=NOW - dt.timedelta(hours=1))
        record_consent(conn, late, "sms", "pending", source="meta_lead_ads:1", at=NOW - dt.timedelta(days=31))
    _post_twilio(site, twilio, twilio.inbound("+4915112345671", "Yes"))
    _post_twilio(site, twilio, twilio.inbound("whatsapp:+4915112345672", "START"))
    _post_twilio(site, twilio, twilio.inbound("+4915112345673", "START"))
    with site.store.engine.connect() as conn:
        latest = {cid: conn.execute(select(consent_t.c.channel, consent_t.c.status, consent_t.c.source,
                                           consent_t.c.confirmed_at).where(consent_t.c.contact_id == cid)
                                    .order_by(consent_t.c.id.desc())).first() for cid in (sms, chat, late)}
    assert tuple(latest[sms]) == ("sms", "granted", "twilio:YES", NOW)
    assert tuple(latest[chat]) == ("whatsapp", "granted", "twilio:START", NOW)
    assert tuple(latest[late]) == ("sms", "pending", "meta_lead_ads:1", None)
    assert _count(site.store, consent_t) == 5


def test_status_callbacks_record_undelivered_messages_and_suppress_dead_numbers(site, twilio, tmp_path):
    from integrations.twilio import TwilioSettings, TwilioSmsChannel
    from nurture.registry import IntegrationContext, OutgoingMessage
    cid = add_contact(site.store, "p@example.com", phone="+4915112345678")
    ctx = IntegrationContext(tmp_path, tmp_path, {"NURTURE_TWILIO_ACCOUNT_SID": twilio.account_sid,
                                                  "NURTURE_TWILIO_AUTH_TOKEN": twilio.auth_token,
                                                  "NURTURE_TWILIO_FROM": "+15005550006",
                                                  "NURTURE_TWILIO_BASE_URL": twilio.base_url})
    channel = TwilioSmsChannel(TwilioSettings.from_env(ctx), sleep=lambda s: None)
    sids = []
    with site.store.engine.begin() as conn:
        for step in ("a", "b"):
            pk = conn.execute(message_t.insert().values(
                contact_id=cid, journey="j", step_id=step, channel="sms", template="t", address="+4915112345678",
                status="sent", due_at=NOW, created_at=NOW, attempts=1)).inserted_primary_key[0]
            [result] = channel.send_batch([OutgoingMessage(pk, "", cid, "sms", "j", step, "marketing",
                                                           "+4915112345678", text="hi")])
            conn.execute(message_t.update().where(message_t.c.id == pk).values(provider_id=result.provider_id))
            sids.append(result.provider_id)

    assert _post_twilio(site, twilio, twilio.status_callback(sids[0], "delivered")).status_code == 200
    assert _post_twilio(site, twilio, twilio.status_callback(sids[1], "undelivered", "30006")).status_code == 200
    rows = {m.step_id: (m.status, m.reason) for m in messages(site.store, journey="j")}
    assert rows == {"a": ("sent", "delivered"), "b": ("failed", "twilio_undelivered: 30006")}
    assert _suppressions(site.store) == [(cid, "+4915112345678", "sms", "hard_bounce")]


# ---------------------------------------------------------------- bounces

def test_bounce_webhook_suppresses_hard_bounces_and_complaints(site):
    cid = subscriber(site.store, "angry@example.com")
    headers = {"Authorization": f"Bearer {HOOKS}"}
    payload = {"events": [
        {"type": "bounce", "email": "Gone@Example.com", "bounce_type": "hard", "timestamp": "2026-03-02T10:00:00Z"},
        {"type": "bounce", "email": "full@example.com", "bounce_type": "soft"},
        {"type": "complaint", "email": "angry@example.com"},
    ]}
    response = site.http.post("/webhooks/bounces", json=payload, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"applied": {"hard_bounce": 1, "soft_bounce_ignored": 1, "complaint": 1}, "errors": []}
    assert _suppressions(site.store) == [(None, "gone@example.com", "email", "hard_bounce"),
                                         (cid, "angry@example.com", "email", "complaint")]
    assert _consents(site.store, cid)[-1] == ("email", "revoked", "webhook:complaint", "test-1", NOW)

    assert site.http.post("/webhooks/bounces", json=payload, headers=headers).status_code == 200
    assert len(_suppressions(site.store)) == 2  # a replayed webhook adds nothing

    bad = site.http.post("/webhooks/bounces", json=[{"type": "bounced", "email": "x@example.com"},
                                                    {"type": "bounce", "email": "nope"}], headers=headers)
    assert bad.status_code == 422
    assert bad.json()["errors"][0].startswith("events[0].type") and bad.json()["errors"][1].startswith("events[1].email")
    assert site.http.post("/webhooks/bounces", json=payload).status_code == 401
    assert site.http.post("/webhooks/bounces", json=payload, headers={"Authorization": f"Bearer {INGEST}"}).status_code == 403


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # authentication: one backend is enough
def test_a_credential_with_a_non_ascii_character_is_refused_not_a_500(make_runtime):
    """hmac.compare_digest raises on a str holding non-ASCII text and str.encode on a lone
    surrogate: a header byte 0xE9 (headers are latin-1) or a JSON "\\ud800" write key was a 500
    for anyone, before any credential was checked."""
    rt = make_runtime({})
    env = {"NURTURE_TWILIO_AUTH_TOKEN": "twilio-auth-token-123", "NURTURE_HUBSPOT_CLIENT_SECRET": "hubspot-secret",
           "NURTURE_WRITE_KEY": "segment-write-key", "NURTURE_INGEST_TOKEN": "ingest-token-0123456789"}
    with running_site(rt, NOW, **env) as site:
        twilio = site.http.post("/webhooks/twilio", data={"From": "+4915112345678", "Body": "STOP"},
                                headers={"X-Twilio-Signature": "\xe9".encode("latin-1")})
        hubspot = site.http.post("/webhooks/hubspot", content=b"[]", headers={
            "X-HubSpot-Signature-v3": "\xe9".encode("latin-1"), "Content-Type": "application/json",
            "X-HubSpot-Request-Timestamp": str(int(NOW.timestamp() * 1000))})
        body = b'{"writeKey": "\\ud800", "type": "track", "event": "x", "userId": "u1"}'
        segment = [site.http.post(path, content=body, headers={"Content-Type": "application/json"})
                   for path in ("/v1/track", "/v1/batch")]
        ingest = site.http.post("/events", json=[], headers={"Authorization": "Bearer \xe9".encode("latin-1")})
    assert (twilio.status_code, hubspot.status_code, [r.status_code for r in segment], ingest.status_code) == \
        (403, 401, [401, 401], 403)

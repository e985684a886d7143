"""SMS through Twilio: the `sms.twilio` channel against a local fake that speaks Twilio's
Messages API (tests/fakes/twilio.py) — what is sent, and how each answer is recorded."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from integrations.twilio import TwilioSettings, TwilioSmsChannel
from nurture.registry import IntegrationContext, IntegrationError, OutgoingMessage, channel_for
from nurture.runtime.tick import run_tick
from nurture.store.tables import suppression_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber
from tests.fakes.twilio import CREATE_THEN_500, FakeTwilio

NOW = utc(2026, 3, 2, 12, 0)
PUBLIC = "https://mail.shop.example"
DEAL = journey_yaml("deal", """
- id: text
  send: {channel: sms, template: deal}
""")
DEAL_SMS = "Deal for {{ contact.first_name }}: https://shop.example/deal Reply STOP to opt out"


@pytest.fixture
def twilio():
    fake = FakeTwilio().start()
    yield fake
    fake.stop()


def _env(fake: FakeTwilio, **extra: str) -> dict[str, str]:
    return {"NURTURE_SMS_BACKEND": "twilio", "NURTURE_TWILIO_ACCOUNT_SID": fake.account_sid,
            "NURTURE_TWILIO_AUTH_TOKEN": fake.auth_token, "NURTURE_TWILIO_FROM": "+15005550006",
            "NURTURE_TWILIO_BASE_URL": fake.base_url, "NURTURE_PUBLIC_URL": PUBLIC, **extra}


def _channel(fake: FakeTwilio, sleeps: list, tmp_path, **extra: str) -> TwilioSmsChannel:
    settings = TwilioSettings.from_env(IntegrationContext(tmp_path, tmp_path, _env(fake, **extra)))
    return TwilioSmsChannel(settings, sleep=sleeps.append)


def _sms(pk: int, to: str, text: str = "Hello") -> OutgoingMessage:
    return OutgoingMessage(message_pk=pk, rfc_message_id=f"<{pk}@x>", contact_id=pk, channel="sms",
                           journey="deal", step_id="text", purpose="marketing", to=to, text=text)


def test_a_journey_sms_is_posted_as_twilio_expects_and_recorded_with_its_sid(make_runtime, store, twilio):
    rt = make_runtime({"deal": DEAL}, templates={"sms/deal.txt": DEAL_SMS})
    rt.env.update(_env(twilio))
    cid = subscriber(store, "ann@example.com", channels=("sms",), first_name="Ann", phone="+4915112345678")
    add_event(store, cid, "signup", NOW - dt.timedelta(minutes=1))

    run_tick(rt, "deal", NOW)

    [request] = twilio.requests
    assert request.auth == (twilio.account_sid, twilio.auth_token)
    assert request.content_type.startswith("application/x-www-form-urlencoded")
    assert request.form == {
        "To": "+4915112345678", "From": "+15005550006", "StatusCallback": f"{PUBLIC}/webhooks/twilio",
        "Body": "Deal for Ann: https://shop.example/deal?utm_source=nurture&utm_medium=sms&utm_campaign=deal"
                "&utm_content=text Reply STOP to opt out"}
    [row] = messages(store, journey="deal")
    assert row.status == "sent" and row.provider_id in twilio.messages and row.provider_id.startswith("SM")


def test_an_sms_whose_answer_is_lost_is_never_posted_twice_and_an_odd_sid_is_still_sent(make_runtime, store,
                                                                                         twilio):
    """Twilio created the message and the connection closed before its answer: the channel
    posted it again (a second SMS; the first left no trace). Now it is `failed` with reason
    delivery_unknown, for the operator to look up and re-queue. A 201 whose `sid` was a list
    failed the tick's record (SQLite cannot bind a list), silently: now it is `sent`."""
    from tests.fakes.twilio import ACCEPT_THEN_DROP, ODD_SID
    rt = make_runtime({"deal": DEAL}, templates={"sms/deal.txt": DEAL_SMS})
    rt.env.update(_env(twilio))
    lost, odd = "+4915112345671", "+4915112345672"
    twilio.script[lost], twilio.script[odd] = [ACCEPT_THEN_DROP], [ODD_SID]
    for i, phone in enumerate((lost, odd, "+4915112345673")):
        cid = subscriber(store, f"p{i}@example.com", channels=("sms",), first_name="Ann", phone=phone)
        add_event(store, cid, "signup", NOW - dt.timedelta(minutes=1))

    run_tick(rt, "deal", NOW)
    run_tick(rt, "deal", NOW + dt.timedelta(hours=1))  # nothing is sent again

    assert sorted(r.form["To"] for r in twilio.requests) == [lost, odd, "+4915112345673"]
    assert len(twilio.messages) == 3
    rows = {r.address: (r.status, (r.reason or "").split(":")[0], r.provider_id) for r in messages(store)}
    assert rows[lost] == ("failed", "delivery_unknown", None)
    assert rows[odd] == ("sent", "", None)
    assert rows["+4915112345673"][:2] == ("sent", "")


def test_error_21610_fails_the_message_and_suppresses_the_number_for_sms(make_runtime, store, twilio):
    rt = make_runtime({"deal": DEAL}, templates={"sms/deal.txt": DEAL_SMS})
    rt.env.update(_env(twilio))
    stopped = subscriber(store, "stop@example.com", channels=("sms",), phone="+4915100000001")
    fine = subscriber(store, "fine@example.com", channels=("sms",), phone="+4915100000002")
    for cid in (stopped, fine):
        add_event(store, cid, "signup", NOW - dt.timedelta(minutes=1))
    twilio.script["+4915100000001"] = [21610]

    run_tick(rt, "deal", NOW)

    rows = {m.contact_id: m for m in messages(store, journey="deal")}
    assert (rows[stopped].status, rows[stopped].reason) == ("failed", "twilio_21610: recipient unsubscribed (STOP)")
    assert rows[fine].status == "sent"
    with store.engine.connect() as conn:
        sup = conn.execute(select(suppression_t)).all()
    assert [(s.contact_id, s.address, s.channel, s.reason) for s in sup] == [(stopped, "+4915100000001", "sms", "sms_stop")]


@pytest.mark.parametrize("code", [21211, 21614])
def test_invalid_or_landline_numbers_fail_as_unreachable(twilio, tmp_path, code):
    twilio.script["+4930123456789"] = [code]
    [result] = _channel(twilio, [], tmp_path).send_batch([_sms(1, "+4930123456789")])
    assert result.status == "failed" and result.reason.startswith(f"unreachable: twilio_{code}")
    assert result.suppress is None


def test_429_and_5xx_are_retried_with_backoff_then_succeed(twilio, tmp_path):
    sleeps: list[float] = []
    twilio.script["+4915100000003"] = [429, 503]
    [result] = _channel(twilio, sleeps, tmp_path).send_batch([_sms(1, "+4915100000003")])
    assert result.status == "sent" and result.provider_id.startswith("SM")
    assert len(twilio.requests) == 3
    # backoff 0.5 s before the 2nd try (plus the 1 s Retry-After of the 429), 1 s before the 3rd
    assert sleeps == [1.0, 0.5, 1.0]


def test_a_provider_that_stays_down_yields_retry_for_the_engine_to_requeue(twilio, tmp_path):
    sleeps: list[float] = []
    twilio.script["+4915100000004"] = [503, 429, 503, 503]
    [result] = _channel(twilio, sleeps, tmp_path).send_batch([_sms(7, "+4915100000004")])
    assert (result.status, result.reason) == ("retry", "twilio_http_503")
    assert len(twilio.requests) == 4 and sleeps == [0.5, 1.0, 1.0, 2.0]  # the 429's Retry-After: 1


@pytest.mark.parametrize("fault", [CREATE_THEN_500, 502, 504])
def test_a_server_error_after_the_request_reached_twilio_is_never_sent_again(twilio, tmp_path, fault):
    """Twilio's error 20500 page: sending an SMS is not idempotent — a retry after a 500 may
    send it twice. A 500 (here the message was created before it) and the gateways' 502/504 are
    `delivery_unknown`, with one request only; the next message of the batch still goes."""
    sleeps: list[float] = []
    twilio.script["+4915100000005"] = [fault]
    doubt, ok = _channel(twilio, sleeps, tmp_path).send_batch([_sms(8, "+4915100000005"), _sms(9, "+4915100000006")])
    http = 500 if fault == CREATE_THEN_500 else fault
    assert doubt.status == "failed" and doubt.reason.startswith(f"delivery_unknown: twilio_http_{http}: ")
    assert ok.status == "sent"
    assert [r.form["To"] for r in twilio.requests] == ["+4915100000005", "+4915100000006"] and sleeps == []
    assert sum(m["to"] == "+4915100000005" for m in twilio.messages.values()) == (1 if fault == CREATE_THEN_500 else 0)


def test_numbers_are_normalized_to_e164_and_garbage_never_reaches_twilio(twilio, tmp_path):
    channel = _channel(twilio, [], tmp_path, NURTURE_DEFAULT_COUNTRY="DE")
    ok, national, bad = channel.send_batch([_sms(1, "+49 (151) 1234-5678"), _sms(2, "0151 12345679"), _sms(3, "12")])
    assert [r.form["To"] for r in twilio.requests] == ["+4915112345678", "+4915112345679"]
    assert ok.status == national.status == "sent"
    assert (bad.status, bad.reason) == ("failed", "unreachable: not a valid phone number")


def test_messaging_service_sid_replaces_from(twilio, tmp_path):
    channel = _channel(twilio, [], tmp_path, NURTURE_TWILIO_FROM="",
                       NURTURE_TWILIO_MESSAGING_SERVICE_SID="MG" + "1" * 32)
    [result] = channel.send_batch([_sms(1, "+4915112345678")])
    assert result.status == "sent"
    assert "From" not in twilio.requests[0].form and twilio.requests[0].form["MessagingServiceSid"] == "MG" + "1" * 32


def test_wrong_credentials_keep_messages_queued_and_never_show_the_token(twilio, tmp_path):
    channel = _channel(twilio, [], tmp_path, NURTURE_TWILIO_AUTH_TOKEN="not-the-token-1234")
    [result] = channel.send_batch([_sms(1, "+4915112345678")])
    assert (result.status, result.reason) == ("unavailable", "twilio_auth_failed: twilio_20003")
    assert "not-the-token-1234" not in repr(channel.settings)


@pytest.mark.parametrize("missing, problem", [
    ("NURTURE_TWILIO_AUTH_TOKEN", "NURTURE_TWILIO_ACCOUNT_SID and NURTURE_TWILIO_AUTH_TOKEN"),
    ("NURTURE_TWILIO_FROM", "NURTURE_TWILIO_FROM"),
])
def test_missing_settings_are_a_clear_error(twilio, tmp_path, missing, problem):
    env = {**_env(twilio), missing: ""}
    with pytest.raises(IntegrationError, match=problem):
        channel_for("sms", IntegrationContext(tmp_path, tmp_path, env))

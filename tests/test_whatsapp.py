"""WhatsApp (opt-in only) and channel priority with fallback.

- The `whatsapp` channel: its own consent channel with an explicit opt-in (transactional too),
  phone addresses, the SMS quiet hours unless it has its own, caps per channel and `any`; free
  text only inside the 24-hour session an inbound message opens, the approved template
  (`content_sid` + `content_variables`) outside it; the file channel as the embedded default and
  Twilio's Messages API (a local fake that checks the WhatsApp rules) for real.
- Inbound WhatsApp messages through the signed Twilio webhook: any message opens the session,
  STOP revokes WhatsApp consent and suppresses the number for WhatsApp only.
- `send: {channels: [whatsapp, sms, email], …}`: the first channel whose checks pass, decided in
  the send transaction; the message log keeps the channel and why the others were passed over.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from nurture.messages import message_log
from nurture.runtime import run_tick
from nurture.spec.project import load_project
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, add_event, messages, set_consent
from tests.fakes.twilio import FakeTwilio

NOW = utc(2026, 3, 4, 12, 0)  # 12:00 UTC: outside every default quiet window
SID = "HX" + "0123456789abcdef" * 2
TEMPLATES = {"whatsapp/deal.txt": "Hi {{ contact.first_name }}, your cart is waiting: https://shop.example/cart",
             "sms/deal.txt": "Cart waiting, {{ contact.first_name }}. Reply STOP to opt out",
             "email/deal.html": "<p>Your cart, {{ contact.first_name }}</p><a href=\"{{ links.unsubscribe }}\">unsubscribe</a>"}
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def journey(send: str, purpose: str = "marketing") -> dict[str, str]:
    return {"cart": f"name: cart\ntrigger: {{event: signup}}\nsteps:\n  - id: nudge\n    send: {{{send}, purpose: {purpose}}}\n"}


def whatsapp_lines(rt) -> list[dict]:
    path = rt.data_dir / "outbox" / "whatsapp.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lead(store, email="ann@example.com", *, phone="+4915112345678", channels=("whatsapp",), at=NOW, **fields):
    cid = add_contact(store, email, phone=phone, first_name="Ann", **fields)
    for channel in channels:
        set_consent(store, cid, channel)
    add_event(store, cid, "signup", at - dt.timedelta(minutes=1))
    return cid


# ---------------------------------------------------------------- the channel


@SQLITE
def test_outside_the_session_the_approved_template_goes_inside_it_free_text(make_runtime, store):
    rt = make_runtime(journey(f'channel: whatsapp, template: deal, content_sid: "{SID}", '
                              'content_variables: {"1": "{{ contact.first_name }}"}'), templates=TEMPLATES)
    ann = lead(store, "ann@example.com")
    bob = lead(store, "bob@example.com", phone="+4915112345679")
    add_event(store, bob, "whatsapp_received", NOW - dt.timedelta(hours=23))  # bob wrote yesterday
    run_tick(rt, "cart", NOW)
    by_to = {line["to"]: line for line in whatsapp_lines(rt)}
    assert by_to["whatsapp:+4915112345678"]["content_sid"] == SID
    assert by_to["whatsapp:+4915112345678"]["content_variables"] == {"1": "Ann"}
    assert "content_sid" not in by_to["whatsapp:+4915112345679"]
    assert by_to["whatsapp:+4915112345679"]["body"].startswith("Hi Ann, your cart is waiting")
    assert {(m.contact_id, m.channel, m.status, m.address) for m in messages(store)} == {
        (ann, "whatsapp", "sent", "+4915112345678"), (bob, "whatsapp", "sent", "+4915112345679")}


@SQLITE
def test_free_text_only_reaches_contacts_with_an_open_session(make_runtime, store):
    rt = make_runtime(journey("channel: whatsapp, template: deal"), templates=TEMPLATES)
    closed = lead(store, "old@example.com", phone="+4915112345670")
    add_event(store, closed, "whatsapp_received", NOW - dt.timedelta(hours=25))  # the window closed an hour ago
    open_ = lead(store, "new@example.com", phone="+4915112345671")
    add_event(store, open_, "whatsapp_received", NOW - dt.timedelta(hours=2))
    run_tick(rt, "cart", NOW)
    assert {(m.contact_id, m.status, m.reason) for m in messages(store)} == {
        (closed, "skipped", "whatsapp_session_closed"), (open_, "sent", None)}
    assert [line["to"] for line in whatsapp_lines(rt)] == ["whatsapp:+4915112345671"]


@SQLITE
@pytest.mark.parametrize("purpose", ["marketing", "transactional"])
def test_whatsapp_needs_an_explicit_opt_in_for_every_purpose(make_runtime, store, purpose):
    rt = make_runtime(journey(f'channel: whatsapp, template: deal, content_sid: "{SID}"', purpose), templates=TEMPLATES)
    lead(store, channels=("sms",))  # an SMS opt-in is not a WhatsApp opt-in
    nophone = lead(store, "nophone@example.com", phone=None)
    run_tick(rt, "cart", NOW)
    assert sorted((m.status, m.reason) for m in messages(store)) == [("skipped", "no_phone"), ("suppressed", "no_consent")] \
        if purpose == "marketing" else [("suppressed", "no_consent"), ("suppressed", "no_consent")]
    assert nophone and whatsapp_lines(rt) == []


@SQLITE
def test_whatsapp_keeps_the_sms_quiet_hours_and_counts_against_the_any_cap(make_runtime, store):
    rt = make_runtime(journey(f'channel: whatsapp, template: deal, content_sid: "{SID}"'), templates=TEMPLATES)
    night = utc(2026, 3, 4, 19, 30)  # 20:30 in Berlin: inside the SMS hours 20:00–09:00
    lead(store, timezone="Europe/Berlin", at=night)
    run_tick(rt, "cart", night)
    [deferred] = messages(store)
    assert (deferred.status, deferred.reason, deferred.due_at) == ("deferred", "quiet_hours", utc(2026, 3, 5, 8, 0))
    run_tick(rt, "cart", utc(2026, 3, 5, 8, 0))
    assert [m.status for m in messages(store)] == ["deferred", "sent"]


@SQLITE
def test_a_whatsapp_cap_holds_across_journeys(make_project, store):
    from nurture.runtime.context import Runtime
    policies = ("version: '1'\ntimezone: UTC\nfrequency_caps:\n  - {channel: whatsapp, max: 1, per: 7d}\n")
    root = make_project({**journey(f'channel: whatsapp, template: deal, content_sid: "{SID}"'),
                         "again": "name: again\ntrigger: {event: signup}\nsteps:\n  - id: twice\n"
                                  f"    send: {{channel: whatsapp, template: deal, content_sid: \"{SID}\"}}\n"},
                        templates=TEMPLATES, policies=policies)
    rt = Runtime(store, load_project(root), env={"NURTURE_DATA_DIR": str(root / ".nurture")})
    lead(store)
    run_tick(rt, "cart", NOW)
    run_tick(rt, "again", NOW + dt.timedelta(minutes=5))
    assert [(m.journey, m.status, m.reason) for m in messages(store)] == [
        ("cart", "sent", None), ("again", "deferred", "frequency_cap")]


# ---------------------------------------------------------------- Twilio


@pytest.fixture
def twilio():
    fake = FakeTwilio().start()
    yield fake
    fake.stop()


def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    return {"NURTURE_WHATSAPP_BACKEND": "twilio", "NURTURE_TWILIO_ACCOUNT_SID": fake.account_sid,
            "NURTURE_TWILIO_AUTH_TOKEN": fake.auth_token, "NURTURE_TWILIO_WHATSAPP_FROM": "+15005550006",
            "NURTURE_TWILIO_BASE_URL": fake.base_url}


@SQLITE
def test_twilio_gets_the_template_outside_the_window_and_free_text_inside(make_runtime, store, twilio):
    rt = make_runtime(journey(f'channel: whatsapp, template: deal, content_sid: "{SID}", '
                              'content_variables: {"1": "{{ contact.first_name }}", "2": "{{ event.name }}"}'),
                      templates=TEMPLATES)
    rt.env.update(twilio_env(twilio))
    lead(store, "ann@example.com", phone="+4915112345678")
    bob = lead(store, "bob@example.com", phone="+4915112345679")
    add_event(store, bob, "whatsapp_received", NOW - dt.timedelta(hours=1))
    twilio.sessions.add("+4915112345679")
    run_tick(rt, "cart", NOW)
    forms = {r.form["To"]: r.form for r in twilio.requests}
    template = forms["whatsapp:+4915112345678"]
    assert template["From"] == "whatsapp:+15005550006" and template["ContentSid"] == SID
    assert json.loads(template["ContentVariables"]) == {"1": "Ann", "2": "signup"} and "Body" not in template
    text = forms["whatsapp:+4915112345679"]
    assert text["Body"].startswith("Hi Ann, your cart is waiting") and "ContentSid" not in text
    assert [(m.status, m.provider_id[:2]) for m in messages(store)] == [("sent", "SM"), ("sent", "SM")]


@SQLITE
def test_twilio_refusing_free_text_outside_the_window_is_recorded_not_dropped(make_runtime, store, twilio):
    """Our record of the session says open, Twilio's says closed (an inbound message we never
    saw the webhook of): error 63016 is a failed message with Twilio's reason."""
    rt = make_runtime(journey("channel: whatsapp, template: deal"), templates=TEMPLATES)
    rt.env.update(twilio_env(twilio))
    ann = lead(store)
    add_event(store, ann, "whatsapp_received", NOW - dt.timedelta(hours=1))
    run_tick(rt, "cart", NOW)
    [m] = messages(store)
    assert m.status == "failed" and m.reason.startswith("twilio_63016")


@SQLITE
def test_inbound_whatsapp_opens_the_session_and_stop_ends_whatsapp_only(make_runtime, store, twilio):
    from tests.test_web_site import running_site
    rt = make_runtime(journey("channel: whatsapp, template: deal"), templates=TEMPLATES)
    ann = lead(store, channels=("whatsapp", "sms"))
    with running_site(rt, NOW - dt.timedelta(minutes=30), NURTURE_TWILIO_AUTH_TOKEN=twilio.auth_token) as site:
        url = site.url + "/webhooks/twilio"
        hello = twilio.inbound("whatsapp:+4915112345678", "Hi, is the jacket still there?", to="whatsapp:+15005550006")
        response = site.http.post("/webhooks/twilio", data=hello,
                                  headers={"X-Twilio-Signature": twilio.signature(url, hello)})
        assert response.status_code == 200
        run_tick(rt, "cart", NOW)
        assert [(m.status, m.reason) for m in messages(store)] == [("sent", None)]  # free text: the session is open

        stop = twilio.inbound("whatsapp:+4915112345678", "STOP", to="whatsapp:+15005550006")
        site.http.post("/webhooks/twilio", data=stop, headers={"X-Twilio-Signature": twilio.signature(url, stop)})
    from tests.test_web_webhooks import _consents, _suppressions
    assert _suppressions(store) == [(ann, "+4915112345678", "whatsapp", "whatsapp_stop")]
    latest = {}
    for channel, status, *_ in _consents(store, ann):
        latest[channel] = status
    assert latest == {"whatsapp": "revoked", "sms": "granted"}


def test_start_after_stop_gives_back_each_purpose_the_stop_revoked(store):
    """WhatsApp STOP revokes both purposes; START granted marketing only, so order updates stayed
    `suppressed consent_revoked` for good. START restores each purpose that was granted before
    the STOP — and grants none that was not."""
    from nurture.consent_ledger import current_consent
    from nurture.web.webhooks import twilio_inbound
    both = add_contact(store, "wa@example.com", phone="+4915112345678")
    set_consent(store, both, "whatsapp", purpose="marketing")
    set_consent(store, both, "whatsapp", purpose="transactional")
    only_orders = add_contact(store, "wb@example.com", phone="+4915112345679")
    set_consent(store, only_orders, "whatsapp", purpose="transactional")
    with store.engine.begin() as conn:
        for i, (phone, body) in enumerate([("+4915112345678", "STOP"), ("+4915112345678", "START"),
                                           ("+4915112345679", "STOP"), ("+4915112345679", "START")]):
            twilio_inbound(conn, {"From": f"whatsapp:{phone}", "Body": body, "MessageSid": f"SM{i}"},
                           now=utc(2026, 3, 1, i), policy_version="v")
    with store.engine.connect() as conn:
        states = {(cid, purpose): current_consent(conn, [cid], "whatsapp", purpose, NOW).get(cid, ("none",))[0]
                  for cid in (both, only_orders) for purpose in ("marketing", "transactional")}
    assert states == {(both, "marketing"): "granted", (both, "transactional"): "granted",
                      (only_orders, "marketing"): "revoked", (only_orders, "transactional"): "granted"}


# ---------------------------------------------------------------- fallback

FALLBACK = journey('channels: [whatsapp, sms, email], template: deal, subject: "Your cart", '
                   f'content_sid: "{SID}"')


def test_the_first_channel_whose_checks_pass_wins_and_the_log_says_why(make_runtime, store):
    rt = make_runtime(FALLBACK, templates=TEMPLATES,
                      policies="version: '1'\ntimezone: UTC\ndouble_opt_in: {}\n"
                               "quiet_hours:\n  email: {start: '21:00', end: '08:00'}\n  sms: {start: '20:00', end: '09:00'}\n")
    wa = lead(store, "wa@example.com", phone="+4915112345671", channels=("whatsapp", "sms", "email"))
    sms = lead(store, "sms@example.com", phone="+4915112345672", channels=("sms", "email"))
    mail = lead(store, "mail@example.com", phone=None, channels=("email",))
    nobody = lead(store, "nobody@example.com", phone="+4915112345674", channels=())
    run_tick(rt, "cart", NOW)
    log = {m["contact"]: m for m in message_log(store)}
    assert {c: (m["channel"], m["status"], m["reason"], m["passed_over"]) for c, m in log.items()} == {
        "wa@example.com": ("whatsapp", "sent", None, None),
        "sms@example.com": ("sms", "sent", None, "whatsapp: no_consent"),
        "mail@example.com": ("email", "sent", None, "whatsapp: no_consent; sms: no_consent"),  # consent is check 1
        # no channel may: the first channel's refusal stands, the others are named
        "nobody@example.com": ("whatsapp", "suppressed", "no_consent", "sms: no_consent; email: no_consent"),
    }
    assert log["sms@example.com"]["to"] == "+4915112345672" and log["mail@example.com"]["to"] == "mail@example.com"
    assert wa and sms and mail and nobody
    assert len(whatsapp_lines(rt)) == 1
    assert len(list((rt.data_dir / "outbox" / "email" / "cart").glob("*.eml"))) == 1


@SQLITE
def test_when_every_channel_must_wait_the_earliest_window_is_taken_and_all_are_tried_again(make_runtime, store):
    rt = make_runtime(FALLBACK, templates=TEMPLATES,
                      policies="version: '1'\ntimezone: UTC\ndouble_opt_in: {}\nquiet_hours:\n"
                               "  email: {start: '21:00', end: '07:00'}\n  sms: {start: '20:00', end: '09:00'}\n")
    night = utc(2026, 3, 4, 22, 0)
    lead(store, "late@example.com", phone="+4915112345675", channels=("sms", "email"), at=night)
    run_tick(rt, "cart", night)
    [deferred] = messages(store)
    # sms opens at 09:00, e-mail at 07:00: the message waits for 07:00, and then every channel is tried again
    assert (deferred.channel, deferred.status, deferred.reason, deferred.due_at, deferred.passed_over) == \
        ("email", "deferred", "quiet_hours", utc(2026, 3, 5, 7, 0), "whatsapp: no_consent; sms: quiet_hours")
    run_tick(rt, "cart", utc(2026, 3, 5, 7, 0))
    sent = messages(store)[-1]
    assert (sent.channel, sent.status, sent.passed_over) == ("email", "sent", "whatsapp: no_consent; sms: quiet_hours")


@SQLITE
def test_a_message_queued_on_one_channel_counts_against_the_any_cap_of_the_next(make_project, store):
    """What the send transaction queued on an earlier channel (`pending`) counts against the
    caps of the later channels: one contact twice in a batch cannot pass an `any` cap of 1 by
    falling back from WhatsApp to SMS."""
    from nurture.runtime.context import Runtime
    from nurture.send.guards.pipeline import Recipient, check_batch
    root = make_project(FALLBACK, templates=TEMPLATES, policies="version: '1'\ntimezone: UTC\nfrequency_caps:\n"
                                                                 "  - {channel: any, max: 1, per: 7d}\n")
    rt = Runtime(store, load_project(root), env={"NURTURE_DATA_DIR": str(root / ".nurture")})
    cid = lead(store, channels=("whatsapp", "sms"))
    rules = rt.send_rules(rt.plan("cart"), "sms", "marketing", "nudge")
    with store.engine.begin() as conn:
        [free] = check_batch(conn, rules, [Recipient(cid, None, "+4915112345678", None, None)], NOW, pending={})
        [capped] = check_batch(conn, rules, [Recipient(cid, None, "+4915112345678", None, None)], NOW,
                               pending={cid: [("whatsapp", NOW)]})
    assert (free.status, capped.status, capped.reason) == ("queued", "deferred", "frequency_cap")


@pytest.mark.parametrize("send, message", [
    ('channel: sms, channels: [sms, email], template: deal', "either 'channel' or 'channels'"),
    ('channels: [], template: deal', "'channels' is a list of channels"),
    ('channels: [sms, sms], template: deal', "names a channel twice"),
    ('channels: [sms, email], template: deal', "'channels' includes email: the send needs a subject"),
    ('channels: [whatsapp, sms], template: deal, subject: Hi', "only e-mail has a subject"),
    (f'channel: sms, template: deal, content_sid: "{SID}"', "has no whatsapp channel"),
    ('channel: whatsapp, template: deal, content_sid: "HX12"', "not a Twilio Content SID"),
    ('channel: whatsapp, template: deal, content_variables: {"1": x}', "add the content_sid"),
    ('channels: [whatsapp, pigeon], template: deal', "'pigeon' is not allowed here"),
])
def test_send_channel_mistakes_are_located_errors(tmp_path, send, message):
    root = write_project(tmp_path / "p", journey(send), templates=TEMPLATES)
    errors = [str(e) for e in load_project(root).errors]
    assert any(e.startswith("journeys/cart.yaml:5:") and message in e for e in errors), errors


def test_every_channel_of_a_fallback_needs_its_template(tmp_path):
    templates = {k: v for k, v in TEMPLATES.items() if not k.startswith("whatsapp/")}
    root = write_project(tmp_path / "p", FALLBACK, templates=templates)
    errors = [str(e) for e in load_project(root).errors]
    assert any("template 'deal' not found: expected templates/whatsapp/deal.txt" in e for e in errors), errors


@SQLITE
def test_test_send_takes_the_channel_of_a_fallback_step(make_runtime, store):
    from nurture.test_send import SeedSendError, send_test
    rt = make_runtime(FALLBACK, templates=TEMPLATES)
    result = send_test(rt, "cart", "nudge", "+4915112345600", channel="whatsapp")
    assert result.sent and result.channel == "whatsapp"
    [line] = whatsapp_lines(rt)
    assert line["to"] == "whatsapp:+4915112345600" and line["content_sid"] == SID and line["body"].startswith("[TEST] ")
    assert messages(store) == []
    with pytest.raises(SeedSendError, match="does not send on push"):
        send_test(rt, "cart", "nudge", "+4915112345600", channel="push")


@SQLITE
def test_a_phone_only_contact_gets_whatsapp_end_to_end(make_runtime, store):
    rt = make_runtime(journey(f'channel: whatsapp, template: deal, content_sid: "{SID}"'), templates=TEMPLATES)
    cid = lead(store, None, phone="+4915112345699")
    run_tick(rt, "cart", NOW)
    assert [(m.contact_id, m.status, m.address) for m in messages(store)] == [(cid, "sent", "+4915112345699")]
    assert message_log(store)[0]["contact"] == "+4915112345699"


@SQLITE
def test_whatsapp_status_callbacks_record_read_and_failed_with_a_whatsapp_suppression(make_runtime, store, twilio):
    from tests.test_web_site import running_site
    from tests.test_web_webhooks import _suppressions
    rt = make_runtime(journey(f'channel: whatsapp, template: deal, content_sid: "{SID}"'), templates=TEMPLATES)
    rt.env.update(twilio_env(twilio))
    ann = lead(store, "ann@example.com", phone="+4915112345678")
    bob = lead(store, "bob@example.com", phone="+4915112345679")
    run_tick(rt, "cart", NOW)
    sids = {m.contact_id: m.provider_id for m in messages(store)}
    with running_site(rt, NOW, NURTURE_TWILIO_AUTH_TOKEN=twilio.auth_token) as site:
        url = site.url + "/webhooks/twilio"
        for sid, status, code in ((sids[ann], "read", None), (sids[bob], "failed", "21610")):
            params = twilio.status_callback(sid, status, code)
            assert site.http.post("/webhooks/twilio", data=params,
                                  headers={"X-Twilio-Signature": twilio.signature(url, params)}).status_code == 200
    by_contact = {m.contact_id: (m.status, m.reason) for m in messages(store)}
    assert by_contact == {ann: ("sent", "read"), bob: ("failed", "twilio_failed: 21610")}
    assert _suppressions(store) == [(bob, "+4915112345679", "whatsapp", "whatsapp_stop")]

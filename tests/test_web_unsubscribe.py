"""One-click unsubscribe (RFC 8058) and the preference center, served by uvicorn on
127.0.0.1: the link from a delivered e-mail unsubscribes before the next send; the page is
accessible and works without JavaScript; bad tokens change nothing."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import re

import pytest
from sqlalchemy import func, select

from nurture.runtime.tick import run_tick
from nurture.store.tables import consent_t, suppression_t
from nurture.tokens import make_token
from tests.conftest import utc
from tests.engine_fixtures import add_event, contact_row, journey_yaml, messages, subscriber
from tests.test_web_site import SECRET, SYSTEM_TEMPLATES, running_site

NOW = utc(2026, 3, 2, 12, 0)
NEWS = journey_yaml("news", """
- id: first
  send: {channel: email, template: hello, subject: "News"}
- id: pause
  wait: 1d
- id: second
  send: {channel: email, template: hello, subject: "More news"}
""", extra="topic: product_news")
TIPS = journey_yaml("tips", """
- id: tip
  send: {channel: email, template: hello, subject: "A tip"}
""", extra="topic: tips")


@pytest.fixture
def site(make_runtime):
    rt = make_runtime({"news": NEWS, "tips": TIPS}, templates=SYSTEM_TEMPLATES)
    with running_site(rt, NOW) as s:
        yield s


def _ledger(store, contact_id):
    with store.engine.connect() as conn:
        return conn.execute(select(consent_t.c.channel, consent_t.c.purpose, consent_t.c.status, consent_t.c.source,
                                   consent_t.c.policy_version, consent_t.c.recorded_at, consent_t.c.confirmed_at)
                            .where(consent_t.c.contact_id == contact_id).order_by(consent_t.c.id)).all()


def _suppressions(store):
    with store.engine.connect() as conn:
        return [(s.contact_id, s.address, s.channel, s.reason) for s in conn.execute(select(suppression_t))]


def _token(contact_id: int, channel: str = "email") -> str:
    return make_token(SECRET, "unsubscribe", contact_id, "marketing", channel)


def test_one_click_link_from_a_delivered_email_unsubscribes_before_the_next_send(site):
    cid = subscriber(site.store, "ann@example.com", first_name="Ann")
    add_event(site.store, cid, "signup", NOW - dt.timedelta(minutes=1))
    run_tick(site.rt, "news", NOW)
    [eml] = (site.rt.data_dir / "outbox" / "email" / "news").glob("*.eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    one_click = re.search(r"<(http[^>]+)>", str(msg["List-Unsubscribe"])).group(1)
    assert one_click.startswith(site.url + "/u/")

    site.at(NOW + dt.timedelta(hours=2))
    # What a mailbox provider does (RFC 8058 §3.1): POST, form body, no cookies, no redirects followed.
    response = site.http.post(one_click, content="List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert "location" not in response.headers and "set-cookie" not in response.headers
    assert "You are unsubscribed from marketing e-mail" in response.text
    assert _ledger(site.store, cid)[-1] == ("email", "marketing", "revoked", "list-unsubscribe:one-click", "test-1",
                                            NOW + dt.timedelta(hours=2), None)
    assert _suppressions(site.store) == [(cid, "ann@example.com", "email", "unsubscribed")]

    run_tick(site.rt, "news", NOW + dt.timedelta(days=1, hours=1))
    assert [(m.step_id, m.status, m.reason) for m in messages(site.store, journey="news")] == \
        [("first", "sent", None), ("second", "suppressed", "consent_revoked")]

    # A second POST (providers may retry) is harmless: nothing new is written.
    assert site.http.post(one_click, content="List-Unsubscribe=One-Click").status_code == 200
    assert len(_ledger(site.store, cid)) == 2 and len(_suppressions(site.store)) == 1


def test_the_preference_center_page_is_accessible_and_needs_no_javascript(site):
    cid = subscriber(site.store, "bo@example.com", channels=("email", "sms"), phone="+4915112345678")
    before = _ledger(site.store, cid)
    token = _token(cid)  # (once: a token minted a second later carries a later expiry)
    page = site.http.get(f"/u/{token}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<html lang="en">' in html and "<script" not in html.lower() and html.count("<h1>") == 1
    assert "<legend>What we may send you</legend>" in html and "<legend>Topics</legend>" in html
    for box in re.findall(r'<input type="checkbox" id="([^"]+)"', html):
        assert f'<label for="{box}">' in html  # every checkbox has its own label
    assert re.search(r'id="channel-email" name="channel" value="email" checked', html)
    assert re.search(r'id="channel-sms" name="channel" value="sms" checked', html)
    assert 'value="product_news" aria-describedby="topics-hint" checked' in html
    assert f'action="{site.url}/u/{token}/preferences"' in html and 'method="post"' in html
    assert _ledger(site.store, cid) == before  # looking changes nothing (link scanners GET)


def test_saving_preferences_opts_out_of_a_topic_and_a_channel_and_back_in(site):
    cid = subscriber(site.store, "cy@example.com", channels=("email", "sms"), phone="+4915112345679")
    token = _token(cid)
    form = {"channel": ["email", "sms"], "topic": ["product_news"]}  # 'tips' unticked
    response = site.http.post(f"/u/{token}/preferences", data=form)
    assert response.status_code == 200 and "Your preferences are saved." in response.text
    assert contact_row(site.store, cid).attributes["topics_opted_out"] == ["tips"]
    assert [r[2] for r in _ledger(site.store, cid)] == ["granted", "granted"]  # channels untouched

    # Topic opt-out reaches the send pipeline.
    add_event(site.store, cid, "signup", NOW)
    run_tick(site.rt, "tips", NOW + dt.timedelta(minutes=1))
    assert [(m.status, m.reason) for m in messages(site.store, journey="tips")] == [("suppressed", "topic_opt_out")]

    site.at(NOW + dt.timedelta(hours=1))
    site.http.post(f"/u/{token}/preferences", data={"channel": ["sms"], "topic": ["product_news", "tips"]})
    assert contact_row(site.store, cid).attributes["topics_opted_out"] == []
    last = _ledger(site.store, cid)[-1]
    assert last[:4] == ("email", "marketing", "revoked", "web:preference_center")
    assert _suppressions(site.store) == [(cid, "cy@example.com", "email", "unsubscribed")]

    site.at(NOW + dt.timedelta(hours=2))
    page = site.http.post(f"/u/{token}/preferences", data={"channel": ["email", "sms"], "topic": ["product_news", "tips"]})
    assert re.search(r'id="channel-email" name="channel" value="email" checked', page.text)
    channel, purpose, status, source, version, at, confirmed = _ledger(site.store, cid)[-1]
    assert (channel, status, source, version, confirmed) == ("email", "granted", "web:preference_center", "test-1",
                                                             NOW + dt.timedelta(hours=2))
    assert _suppressions(site.store) == []


def test_an_sms_preference_link_asks_the_mailbox_to_confirm_an_email_subscription(site):
    """The preference center reached from an SMS recorded the contact's e-mail as double-opt-in
    confirmed ("the signed link proves control of the mailbox"), but that link went to a phone.
    E-mail asked for there goes through double opt-in: pending, and a confirmation e-mail."""
    from nurture.send.system_mail import SYSTEM_JOURNEY
    from tests.engine_fixtures import add_contact
    cid = add_contact(site.store, "typo-or-someone-else@example.com", phone="+4915112345678")
    response = site.http.post(f"/u/{_token(cid, 'sms')}/preferences", data={"channel": "email"})
    assert response.status_code == 200 and "follow the link in the e-mail we are sending to it" in response.text
    assert [(r[0], r[2], r[3], r[6]) for r in _ledger(site.store, cid)] == [
        ("email", "pending", "web:preference_center", None)]
    assert [(m.step_id, m.address) for m in messages(site.store, journey=SYSTEM_JOURNEY)] == [
        ("confirm", "typo-or-someone-else@example.com")]
    add_event(site.store, cid, "signup", NOW + dt.timedelta(minutes=1))
    run_tick(site.rt, "news", NOW + dt.timedelta(minutes=2))
    assert [(m.step_id, m.status, m.reason) for m in messages(site.store, journey="news")] == [
        ("first", "suppressed", "consent_pending")]


def test_a_multipart_one_click_post_is_recorded_as_one_click(site):
    """RFC 8058 §3.1: the one-click POST SHOULD be multipart/form-data (urlencoded is the MAY).
    A multipart one was recorded `web:unsubscribe`, as if the page's button had been pressed."""
    ann = subscriber(site.store, "ann@example.com")
    bo = subscriber(site.store, "bo@example.com")
    assert site.http.post(f"/u/{_token(ann)}", files={"List-Unsubscribe": (None, "One-Click")}).status_code == 200
    assert site.http.post(f"/u/{_token(bo)}", files={"other": (None, "x")}).status_code == 200
    assert [r[2:4] for r in _ledger(site.store, ann)][-1] == ("revoked", "list-unsubscribe:one-click")
    assert [r[2:4] for r in _ledger(site.store, bo)][-1] == ("revoked", "web:unsubscribe")
    from nurture.web.app import form_fields
    body = (b'--b\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n'
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n\r\nfile\r\n--b--\r\n')
    assert form_fields("multipart/form-data; boundary=b", body) == {"List-Unsubscribe": "One-Click"}
    assert form_fields("multipart/form-data; boundary=b", b"garbage") == {}
    assert form_fields("", b"List-Unsubscribe=One-Click") == {"List-Unsubscribe": "One-Click"}
    # a part in a charset no codec has (LookupError, a 500 that lost the unsubscribe): read as UTF-8
    bogus = (b'--x\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n'
             b"Content-Type: text/plain; charset=bogus\r\n\r\nOne-Click\r\n--x--\r\n")
    assert form_fields("multipart/form-data; boundary=x", bogus) == {"List-Unsubscribe": "One-Click"}


BAD_TOKENS = {
    "tampered signature": lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
    "signed with another key": lambda t: make_token("another-secret-entirely", "unsubscribe", 1),
    "expired": lambda t: make_token(SECRET, "unsubscribe", 1, ttl=-60),
    "made for another action": lambda t: make_token(SECRET, "confirm", 1),
    "not a token at all": lambda t: "not-a-token",
}


def test_a_bad_token_gets_a_clear_400_page_and_changes_nothing(site):
    cid = subscriber(site.store, "dee@example.com")
    for why, mangle in BAD_TOKENS.items():
        bad = mangle(_token(cid))
        for response in (site.http.get(f"/u/{bad}"), site.http.post(f"/u/{bad}", content="List-Unsubscribe=One-Click"),
                         site.http.post(f"/u/{bad}/preferences", data={"topic": []})):
            assert response.status_code == 400, why
            assert "This link does not work" in response.text and 'role="alert"' in response.text, why
    with site.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consent_t)).scalar() == 1
    assert _suppressions(site.store) == [] and contact_row(site.store, cid).attributes == {}


def test_an_sms_unsubscribe_link_revokes_sms_marketing_only(site):
    cid = subscriber(site.store, "eve@example.com", channels=("email", "sms"), phone="+4915112345670")
    assert site.http.post(f"/u/{_token(cid, 'sms')}").status_code == 200
    assert [(r[0], r[2]) for r in _ledger(site.store, cid)] == [("email", "granted"), ("sms", "granted"), ("sms", "revoked")]
    assert _suppressions(site.store) == []


def test_oversized_bodies_are_refused_with_413(site):
    cid = subscriber(site.store, "big@example.com")
    response = site.http.post(f"/u/{_token(cid)}/preferences", content=b"topic=x&" * 200_000,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(300):
            yield b"x" * 4096
    assert site.http.post(f"/u/{_token(cid)}", content=chunks()).status_code == 413
    assert len(_ledger(site.store, cid)) == 1

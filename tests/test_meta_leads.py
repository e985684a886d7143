"""Meta Lead Ads (nurture.web.meta_leads, integrations.meta_leads): the webhook's subscription
check and signed `leadgen` notifications, each lead read from a fake Graph API on 127.0.0.1 →
a contact, its consent answers in the ledger, a `form_submit` event with the lead's source; a
redelivery adds nothing; an erased person's lead is refused; the journey it triggers enrolls."""
from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from nurture.privacy.erase import erase_emails
from nurture.registry import IntegrationContext
from nurture.runtime import Runtime, run_tick
from nurture.spec.project import load_project
from nurture.store.tables import consent_t, contact_t, enrollment_t, event_t, touch_t
from nurture.web import create_app
from nurture.web.meta_leads import meta_signature
from nurture.web.webhooks import twilio_signature
from tests.conftest import DEFAULT_POLICIES, REPO, utc
from tests.engine_fixtures import add_suppression, enrollments, journey_yaml, messages
from tests.fakes.http_server import Reply
from tests.fakes.meta import FakeMeta

NOW = utc(2026, 3, 2, 12, 0)
VERIFY = "verify-token-for-tests-31"
APP_SECRET = "meta-app-secret-for-tests-57"
TOKEN = "meta-page-token-for-tests-88"
TWILIO_TOKEN = "twilio-auth-token-for-tests-01"
FORM = "1234567890123"
LEAD = "987654321098765"
POLICIES = DEFAULT_POLICIES + "lead_forms:\n  consent: {email: [email_opt_in], sms: [sms_opt_in, SMS_OK]}\n"
NO_DOI = POLICIES.replace("double_opt_in: {email: [marketing]}", "double_opt_in: {}")
WELCOME = journey_yaml("welcome", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}",
                       trigger="{event: form_submit}")


@pytest.fixture
def graph():
    fake = FakeMeta(TOKEN).start()
    yield fake
    fake.stop()


def client(rt, graph, **env: str) -> TestClient:
    full = {**rt.env, "NURTURE_META_VERIFY_TOKEN": VERIFY, "NURTURE_META_APP_SECRET": APP_SECRET,
            "NURTURE_META_ACCESS_TOKEN": TOKEN, "NURTURE_META_BASE_URL": graph.url,
            "NURTURE_SYNC_BACKOFF_SECONDS": "0", "NURTURE_SYNC_MAX_ATTEMPTS": "3", "NURTURE_INSTANT": "0", **env}
    return TestClient(create_app(rt.store, rt.project, full, clock=lambda: NOW))


def notification(*leads: str, form: str = FORM) -> bytes:
    changes = [{"field": "leadgen", "value": {"leadgen_id": lead, "page_id": "444444444", "form_id": form,
                                              "adgroup_id": "23800000000002", "ad_id": "23800000000001",
                                              "created_time": 1772452740}} for lead in leads]
    return json.dumps({"object": "page", "entry": [{"id": "444444444", "time": 1772452741,
                                                    "changes": changes}]}).encode()


def post(http: TestClient, body: bytes, signature: str | bytes | None = None):
    headers = {"Content-Type": "application/json",
               "X-Hub-Signature-256": signature if signature is not None else meta_signature(APP_SECRET, body)}
    return http.post("/webhooks/meta/leads", content=body, headers=headers)


def add_ada(graph: FakeMeta, lead: str = LEAD, platform=None, **extra) -> None:
    graph.add_lead(lead, FORM, platform=platform, fields={"email": "Ada@Example.com", "full_name": "Ada King Lovelace",
                                "phone_number": "+49 151 12345678", "city": "Berlin", "country": "de",
                                "email_opt_in": "Yes", "sms_opt_in": "no", "budget": "10k-50k", **extra})


def count(store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def rows(store, table):
    with store.engine.connect() as conn:
        return conn.execute(select(table).order_by(*table.primary_key.columns)).all()


# ---------------------------------------------------------------- subscription check


def test_the_subscription_check_echoes_the_challenge_for_the_verify_token_only(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    with client(rt, graph) as http:
        ok = http.get("/webhooks/meta/leads", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                                      "hub.challenge": "1158201444"})
        assert (ok.status_code, ok.text) == (200, "1158201444")
        assert ok.headers["content-type"].startswith("text/plain")
        wrong = http.get("/webhooks/meta/leads", params={"hub.mode": "subscribe", "hub.verify_token": "guess",
                                                         "hub.challenge": "1"})
        assert wrong.status_code == 403 and "1" not in wrong.json()["error"].split()
        assert http.get("/webhooks/meta/leads", params={"hub.mode": "unsubscribe", "hub.verify_token": VERIFY,
                                                        "hub.challenge": "1"}).status_code == 403
        assert http.get("/webhooks/meta/leads", params={"hub.mode": "subscribe",
                                                        "hub.verify_token": VERIFY}).status_code == 400
    with client(rt, graph, NURTURE_META_VERIFY_TOKEN="") as http:
        assert http.get("/webhooks/meta/leads", params={"hub.mode": "subscribe", "hub.verify_token": "",
                                                        "hub.challenge": "1"}).status_code == 403


# ---------------------------------------------------------------- signatures and bodies


def test_a_missing_or_wrong_signature_stores_nothing_and_reads_no_lead(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    add_ada(graph)
    body = notification(LEAD)
    with client(rt, graph) as http:
        assert post(http, body, signature="").status_code == 401
        assert post(http, body, signature=meta_signature("another-secret", body)).status_code == 403
        assert post(http, body, signature="sha256=zz").status_code == 403
        assert post(http, body, signature=("sha256=" + "\u00e9" * 64).encode("latin-1")).status_code == 403
        assert post(http, body + b" ", signature=meta_signature(APP_SECRET, body)).status_code == 403
    with client(rt, graph, NURTURE_META_APP_SECRET="") as http:
        assert post(http, body).status_code == 403
    assert graph.requests == []
    assert count(rt.store, contact_t) == count(rt.store, event_t) == count(rt.store, consent_t) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # parsing: one backend is enough
@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b'{"object": "page", "entry": {}}', "entry"),
    (b'{"object": "page", "entry": [3]}', "entry[0]"),
    (b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": {"leadgen_id": "x1"}}]}]}',
     "entry[0].changes[0].value.leadgen_id"),
    (b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": {"leadgen_id": true}}]}]}',
     "entry[0].changes[0].value.leadgen_id"),
    (b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": "1"}]}]}',
     "entry[0].changes[0].value"),
    (b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": {"leadgen_id": "1", '
     b'"form_id": {"a": 1}}}]}]}', "entry[0].changes[0].value.form_id"),
    (b"[" * 50_000, "body"),
])
def test_a_bad_body_is_a_400_naming_the_field(make_runtime, graph, body, field):
    rt = make_runtime({}, policies=POLICIES)
    with client(rt, graph) as http:
        answer = post(http, body)
    assert answer.status_code == 400 and answer.json()["field"] == field
    assert graph.requests == []


def test_other_objects_and_fields_are_ignored(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    with client(rt, graph) as http:
        other = json.dumps({"object": "page", "entry": [{"changes": [{"field": "feed", "value": {}}]}]}).encode()
        assert post(http, other).json()["ignored"] == 1
        user = json.dumps({"object": "user", "entry": [{"changes": []}]}).encode()
        assert post(http, user).status_code == 200
    assert graph.requests == []


# ---------------------------------------------------------------- a lead stored


def test_a_lead_becomes_a_contact_with_consent_a_form_submit_and_its_source(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    add_ada(graph, SMS_OK="true")
    with client(rt, graph) as http:
        answer = post(http, notification(LEAD))
    assert answer.status_code == 200, answer.text
    assert answer.json() | {"skipped": [], "failed": []} == {"leads": 1, "stored": 1, "duplicates": 0, "erased": 0,
                                                              "ignored": 0, "skipped": [], "failed": []}
    [contact] = rows(rt.store, contact_t)
    assert (contact.email, contact.first_name, contact.last_name, contact.phone, contact.country) == \
        ("ada@example.com", "Ada King", "Lovelace", "+4915112345678", "DE")
    assert contact.attributes == {"city": "Berlin", "budget": "10k-50k", "meta_lead_id": LEAD}
    consents = [(c.channel, c.status, c.source, c.policy_version) for c in rows(rt.store, consent_t)]
    # e-mail: double opt-in in these policies, so pending + the confirmation mail; SMS: SMS_OK said true
    assert consents == [("email", "pending", f"meta_lead_ads:{FORM}", "test-1"),
                        ("sms", "granted", f"meta_lead_ads:{FORM}", "test-1")]
    [event] = rows(rt.store, event_t)
    assert (event.event_id, event.name) == (f"meta_lead:{LEAD}", "form_submit")
    assert event.properties == {"form_id": FORM, "ad_id": "23800000000001", "lead_id": LEAD,
                                "source": "meta_lead_ads", "utm_source": "facebook", "utm_medium": "paid_social",
                                "utm_campaign": FORM, "utm_content": "23800000000001"}
    assert event.occurred_at.replace(tzinfo=None) == utc(2026, 3, 2, 11, 59).replace(tzinfo=None)
    touches = {(t.source, t.medium, t.campaign) for t in rows(rt.store, touch_t)}
    assert touches == {("facebook", "paid_social", FORM)}
    [lead_read] = graph.requests
    assert lead_read.method == "GET" and lead_read.path.endswith(f"/{LEAD}")
    assert "access_token" not in lead_read.query and graph.problems == []
    assert [m.step_id for m in messages(rt.store)] == ["confirm"]  # the double opt-in mail


def test_without_a_consent_mapping_no_consent_is_recorded(make_runtime, graph):
    rt = make_runtime({})
    add_ada(graph, lead=LEAD, platform="ig")
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
    assert count(rt.store, consent_t) == 0
    [event] = rows(rt.store, event_t)
    assert event.properties["utm_source"] == "instagram"
    [contact] = rows(rt.store, contact_t)
    assert contact.attributes["email_opt_in"] == "Yes"  # not a consent question here: an answer


def test_a_redelivered_notification_adds_nothing_and_reads_nothing(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    add_ada(graph)
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        before = (count(rt.store, contact_t), count(rt.store, event_t), count(rt.store, consent_t))
        again = post(http, notification(LEAD, LEAD))
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["stored"] == 0
    assert (count(rt.store, contact_t), count(rt.store, event_t), count(rt.store, consent_t)) == before
    assert len(graph.requests) == 1


@pytest.mark.parametrize("answers", [{"email": "ada@example.com", "email_opt_in": "yes"},
                                     {"full_name": "No Mail", "phone_number": "+49 151 12345678"}],
                         ids=["email", "phone_only"])
def test_a_notification_delivered_four_times_at_once_is_answered_200_and_stored_once(make_runtime, graph, answers):
    """Meta sends a notification more than once, sometimes at the same moment: on PostgreSQL
    the writers of a new address failed with a UniqueViolation (an HTTP 500), and those of a
    new number left empty contacts behind (nurture.ingest, nurture.identities)."""
    rt = make_runtime({}, policies=NO_DOI)
    graph.add_lead(LEAD, FORM, answers)
    start, answered = threading.Barrier(4), []
    with client(rt, graph) as http:
        def deliver() -> None:
            start.wait()
            try:
                answered.append(post(http, notification(LEAD)).json())
            except Exception as exc:  # the TestClient raises what the app raised: a 500
                answered.append(repr(exc))

        threads = [threading.Thread(target=deliver) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted((a["stored"], a["duplicates"]) if isinstance(a, dict) else a for a in answered) == \
        [(0, 1), (0, 1), (0, 1), (1, 0)]
    assert (count(rt.store, contact_t), count(rt.store, event_t)) == (1, 1)


def test_graph_errors_are_retried_then_the_lead_is_stored(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    add_ada(graph)
    graph.fail_next(1, Reply(503, {"error": {"message": "Service temporarily unavailable", "code": 2,
                                             "is_transient": True}}))
    graph.fail_next(1, Reply(429, {"error": {"message": "(#17) User request limit reached", "code": 17}}))
    with client(rt, graph) as http:
        answer = post(http, notification(LEAD))
    assert answer.status_code == 200 and answer.json()["stored"] == 1
    assert len(graph.requests) == 3


def test_a_lead_that_cannot_be_read_is_answered_503_so_meta_delivers_it_again(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    add_ada(graph)
    other = "987654321098766"  # unknown to Graph: 400 GraphMethodException
    graph.fail_next(3, Reply(500, {"error": {"message": "An unknown error occurred", "code": 1}}))
    with client(rt, graph) as http:
        answer = post(http, notification(LEAD, other))
        assert answer.status_code == 503
        failed = {f["lead_id"]: f["reason"] for f in answer.json()["failed"]}
        assert set(failed) == {LEAD, other} and "gave up after 3 attempts" in failed[LEAD]
        assert TOKEN not in answer.text
        assert count(rt.store, event_t) == 0
        later = post(http, notification(LEAD))  # Meta's redelivery, Graph back
    assert later.status_code == 200 and later.json()["stored"] == 1
    with client(rt, graph, NURTURE_META_ACCESS_TOKEN="") as http:
        unset = post(http, notification(other))
    assert unset.status_code == 503 and "NURTURE_META_ACCESS_TOKEN" in unset.json()["failed"][0]["reason"]


def test_hostile_lead_answers_are_dropped_or_kept_as_text_never_a_500(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    graph.add_lead(LEAD, FORM, {"email": "eve@example.com", "first_name": "Eve\r\nBcc: x@example.com",
                                "nul": "a\x00b", "country": "Atlantis", "phone_number": "call me",
                                "many": ["a", "b"], "odd": [{"x": 1}, True, 3]},
                   created_time="yesterday-ish")
    graph.leads[LEAD]["field_data"] += [{"values": ["no name"]}, "not an object"]
    with client(rt, graph) as http:
        answer = post(http, notification(LEAD))
    assert answer.status_code == 200 and answer.json()["stored"] == 1
    [contact] = rows(rt.store, contact_t)
    assert "\n" not in contact.first_name and contact.phone is None and contact.country is None
    assert contact.attributes == {"country": "Atlantis", "phone_number": "call me", "many": ["a", "b"],
                                  "odd": "3", "meta_lead_id": LEAD}


def test_a_phone_only_lead_is_a_phone_contact_whatsapp_reaches_at_once(make_runtime, graph):
    """No e-mail on the form: the contact is known by its number, its WhatsApp opt-in recorded,
    and a journey on form_submit reaches it on WhatsApp; a redelivery finds the same contact."""
    policies = NO_DOI.replace("lead_forms:\n  consent: {email: [email_opt_in], sms: [sms_opt_in, SMS_OK]}",
                              "lead_forms:\n  consent: {whatsapp: [whatsapp_opt_in]}")
    sid = "HX" + "0123456789abcdef" * 2
    journey = journey_yaml("hello", f'- id: wa\n  send: {{channel: whatsapp, template: hi, content_sid: "{sid}"}}',
                           trigger="{event: form_submit}")
    rt = make_runtime({"hello": journey}, policies=policies, templates={"whatsapp/hi.txt": "Hi {{ contact.first_name }}"})
    graph.add_lead(LEAD, FORM, {"full_name": "No Mail", "phone_number": "+49 151 12345678", "whatsapp_opt_in": "yes"})
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        assert post(http, notification(LEAD)).json()["duplicates"] == 1
    [contact] = rows(rt.store, contact_t)
    assert (contact.email, contact.phone, contact.first_name) == (None, "+4915112345678", "No")
    assert [(c.channel, c.status) for c in rows(rt.store, consent_t)] == [("whatsapp", "granted")]
    run_tick(rt, "hello", NOW)
    assert [(m.channel, m.status, m.address) for m in messages(rt.store)] == [("whatsapp", "sent", "+4915112345678")]


def test_a_number_typed_without_its_country_code_is_read_in_the_default_country(make_runtime, graph):
    """A person types 0151 … on the form, which has no country question: with
    NURTURE_DEFAULT_COUNTRY=DE the lead is still a contact SMS and WhatsApp reach."""
    rt = make_runtime({}, policies=POLICIES)
    graph.add_lead(LEAD, FORM, {"full_name": "Lea National", "phone_number": "0151 12345678"})
    with client(rt, graph, NURTURE_DEFAULT_COUNTRY="DE") as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
    [contact] = rows(rt.store, contact_t)
    assert (contact.email, contact.phone) == (None, "+4915112345678")


def test_a_lead_without_an_email_or_a_phone_is_skipped_not_retried(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    graph.add_lead(LEAD, FORM, {"full_name": "No Mail", "phone_number": "call me"})
    with client(rt, graph) as http:
        answer = post(http, notification(LEAD))
    assert answer.status_code == 200 and answer.json()["skipped"][0]["lead_id"] == LEAD
    assert count(rt.store, contact_t) == 0


def test_an_erased_persons_lead_is_refused(make_runtime, graph):
    rt = make_runtime({}, policies=POLICIES)
    add_ada(graph)
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        context = IntegrationContext(rt.project.root, rt.data_dir, dict(rt.env))
        [erased] = erase_emails(rt.store, rt.project, ["ada@example.com"], context=context, actor="test", now=NOW)
        assert erased.outcome == "erased"
        second = "987654321098767"
        add_ada(graph, lead=second)
        answer = post(http, notification(second))
    assert answer.status_code == 200 and answer.json()["erased"] == 1 and answer.json()["stored"] == 0
    with rt.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(event_t)
                            .where(event_t.c.event_id == f"meta_lead:{second}")).scalar() == 0
        assert conn.execute(select(func.count()).select_from(contact_t)
                            .where(contact_t.c.email == "ada@example.com")).scalar() == 0


PHONE_ONLY = NO_DOI.replace("lead_forms:\n  consent: {email: [email_opt_in], sms: [sms_opt_in, SMS_OK]}",
                            "lead_forms:\n  consent: {whatsapp: [whatsapp_opt_in]}")
ADA_PHONE = "+4915112345678"


@pytest.mark.parametrize("erased_by", ["ada@example.com", ADA_PHONE])
def test_a_phone_only_lead_of_a_person_erased_by_email_or_by_phone_is_refused(make_runtime, graph, erased_by):
    """The tombstone holds the person's number too: a later lead that carries only that number
    re-creates nobody (no contact, no event, no WhatsApp grant)."""
    from nurture.privacy.erase import erase_people
    rt = make_runtime({}, policies=PHONE_ONLY)
    add_ada(graph)
    second = "987654321098767"
    graph.add_lead(second, FORM, {"full_name": "Ada King", "phone_number": "+49 151 12345678",
                                  "whatsapp_opt_in": "yes"})
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        context = IntegrationContext(rt.project.root, rt.data_dir, dict(rt.env))
        [erased] = erase_people(rt.store, rt.project, [erased_by], context=context, actor="test", now=NOW)
        assert erased.outcome == "erased"
        answer = post(http, notification(second))
    assert answer.status_code == 200 and (answer.json()["erased"], answer.json()["stored"]) == (1, 0), answer.json()
    assert [(c.email, c.phone) for c in rows(rt.store, contact_t)] == [(None, None)]  # the erased row only
    assert [e.event_id for e in rows(rt.store, event_t) if e.event_id == f"meta_lead:{second}"] == []
    assert [c.channel for c in rows(rt.store, consent_t) if c.status == "granted"] == []


def test_a_phone_only_lead_of_a_number_the_contact_is_known_by_only_as_an_identity_is_stored(make_runtime, graph):
    """The contact's number changed (Segment identify), Meta pre-fills the old one: the lead goes
    to the contact `resolve` found through contact_identity — a 200 on the first delivery, not a
    500 on every redelivery until Meta gives up."""
    rt = make_runtime({}, policies=PHONE_ONLY)
    write_key = "write-key-for-tests-0123456789"
    graph.add_lead(LEAD, FORM, {"full_name": "No Mail", "phone_number": "+49 151 12345678", "whatsapp_opt_in": "yes"})
    second = "987654321098767"
    graph.add_lead(second, FORM, {"full_name": "No Mail", "phone_number": "+49 151 12345678",
                                  "whatsapp_opt_in": "yes"})
    with client(rt, graph, NURTURE_WRITE_KEY=write_key) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        # the number changed since (a CRM import): the old one stays known as an identity
        with rt.store.engine.begin() as conn:
            conn.execute(contact_t.update().values(phone="+4915199999999"))
        assert [c.phone for c in rows(rt.store, contact_t)] == ["+4915199999999"]
        answer = post(http, notification(second))
    assert answer.status_code == 200 and answer.json()["stored"] == 1, answer.text
    [contact] = rows(rt.store, contact_t)
    assert contact.attributes["meta_lead_id"] == second
    assert {e.event_id: e.contact_id for e in rows(rt.store, event_t)} == {
        f"meta_lead:{LEAD}": contact.id, f"meta_lead:{second}": contact.id}


# ---------------------------------------------------------------- journeys


def test_a_journey_triggered_by_form_submit_enrolls_on_the_next_tick(make_runtime, graph):
    rt = make_runtime({"welcome": WELCOME}, policies=NO_DOI)
    add_ada(graph)
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
    [(channel, status)] = [(c.channel, c.status) for c in rows(rt.store, consent_t)]
    assert (channel, status) == ("email", "granted")
    run_tick(rt, "welcome", NOW)
    assert len(enrollments(rt.store, journey="welcome")) == 1
    assert [m.status for m in messages(rt.store)] == ["sent"]


def test_a_lead_of_a_named_form_starts_the_shipped_journeys_that_filter_on_the_form(store, graph, tmp_path):
    """The shipped welcome and b2b_nurture filter `form_submit` on `property: {form: [...]}`, but a
    Meta lead's event carried only `form_id`: no lead ever started them. policies.yaml
    `lead_forms.forms` names a form by id; the name is the event's `form`. A form not named there
    gives no `form` (and starts neither)."""
    root = tmp_path / "shop"
    for part in ("journeys", "templates"):
        shutil.copytree(REPO / part, root / part)
    policies = root / "journeys" / "policies.yaml"
    policies.write_text(policies.read_text() + f'lead_forms:\n  forms: {{"{FORM}": whitepaper}}\n')
    spec = load_project(root)
    assert spec.errors == []
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_FROM_EMAIL": "shop@example.com"})
    other_form, other_lead = "5555555555555", "987654321098766"
    graph.add_lead(LEAD, FORM, {"email": "ada@example.com", "full_name": "Ada Lovelace", "job_title": "CTO"})
    graph.add_lead(other_lead, other_form, {"email": "bob@example.com", "full_name": "Bob Babbage"})
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        assert post(http, notification(other_lead, form=other_form)).json()["stored"] == 1
    events = {e.properties["form_id"]: e.properties for e in rows(store, event_t)}
    assert events[FORM]["form"] == "whitepaper" and "form" not in events[other_form]
    for journey in ("welcome", "b2b_nurture"):
        run_tick(rt, journey, NOW)
    with store.engine.connect() as conn:
        entered = conn.execute(select(contact_t.c.email, enrollment_t.c.journey)
                               .join(contact_t, contact_t.c.id == enrollment_t.c.contact_id)).all()
    assert [tuple(e) for e in entered] == [("ada@example.com", "b2b_nurture")]


def test_form_names_must_be_digit_ids_with_a_name_each_a_located_error(make_project):
    policies = (POLICIES + '  forms:\n    "1234567890": whitepaper\n    12ab: webinar\n    "99": "  "\n'
                '    "77": [a]\n    88: contact\n')
    errors = [str(e) for e in load_project(make_project({}, policies=policies)).errors]
    line = POLICIES.count("\n") + 2  # the line of 12ab
    assert errors == [
        f"journeys/policies.yaml:{line}:11: '12ab' is not a Meta form id: write its digits, quoted, e.g. \"1234567890123\"",
        f"journeys/policies.yaml:{line + 1}:11: a form name must be non-empty text on one line, e.g. whitepaper",
        f"journeys/policies.yaml:{line + 2}:11: a form name must be non-empty text on one line, e.g. whitepaper"]
    spec = load_project(make_project({}, policies=POLICIES + '  forms: {"1234567890": whitepaper, 88: " contact "}\n'))
    assert spec.policies.lead_forms.forms == {"1234567890": "whitepaper", "88": "contact"}


SMS_DOI = POLICIES.replace("double_opt_in: {email: [marketing]}", "double_opt_in: {sms: [marketing]}")


def texts(rt) -> list[dict]:
    """What the file SMS channel sent (.nurture/outbox/sms.jsonl), one dict a text."""
    path = rt.data_dir / "outbox" / "sms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_start_texted_from_the_leads_number_confirms_its_pending_sms_opt_in_and_the_sms_goes(make_runtime, graph):
    """docs/lead-ads.md: SMS is `pending` when double opt-in covers SMS, "the START keyword
    confirms it" — but START only lifted a STOP, so the lead's SMS journey stayed
    `suppressed consent_pending` for good. The START answers the confirmation text the lead got."""
    journey = journey_yaml("hello", "- id: text\n  send: {channel: sms, template: hi}", trigger="{event: form_submit}")
    rt = make_runtime({"hello": journey}, policies=SMS_DOI, templates={"sms/hi.txt": "Hi {{ contact.first_name }}"})
    add_ada(graph, email_opt_in="no", sms_opt_in="yes")
    start = {"AccountSid": "AC" + "0" * 32, "From": ADA_PHONE, "To": "+15005550006", "Body": "START",
             "MessageSid": "SM" + "1" * 32, "SmsStatus": "received"}
    signature = twilio_signature(TWILIO_TOKEN, rt.env["NURTURE_PUBLIC_URL"] + "/webhooks/twilio", start)
    with client(rt, graph, NURTURE_TWILIO_AUTH_TOKEN=TWILIO_TOKEN) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        assert [(c.channel, c.status) for c in rows(rt.store, consent_t)] == [("sms", "pending")]
        assert [(t["to"], t["journey"], t["step"]) for t in texts(rt)] == [(ADA_PHONE, "double_opt_in", "confirm")]
        assert http.post("/webhooks/twilio", data=start, headers={"X-Twilio-Signature": signature}).status_code == 200
    consents = [(c.channel, c.status, c.source, c.confirmed_at) for c in rows(rt.store, consent_t)]
    assert consents[-1][:3] == ("sms", "granted", "twilio:START") and consents[-1][3] is not None
    run_tick(rt, "hello", NOW)
    assert [(m.channel, m.status) for m in messages(rt.store, journey="hello")] == [("sms", "sent")]


def test_an_sms_opt_in_under_sms_double_opt_in_texts_one_reply_start_request_at_once(make_runtime, graph):
    """The lead ticked the SMS box; SMS double opt-in records it `pending` — and `nurture web`
    texts the number its one transactional "Reply START to confirm" request right after the
    webhook's answer. Meta's redelivery (up to 36 h) and a second form of the same person while
    the request is pending text nothing more."""
    rt = make_runtime({}, policies=SMS_DOI)
    add_ada(graph, email_opt_in="no", sms_opt_in="yes")
    with client(rt, graph, NURTURE_FROM_NAME="Nurture Shop") as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        [pending] = rows(rt.store, consent_t)
        [request] = messages(rt.store)
        assert (request.journey, request.step_id, request.channel, request.purpose, request.status, request.address,
                request.attempt_key, request.enrollment_id) == \
            ("double_opt_in", "confirm", "sms", "transactional", "sent", ADA_PHONE, f"consent:{pending.id}", None)
        [text] = texts(rt)
        assert (text["to"], text["body"]) == \
            (ADA_PHONE, "Nurture Shop: Reply START to confirm. Msg&data rates may apply. Reply STOP to opt out.")

        again = post(http, notification(LEAD))
        assert again.status_code == 200 and again.json()["duplicates"] == 1
        graph.add_lead("987654321098766", "1234567890124", {"full_name": "Ada King Lovelace",
                                                            "phone_number": "+49 151 12345678", "sms_opt_in": "yes"})
        assert post(http, notification("987654321098766", form="1234567890124")).json()["stored"] == 1
    assert [(c.channel, c.status) for c in rows(rt.store, consent_t)] == [("sms", "pending")]
    assert len(messages(rt.store)) == 1 and len(texts(rt)) == 1


def test_a_number_that_texted_stop_gets_no_confirmation_text(make_runtime, graph):
    """The request is transactional — it needs no marketing consent — but a STOP ends every
    text to the number: the request is recorded `suppressed sms_stop`, nothing is sent."""
    rt = make_runtime({}, policies=SMS_DOI)
    add_suppression(rt.store, "sms_stop", address=ADA_PHONE, channel="sms")
    add_ada(graph, email_opt_in="no", sms_opt_in="yes")
    with client(rt, graph) as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
    assert [(c.channel, c.status) for c in rows(rt.store, consent_t)] == [("sms", "pending")]
    assert [(m.step_id, m.status, m.reason) for m in messages(rt.store)] == [("confirm", "suppressed", "sms_stop")]
    assert texts(rt) == []


def test_the_instant_trigger_sends_without_a_tick(make_runtime, graph):
    rt = make_runtime({"welcome": WELCOME}, policies=NO_DOI)
    add_ada(graph)
    with client(rt, graph, NURTURE_INSTANT="1") as http:
        assert post(http, notification(LEAD)).json()["stored"] == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and [m.status for m in messages(rt.store)] != ["sent"]:
            time.sleep(0.05)
    assert [m.status for m in messages(rt.store)] == ["sent"]

"""Double opt-in: a signup records consent `pending` and sends a transactional confirmation;
marketing waits for the confirm link; one reminder after 24 h; pending consent expires after
the policy's days; every change is a ledger row with source, policy version and time."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import time

import pytest
from sqlalchemy import select

from nurture.double_opt_in import confirm_opt_in, hygiene, opt_ins_from_events, request_opt_in
from nurture.ingest import track_records
from nurture.runtime.tick import run_tick
from nurture.send.system_mail import SYSTEM_JOURNEY
from nurture.store.tables import consent_t
from nurture.tokens import verify_token
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_contact, messages
from tests.test_ingest_concurrency import in_transaction, race
from tests.test_web_site import SECRET, SYSTEM_TEMPLATES, running_site
from tests.test_web_unsubscribe import NEWS

T0 = utc(2026, 3, 2, 12, 0)
INGEST = "ingest-token-for-tests-42"


def _ledger(store, contact_id):
    with store.engine.connect() as conn:
        return conn.execute(select(consent_t.c.status, consent_t.c.source, consent_t.c.policy_version,
                                   consent_t.c.recorded_at, consent_t.c.confirmed_at)
                            .where(consent_t.c.contact_id == contact_id).order_by(consent_t.c.id)).all()


def _emls(rt, journey=SYSTEM_JOURNEY):
    return sorted((rt.data_dir / "outbox" / "email" / journey).glob("*.eml"))


def _wait_for(predicate, seconds: float = 15.0):
    """The confirmation is delivered in a background task after the response: poll for it."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "background delivery did not happen"
        time.sleep(0.05)


def test_signup_through_events_confirms_by_email_before_any_marketing(make_runtime):
    rt = make_runtime({"news": NEWS}, templates=SYSTEM_TEMPLATES)
    with running_site(rt, T0, NURTURE_INGEST_TOKEN=INGEST) as site:
        signup = {"event_id": "form-1", "email": "Ann@Example.com", "event": "signup",
                  "properties": {"form": "footer"}, "timestamp": T0.isoformat()}
        response = site.http.post("/events", json=signup, headers={"Authorization": f"Bearer {INGEST}"})
        assert response.status_code == 200
        assert response.json() == {"inserted": 1, "duplicates": 0, "opt_ins": {"pending": 1}, "errors": []}
        _wait_for(lambda: [m.status for m in messages(site.store, journey=SYSTEM_JOURNEY)] == ["sent"])

        [row] = messages(site.store, journey=SYSTEM_JOURNEY)
        assert (row.enrollment_id, row.step_id, row.purpose, row.channel) == (None, "confirm", "transactional", "email")
        [(status, source, version, at, confirmed)] = _ledger(site.store, row.contact_id)
        assert (status, source, version, at, confirmed) == ("pending", "web:/events:signup", "test-1", T0, None)
        [eml] = _emls(rt)
        msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert msg["Subject"] == "Please confirm your subscription" and msg["List-Unsubscribe"] is None
        html = msg.get_body(("html",)).get_content()
        confirm = re.search(r'href="([^"]*/confirm/[^"]+)"', html).group(1)
        assert confirm.startswith(site.url + "/confirm/") and confirm in msg.get_body(("plain",)).get_content()
        claims = verify_token(SECRET, confirm.rsplit("/", 1)[1], "confirm")
        assert (claims.contact_id, claims.purpose, claims.channel) == (row.contact_id, "marketing", "email")

        # The journey triggered by the signup may not market yet.
        run_tick(rt, "news", T0 + dt.timedelta(minutes=5))
        assert [(m.step_id, m.status, m.reason) for m in messages(site.store, journey="news")] == \
            [("first", "suppressed", "consent_pending")]

        site.at(T0 + dt.timedelta(hours=3))
        # Opening the link (a mail scanner does) shows the page and changes nothing; its button confirms.
        opened = site.http.get(confirm)
        assert opened.status_code == 200 and f'action="{confirm}"' in opened.text and 'method="post"' in opened.text
        assert len(_ledger(site.store, row.contact_id)) == 1
        page = site.http.post(confirm)
        assert page.status_code == 200 and "your subscription is confirmed" in page.text
        assert _ledger(site.store, row.contact_id)[-1] == ("granted", "double_opt_in:confirm", "test-1",
                                                          T0 + dt.timedelta(hours=3), T0 + dt.timedelta(hours=3))
        assert "already confirmed" in site.http.post(confirm).text  # idempotent
        assert len(_ledger(site.store, row.contact_id)) == 2

        run_tick(rt, "news", T0 + dt.timedelta(days=1, minutes=5))
        assert [(m.step_id, m.status) for m in messages(site.store, journey="news")] == \
            [("first", "suppressed"), ("second", "sent")]

        # The same form post again (a retried webhook) sends nothing new.
        again = site.http.post("/events", json=signup, headers={"Authorization": f"Bearer {INGEST}"})
        assert again.json()["duplicates"] == 1 and again.json()["opt_ins"] == {}
        assert len(messages(site.store, journey=SYSTEM_JOURNEY)) == 1


def test_one_reminder_after_24h_then_expiry_after_the_policy_days(make_runtime, store):
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "late@example.com", first_name="Lee")
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0) == "pending"
    assert hygiene(rt, T0 + dt.timedelta(hours=1))["confirm:sent"] == 1
    assert hygiene(rt, T0 + dt.timedelta(hours=23))["reminders_queued"] == 0

    report = hygiene(rt, T0 + dt.timedelta(hours=25))
    assert (report["reminders_queued"], report["reminder:sent"]) == (1, 1)
    assert hygiene(rt, T0 + dt.timedelta(hours=49))["reminders_queued"] == 0  # only one reminder
    reminder = email.message_from_bytes(_emls(rt)[-1].read_bytes(), policy=email.policy.default)
    assert reminder["Subject"] == "Reminder: please confirm your subscription"
    assert [(m.step_id, m.attempt_key, m.status) for m in messages(store, journey=SYSTEM_JOURNEY)] == \
        [("confirm", messages(store)[0].attempt_key, "sent"), ("reminder", messages(store)[0].attempt_key, "sent")]

    assert hygiene(rt, T0 + dt.timedelta(days=29, hours=23))["expired"] == 0
    assert hygiene(rt, T0 + dt.timedelta(days=30))["expired"] == 1
    assert _ledger(store, cid)[-1] == ("revoked", "double_opt_in:expired", "test-1", T0 + dt.timedelta(days=30), None)
    assert hygiene(rt, T0 + dt.timedelta(days=31))["expired"] == 0

    from nurture.tokens import TokenClaims
    with store.engine.begin() as conn:
        late = confirm_opt_in(conn, rt.project.policies, TokenClaims("confirm", cid, "marketing", 0, "email"),
                              now=T0 + dt.timedelta(days=31))
    assert late == "not_pending" and _ledger(store, cid)[-1][0] == "revoked"


def test_a_confirm_link_followed_after_expiry_but_before_hygiene_changes_nothing(make_runtime):
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(rt.store, "slow@example.com")
    with rt.store.engine.begin() as conn:
        request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0)
    from nurture.send.system_mail import confirm_link
    with running_site(rt, T0 + dt.timedelta(days=31)) as site:
        link = confirm_link(rt, cid)
        page = site.http.post(link)  # (the page's button; opening the link changes nothing anyway)
        assert page.status_code == 400 and "expired" in page.text
        tampered = site.http.get(link[:-3] + "abc")
        assert tampered.status_code == 400 and "damaged" in tampered.text
    assert [r[0] for r in _ledger(rt.store, cid)] == ["pending"]


def test_the_confirm_link_of_an_erased_person_writes_nothing(make_runtime, tmp_path):
    """The erased person's ledger keeps the (pseudonymized) pending row: following the old
    confirm link wrote a new grant with the clicker's address and browser, and said
    "Subscription confirmed". It gets a 400, as an erased person's unsubscribe link does."""
    from nurture.privacy.erase import erase_emails
    from nurture.registry import IntegrationContext
    from nurture.send.system_mail import confirm_link
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(rt.store, "erin@example.com")
    with rt.store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0) == "pending"
    with running_site(rt, T0 + dt.timedelta(hours=1)) as site:
        link = confirm_link(rt, cid)
        erase_emails(site.store, rt.project, ["erin@example.com"],
                     context=IntegrationContext(rt.project.root, tmp_path / "data", {}), actor="test")
        before = _ledger(rt.store, cid)
        page = site.http.post(link, headers={"User-Agent": "Mozilla/5.0 (erin's laptop)"})
    assert page.status_code == 400 and "nothing was changed" in page.text
    assert _ledger(rt.store, cid) == before and [r[0] for r in before] == ["pending", "erased"]


def test_no_reminder_to_someone_who_revoked_after_the_runs_logical_time(make_runtime, store):
    """The hygiene run scheduled for 25:00 runs late, with its scheduled start as its time; she
    revoked at 25:10 (already past by the wall clock). The reminder was queued and sent."""
    from nurture.consent_ledger import record_consent
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "gone@example.com")
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0) == "pending"
    assert hygiene(rt, T0 + dt.timedelta(minutes=1))["confirm:sent"] == 1
    with store.engine.begin() as conn:
        record_consent(conn, cid, "email", "revoked", source="cli", at=T0 + dt.timedelta(hours=25, minutes=10))
    report = hygiene(rt, T0 + dt.timedelta(hours=25))
    assert (report["reminders_queued"], report["reminder:sent"]) == (0, 0)
    assert [m.step_id for m in messages(store, journey=SYSTEM_JOURNEY)] == ["confirm"]


def test_a_queued_confirmation_is_not_delivered_once_its_pending_consent_is_not_the_latest(make_runtime, store):
    """Queued, then revoked before it went out (the channel was down, an operator's revoke): it
    asked the person to confirm a subscription the confirm page then says does not exist. At
    delivery it is `suppressed consent_revoked`; one whose consent was asked for again (a newer
    pending row, with a confirmation of its own) is `suppressed not_pending`."""
    from nurture.consent_ledger import record_consent
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    gone = add_contact(store, "gone2@example.com")
    again = add_contact(store, "again@example.com")
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, gone, source="test:signup", now=T0) == "pending"
        record_consent(conn, gone, "email", "revoked", source="cli", at=T0 + dt.timedelta(minutes=5))
        assert request_opt_in(conn, rt.project.policies, again, source="test:signup", now=T0) == "pending"
        record_consent(conn, again, "email", "revoked", source="cli", at=T0 + dt.timedelta(minutes=1))
        assert request_opt_in(conn, rt.project.policies, again, source="test:signup",
                              now=T0 + dt.timedelta(minutes=2)) == "pending"
    report = hygiene(rt, T0 + dt.timedelta(minutes=10))
    assert report["confirm:sent"] == 1, report
    assert sorted((m.contact_id, m.status, m.reason) for m in messages(store, journey=SYSTEM_JOURNEY)) == sorted([
        (gone, "suppressed", "consent_revoked"), (again, "suppressed", "not_pending"), (again, "sent", None)])


def test_without_double_opt_in_in_the_policies_a_signup_is_granted_at_once(make_runtime, store):
    policies = DEFAULT_POLICIES.replace("double_opt_in: {email: [marketing]}", "double_opt_in: {}")
    rt = make_runtime({}, policies=policies, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "quick@example.com")
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0) == "granted"
        assert request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0) == "already_granted"
    assert [r[:2] for r in _ledger(store, cid)] == [("granted", "test:signup")]
    assert messages(store) == []


def test_a_second_signup_while_pending_sends_no_second_confirmation(make_runtime, store):
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "twice@example.com")
    with store.engine.begin() as conn:
        first = request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0)
        second = request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0 + dt.timedelta(hours=2))
    assert (first, second) == ("pending", "already_pending")
    assert len(messages(store, journey=SYSTEM_JOURNEY)) == 1



def test_two_signups_of_one_person_at_once_queue_one_confirmation(make_runtime, store):
    """Two `nurture web` processes store a signup of one person at the same moment: the first's
    transaction is held open after its opt-in until the second waits for it (PostgreSQL: at the
    contact row; SQLite: at the write lock). The second then reads the first's pending row."""
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "both@example.com")
    signups = [track_records(store, [(1, {"event_id": f"signup-{n}", "email": "both@example.com",
                                          "event": "signup", "timestamp": T0.isoformat()})], now=T0)
               for n in (1, 2)]
    outcomes = {}

    def first(conn):
        outcomes["first"] = opt_ins_from_events(conn, rt.project.policies, signups[0].inserted_ids, now=T0)

    outcomes["second"] = race(store, first, lambda: in_transaction(
        store, lambda conn: opt_ins_from_events(conn, rt.project.policies, signups[1].inserted_ids, now=T0)))
    assert outcomes == {"first": {"pending": 1}, "second": {"already_pending": 1}}
    assert [r[0] for r in _ledger(store, cid)] == ["pending"]
    assert [m.step_id for m in messages(store, journey=SYSTEM_JOURNEY)] == ["confirm"]


def test_a_signup_posted_while_another_of_the_same_person_is_being_stored_answers_already_pending(make_runtime):
    rt = make_runtime({"news": NEWS}, templates=SYSTEM_TEMPLATES)
    with running_site(rt, T0, NURTURE_INGEST_TOKEN=INGEST) as site:
        cid = add_contact(site.store, "both@example.com")
        held = track_records(site.store, [(1, {"event_id": "form-1", "email": "both@example.com",
                                               "event": "signup", "timestamp": T0.isoformat()})], now=T0)
        posted = {"event_id": "form-2", "email": "both@example.com", "event": "signup", "timestamp": T0.isoformat()}
        response = race(site.store, lambda conn: opt_ins_from_events(conn, rt.project.policies, held.inserted_ids,
                                                                     now=T0),
                        lambda: site.http.post("/events", json=posted, headers={"Authorization": f"Bearer {INGEST}"}))
        assert response.status_code == 200, response.text
        assert response.json()["opt_ins"] == {"already_pending": 1}
        assert [r[0] for r in _ledger(site.store, cid)] == ["pending"]
        assert [m.step_id for m in messages(site.store, journey=SYSTEM_JOURNEY)] == ["confirm"]


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
def test_the_hygiene_flow_runs_the_same_work_under_prefect(tmp_path, monkeypatch, prefect_harness):
    from flows.hygiene import hygiene as hygiene_flow
    from flows.runtime import forget_runtimes
    from nurture.store.db import open_store
    from tests.conftest import write_project
    root = write_project(tmp_path / "proj", {}, templates=SYSTEM_TEMPLATES)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    store = open_store(url)
    cid = add_contact(store, "flow@example.com")
    from nurture.spec.project import load_project
    with store.engine.begin() as conn:
        request_opt_in(conn, load_project(root).policies, cid, source="test:signup", now=T0)
    try:
        first = hygiene_flow(project=str(root), now=T0 + dt.timedelta(hours=25))
        later = hygiene_flow(project=str(root), now=T0 + dt.timedelta(days=30))
    finally:
        forget_runtimes()
    assert (first["confirm:sent"], first["reminders_queued"], first["reminder:sent"]) == (1, 1, 1)
    assert later["expired"] == 1
    assert [r[0] for r in _ledger(store, cid)] == ["pending", "revoked"]
    store.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the skeleton's files: one backend is enough
def test_a_project_nurture_init_makes_sends_its_confirmation_in_the_contacts_language(store, tmp_path):
    """The skeleton asks for e-mail double opt-in: it ships the confirmation's templates (and their
    German), or every sign-up of a new project would stay pending — its welcome never sent."""
    import os

    from nurture.runtime.context import Runtime
    from nurture.spec.project import load_project
    from tests.cli_inproc import run_cli
    root = tmp_path / "shop"
    assert run_cli(["init", str(root)], {**os.environ, "COLUMNS": "200"}).returncode == 0
    spec = load_project(root)
    assert spec.policies.double_opt_in.get("email") and not spec.errors and not spec.warnings
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_INSTANT": "0"})
    add_contact(store, "dora@example.com", locale="de")  # imported with her language before she signed up
    try:
        with running_site(rt, T0, NURTURE_INGEST_TOKEN=INGEST) as site:
            for event_id, address in (("s1", "carol@example.com"), ("s2", "dora@example.com")):
                response = site.http.post("/events", headers={"Authorization": f"Bearer {INGEST}"}, json={
                    "event_id": event_id, "email": address, "event": "signup", "timestamp": T0.isoformat()})
                assert response.json()["opt_ins"] == {"pending": 1}, response.text
            _wait_for(lambda: [m.status for m in messages(site.store, journey=SYSTEM_JOURNEY)] == ["sent", "sent"])
    finally:
        rt.close()
    subjects = sorted(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Subject"]
                      for p in _emls(rt))
    assert subjects == ["Bitte bestätigen Sie Ihr Abonnement", "Please confirm your subscription"]


def test_validate_warns_when_email_double_opt_in_has_no_confirmation_template(tmp_path):
    from nurture.spec.project import load_project
    from tests.conftest import write_project
    root = write_project(tmp_path / "p", {}, policies=DEFAULT_POLICIES + "double_opt_in: {email: [marketing]}\n")
    for name in ("confirm.html", "confirm_reminder.html"):
        (root / "templates" / "email" / "system" / name).unlink()
    warnings = [str(w) for w in load_project(root).warnings]
    assert len(warnings) == 2 and all("warning: double_opt_in needs it for the confirmation e-mail: template"
                                      in w and w.startswith("journeys/policies.yaml:") for w in warnings), warnings
    assert "expected templates/email/system/confirm.html" in warnings[0]


# ---------------------------------------------------------------- SMS double opt-in: the "Reply START" text

SMS_DOI = DEFAULT_POLICIES.replace("double_opt_in: {email: [marketing]}",
                                   "double_opt_in: {email: [marketing], sms: [marketing]}")
PHONE = "+4915112345678"


def _texts(rt) -> list[dict]:
    import json
    path = rt.data_dir / "outbox" / "sms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_sms_request_goes_through_twilio_in_the_contacts_language_with_the_shipped_wording(make_runtime, store,
                                                                                              tmp_path):
    """The repo's own templates/sms/system/confirm.txt and its German, sent by the `sms.twilio`
    channel (a local fake that checks the request) when the hygiene run delivers the requests."""
    import shutil

    from tests.conftest import REPO
    from tests.fakes.twilio import FakeTwilio
    from tests.test_twilio_channel import _env
    (tmp_path / "project" / "translations").mkdir(parents=True)
    shutil.copyfile(REPO / "translations" / "de.po", tmp_path / "project" / "translations" / "de.po")
    shipped = (REPO / "templates" / "sms" / "system" / "confirm.txt").read_text(encoding="utf-8")
    rt = make_runtime({}, policies=SMS_DOI, templates={**SYSTEM_TEMPLATES, "sms/system/confirm.txt": shipped})
    twilio = FakeTwilio().start()
    try:
        rt.env.update(_env(twilio), NURTURE_FROM_NAME="Nurture Shop")
        ann = add_contact(store, None, phone=PHONE)
        jan = add_contact(store, None, phone="+4917612345678", locale="de")
        with store.engine.begin() as conn:
            for cid in (ann, jan):
                assert request_opt_in(conn, rt.project.policies, cid, source="test:form", now=T0,
                                      channel="sms") == "pending"
        assert hygiene(rt, T0)["confirm:sent"] == 2
        bodies = {r.form["To"]: r.form["Body"] for r in twilio.requests}
    finally:
        twilio.stop()
    assert bodies == {
        PHONE: "You asked for news and offers from Nurture Shop by SMS. Reply START to confirm. "
               "Msg&data rates may apply. Reply STOP to opt out.",
        "+4917612345678": "Neuigkeiten und Angebote von Nurture Shop per SMS? Antworten Sie START zur Bestätigung. "
                          "Es können SMS-/Datenkosten anfallen. Abmelden mit STOP."}
    assert all(len(body) <= 160 for body in bodies.values())  # one SMS segment each (GSM-7)
    assert [(m.channel, m.purpose, m.status, m.provider_id is not None) for m in messages(store)] == \
        [("sms", "transactional", "sent", True)] * 2


def test_an_sms_request_waits_for_the_end_of_sms_quiet_hours_an_email_request_does_not(make_runtime, store):
    """A text at 23:00 wakes its reader (and a lead can reach Nurture hours after the form was
    sent): the SMS request is deferred to 09:00 in the contact's zone, the end of policies.yaml's
    SMS quiet hours. The e-mail request, asked for at the same moment, goes at once."""
    rt = make_runtime({}, policies=SMS_DOI, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "night@example.com", phone=PHONE, timezone="Europe/Berlin")
    late = utc(2026, 3, 2, 22, 0)  # 23:00 in Berlin
    with store.engine.begin() as conn:
        for channel in ("email", "sms"):
            assert request_opt_in(conn, rt.project.policies, cid, source="test:form", now=late,
                                  channel=channel) == "pending"
    report = hygiene(rt, late)
    assert report["confirm:sent"] == 1 and report["confirm:deferred"] == 1, report
    morning = utc(2026, 3, 3, 8, 0)  # 09:00 in Berlin
    assert [(m.channel, m.status, m.reason, m.due_at.replace(tzinfo=None)) for m in messages(store)] == \
        [("email", "sent", None, late.replace(tzinfo=None)),
         ("sms", "queued", "quiet_hours", morning.replace(tzinfo=None))]
    assert hygiene(rt, morning - dt.timedelta(minutes=1))["confirm:sent"] == 0 and _texts(rt) == []
    assert hygiene(rt, morning)["confirm:sent"] == 1
    [text] = _texts(rt)
    assert text["to"] == PHONE and "Reply START to confirm" in text["body"]


def test_an_sms_request_is_not_sent_to_a_stopped_number_nor_once_its_consent_was_revoked(make_runtime, store):
    """Delivered in the same run that queued it (hygiene's time = the request's): the checks
    still run. STOP suppresses every text; a request whose pending consent is no longer the
    latest row asks about nothing."""
    from nurture.consent_ledger import record_consent
    from tests.engine_fixtures import add_suppression
    rt = make_runtime({}, policies=SMS_DOI, templates=SYSTEM_TEMPLATES)
    stopped = add_contact(store, None, phone=PHONE)
    add_suppression(store, "sms_stop", address=PHONE, channel="sms")
    revoked = add_contact(store, None, phone="+4917612345678")
    with store.engine.begin() as conn:
        for cid in (stopped, revoked):
            assert request_opt_in(conn, rt.project.policies, cid, source="test:form", now=T0,
                                  channel="sms") == "pending"
        record_consent(conn, revoked, "sms", "revoked", source="web:preference_center", at=T0)
    hygiene(rt, T0)
    assert sorted((m.contact_id, m.status, m.reason) for m in messages(store)) == \
        [(stopped, "suppressed", "sms_stop"), (revoked, "suppressed", "consent_revoked")]
    assert _texts(rt) == []


def test_sms_double_opt_in_without_a_number_records_nothing_and_whatsapp_sends_no_request(make_runtime, store):
    """No number: nothing to confirm, nothing recorded (`unreachable`). WhatsApp double opt-in
    records `pending` and sends nothing (a business-initiated WhatsApp message needs an
    approved template and the very opt-in it would ask for): START from the number confirms."""
    policies = SMS_DOI.replace("sms: [marketing]}", "sms: [marketing], whatsapp: [marketing]}")
    rt = make_runtime({}, policies=policies, templates=SYSTEM_TEMPLATES)
    mail_only = add_contact(store, "mail@example.com")
    phone = add_contact(store, None, phone=PHONE)
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, mail_only, source="t", now=T0, channel="sms") == "unreachable"
        assert request_opt_in(conn, rt.project.policies, phone, source="t", now=T0, channel="whatsapp") == "pending"
        assert request_opt_in(conn, rt.project.policies, phone, source="t", now=T0,
                              channel="whatsapp") == "already_pending"
    assert _ledger(store, mail_only) == []
    assert [r[0] for r in _ledger(store, phone)] == ["pending"]
    assert messages(store) == []


def test_one_sms_request_per_pending_consent_and_no_reminder(make_runtime, store):
    rt = make_runtime({}, policies=SMS_DOI, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, None, phone=PHONE)
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, cid, source="t", now=T0, channel="sms") == "pending"
        assert request_opt_in(conn, rt.project.policies, cid, source="t", now=T0 + dt.timedelta(hours=1),
                              channel="sms") == "already_pending"
    assert hygiene(rt, T0)["confirm:sent"] == 1
    assert hygiene(rt, T0 + dt.timedelta(hours=25))["reminders_queued"] == 0
    assert [(m.step_id, m.status) for m in messages(store)] == [("confirm", "sent")] and len(_texts(rt)) == 1


def test_no_reminder_to_an_address_that_bounced_even_when_queued_and_delivered_in_one_run(make_runtime, store):
    """The hygiene run queues the reminder and delivers it at its own time: delivery took it for
    a message the send transaction had checked moments ago, and mailed a hard-bounced address."""
    from tests.engine_fixtures import add_suppression
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    cid = add_contact(store, "bounced@example.com")
    with store.engine.begin() as conn:
        assert request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=T0) == "pending"
    assert hygiene(rt, T0 + dt.timedelta(minutes=1))["confirm:sent"] == 1
    add_suppression(store, "hard_bounce", address="bounced@example.com", at=T0 + dt.timedelta(hours=2))
    report = hygiene(rt, T0 + dt.timedelta(hours=25))
    assert report["reminders_queued"] == 1 and report["reminder:sent"] == 0, report
    assert [(m.step_id, m.status, m.reason) for m in messages(store, journey=SYSTEM_JOURNEY)][-1] == \
        ("reminder", "suppressed", "hard_bounce")


def test_validate_warns_when_sms_double_opt_in_has_no_confirmation_text(tmp_path):
    from nurture.spec.project import load_project
    from tests.conftest import write_project
    root = write_project(tmp_path / "p", {}, policies=SMS_DOI)
    assert load_project(root).warnings == []
    (root / "templates" / "sms" / "system" / "confirm.txt").unlink()
    [warning] = [str(w) for w in load_project(root).warnings]
    assert warning.startswith("journeys/policies.yaml:") and \
        "warning: double_opt_in needs it for the confirmation text: template 'system/confirm' not found: " \
        "expected templates/sms/system/confirm.txt" in warning, warning


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the skeleton's files: one backend is enough
def test_a_project_nurture_init_makes_texts_its_sms_confirmation_in_the_contacts_language(store, tmp_path):
    """`nurture init` ships the SMS request's template and its German: a project that adds SMS
    to double_opt_in validates without a warning and texts each lead in its language."""
    import os

    from nurture.runtime.context import Runtime
    from nurture.spec.project import load_project
    from tests.cli_inproc import run_cli
    root = tmp_path / "shop"
    assert run_cli(["init", str(root)], {**os.environ, "COLUMNS": "200"}).returncode == 0
    policies = root / "journeys" / "policies.yaml"
    policies.write_text(policies.read_text().replace("double_opt_in: {email: [marketing]}",
                                                     "double_opt_in: {email: [marketing], sms: [marketing]}"))
    spec = load_project(root)
    assert spec.policies.needs_double_opt_in("sms", "marketing") and not spec.errors and not spec.warnings
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_INSTANT": "0",
                                   "NURTURE_SECRET_KEY": SECRET, "NURTURE_PUBLIC_URL": "http://localhost:8000"})
    ids = [add_contact(store, None, phone=PHONE), add_contact(store, None, phone="+4917612345678", locale="de")]
    noon = utc(2026, 3, 2, 11, 0)  # 12:00 in Berlin, the skeleton's zone: outside SMS quiet hours
    try:
        with store.engine.begin() as conn:
            for cid in ids:
                assert request_opt_in(conn, spec.policies, cid, source="t", now=noon, channel="sms") == "pending"
        assert hygiene(rt, noon)["confirm:sent"] == 2
    finally:
        rt.close()
    assert sorted(t["body"] for t in _texts(rt)) == [  # (no sender name set: the words without one)
        "Unsere Neuigkeiten und Angebote per SMS? Antworten Sie START zur Bestätigung. Es können SMS-/Datenkosten "
        "anfallen. Abmelden mit STOP.",
        "You asked for our news and offers by SMS. Reply START to confirm. Msg&data rates may apply. Reply STOP "
        "to opt out."]


def test_sms_ticked_on_an_emailed_preference_link_under_sms_double_opt_in_is_asked_for_by_text(make_runtime, store):
    """The preference center granted SMS unconfirmed on a link that went to the mailbox: under
    SMS double opt-in every marketing text was then refused (`not_double_opted_in`), for good,
    and nobody was asked. Now it asks by text, as a lead's opt-in does; a link that went to the
    phone itself proves the number and confirms at once."""
    from nurture.tokens import make_token
    rt = make_runtime({}, policies=SMS_DOI, templates=SYSTEM_TEMPLATES)
    ann = add_contact(store, "ann@example.com", phone=PHONE)
    bo = add_contact(store, "bo@example.com", phone="+4917612345678")
    with running_site(rt, T0) as site:
        by_mail = make_token(SECRET, "unsubscribe", ann, "marketing", "email")
        response = site.http.post(f"/u/{by_mail}/preferences", data={"channel": ["email", "sms"]})
        assert response.status_code == 200 and "reply START to the text we are sending" in response.text
        _wait_for(lambda: len(_texts(rt)) == 1)
        by_text = make_token(SECRET, "unsubscribe", bo, "marketing", "sms")
        assert site.http.post(f"/u/{by_text}/preferences", data={"channel": "sms"}).status_code == 200
    (text,) = _texts(rt)
    assert text["to"] == PHONE and "Reply START to confirm" in text["body"]
    with store.engine.connect() as conn:
        sms = {cid: (status, confirmed is not None) for cid, status, confirmed in conn.execute(
            select(consent_t.c.contact_id, consent_t.c.status, consent_t.c.confirmed_at)
            .where(consent_t.c.channel == "sms").order_by(consent_t.c.id))}
    assert sms == {ann: ("pending", False), bo: ("granted", True)}

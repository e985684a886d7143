"""Specification: retention (`policies.yaml` `retention:`) — `nurture purge [--dry-run]` and the
hygiene flow delete, per kind, what is older than its period, set-based; a dry run counts the
same and deletes nothing; what a running journey still needs is kept (the trigger event of an
active enrollment, a message inside a frequency-cap window or of an enrollment still in its
journey, a queued message); never-confirmed contacts go entirely, without a tombstone; a kind
without a period is kept."""
from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import func, select

from nurture.privacy.retention import purge
from nurture.runtime import run_tick
from nurture.spec.models import Policies
from nurture.store.tables import consent_t, contact_t, enrollment_t, event_t, message_t, sync_run_t
from tests.conftest import DEFAULT_POLICIES, utc, write_project
from tests.engine_fixtures import add_contact, add_event, journey_yaml, messages, set_consent, subscriber
from tests.test_privacy_erase import hubspot, nurture  # noqa: F401  (fixtures)

NOW = utc(2026, 6, 1, 12)
DAY = timedelta(days=1)
MAIL = journey_yaml("news", """
- id: mail
  send: {channel: email, template: hello, subject: Hi}
- id: wait
  wait: 30d
- id: again
  send: {channel: email, template: hello, subject: Again}
""")


def _count(store, table, *where):
    with store.reading() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def _policies(**retention):
    return Policies.model_validate({"retention": retention,
                                    "frequency_caps": [{"channel": "email", "max": 3, "per": "7d"}]})


def test_old_events_go_but_the_trigger_of_an_active_enrollment_stays(make_runtime, store):
    rt = make_runtime({"news": MAIL})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "page_view", NOW - 400 * DAY)
    add_event(store, cid, "page_view", NOW - 10 * DAY)
    add_event(store, cid, "signup", NOW - 100 * DAY)  # enrolls; the journey waits 30 d after the first mail
    run_tick(rt, "news", NOW - 100 * DAY)
    add_event(store, cid, "signup", NOW - 300 * DAY)  # an old signup that started nothing (trigger passed)
    result = purge(store, _policies(events="90d"), NOW, rt.data_dir)
    assert result.counts["events:events"] == 2  # the 400-day page view and the unused old signup
    names = sorted(e.name for e in _events(store, cid))
    assert names == ["page_view", "signup"]  # the 10-day view and the active enrollment's trigger


def _events(store, cid):
    with store.reading() as conn:
        return conn.execute(select(event_t).where(event_t.c.contact_id == cid)).all()


def test_a_dry_run_counts_the_same_and_deletes_nothing(make_runtime, store):
    rt = make_runtime({})
    cid = add_contact(store, "old@example.com")
    for days in (200, 300, 400):
        add_event(store, cid, "page_view", NOW - days * DAY)
    dry = purge(store, _policies(events="250d"), NOW, rt.data_dir, dry_run=True)
    assert dry.counts["events:events"] == 2 and _count(store, event_t) == 3
    real = purge(store, _policies(events="250d"), NOW, rt.data_dir)
    assert real.counts == dry.counts and _count(store, event_t) == 1


def test_messages_of_finished_enrollments_go_with_their_bodies(make_runtime, store):
    rt = make_runtime({"news": journey_yaml("news", "- id: mail\n  send: {channel: email, template: hello, "
                                                    "subject: Hi}")})
    done = subscriber(store, "done@example.com", at=NOW - 500 * DAY)
    add_event(store, done, "signup", NOW - 100 * DAY)  # (consent was granted at the fixtures' epoch)
    run_tick(rt, "news", NOW - 100 * DAY)
    (sent,) = messages(store, contact_id=done)
    outbox = rt.data_dir / "outbox" / "email" / "news"
    assert (outbox / f"{sent.id:09d}.eml").is_file()
    orphan = outbox / "000999999.eml"  # a body whose row is gone already
    orphan.write_text("old body")
    result = purge(store, _policies(messages="90d", message_bodies="60d"), NOW, rt.data_dir)
    assert result.counts["message_bodies:outbox_emails"] == 2 and not orphan.exists()
    assert result.counts["messages:messages"] == 1 and _count(store, message_t) == 0
    assert [r["kind"] for r in result.rows()] == ["messages", "message_bodies"]


def test_messages_a_running_journey_or_a_cap_needs_are_kept(make_runtime, store):
    rt = make_runtime({"news": MAIL})
    cid = subscriber(store, "ann@example.com", at=NOW - 500 * DAY)
    add_event(store, cid, "signup", NOW - 20 * DAY)
    run_tick(rt, "news", NOW - 20 * DAY)  # mail sent; waits 30 d: still in the journey
    recent = subscriber(store, "bob@example.com", at=NOW - 500 * DAY)
    add_event(store, recent, "signup", NOW - 3 * DAY)
    run_tick(rt, "news", NOW - 3 * DAY)
    with store.engine.begin() as conn:  # Bob's journey is over, but his mail counts for the 7-day cap
        conn.execute(enrollment_t.update().where(enrollment_t.c.contact_id == recent).values(status="completed"))
    result = purge(store, _policies(messages="1d"), NOW, rt.data_dir)
    assert result.cutoffs["messages"] == NOW - 7 * DAY
    assert result.counts["messages:messages"] == 0 and _count(store, message_t) == 2


def test_contacts_that_never_confirmed_go_entirely_and_may_sign_up_again(make_runtime, store):
    rt = make_runtime({})
    pending = add_contact(store, "maybe@example.com", at=NOW - 60 * DAY)
    set_consent(store, pending, status="pending", at=NOW - 60 * DAY, confirmed=False)
    set_consent(store, pending, status="revoked", at=NOW - 30 * DAY, confirmed=False)  # expired by hygiene
    add_event(store, pending, "form_submit", NOW - 60 * DAY)
    confirmed = add_contact(store, "yes@example.com", at=NOW - 60 * DAY)
    set_consent(store, confirmed, status="pending", at=NOW - 60 * DAY, confirmed=False)
    set_consent(store, confirmed, status="granted", at=NOW - 59 * DAY)
    fresh = add_contact(store, "new@example.com", at=NOW - 2 * DAY)
    set_consent(store, fresh, status="pending", at=NOW - 2 * DAY, confirmed=False)
    result = purge(store, _policies(pending_contacts="30d"), NOW, rt.data_dir)
    assert result.counts["pending_contacts:contacts"] == 1 and result.counts["pending_contacts:consents"] == 2
    with store.reading() as conn:
        emails = set(conn.execute(select(contact_t.c.email)).scalars())
        assert conn.execute(select(func.count()).select_from(consent_t)
                            .where(consent_t.c.contact_id == pending)).scalar_one() == 0
    assert emails == {"yes@example.com", "new@example.com"}
    from nurture.ingest import track_records
    back = track_records(store, [(1, {"event_id": "again", "email": "maybe@example.com", "event": "form_submit",
                                      "timestamp": NOW.isoformat()})], now=NOW)
    assert back.errors == [] and back.inserted == 1  # no tombstone: a new sign-up is welcome


def test_a_never_confirmed_contact_with_a_deal_and_files_goes_entirely(make_runtime, store):
    """A CRM deal of such a contact made the purge fail on the deal's foreign key (every later
    purge and hygiene run too); its handover line and SMS line stayed in their files, and
    nothing could remove them any more (erase: not found)."""
    from nurture.store.tables import deal_t, handover_t
    rt = make_runtime({})
    pending = add_contact(store, "maybe@example.com", at=NOW - 60 * DAY, phone="+4915112345678")
    set_consent(store, pending, status="pending", at=NOW - 60 * DAY, confirmed=False)
    with store.engine.begin() as conn:
        conn.execute(deal_t.insert().values(crm="hubspot", deal_id="9", contact_id=pending, email="maybe@example.com",
                                            stage="s1", outcome="open", amount=50.0, modified_at=NOW - 50 * DAY,
                                            created_at=NOW - 50 * DAY, updated_at=NOW - 50 * DAY))
        handover = conn.execute(handover_t.insert().values(
            contact_id=pending, journey="j", step_id="h", stage="mql", score=0.0, destination="file", status="delivered",
            created_at=NOW - 50 * DAY, sla_due_at=NOW - 49 * DAY)).inserted_primary_key[0]
        sms = conn.execute(message_t.insert().values(
            contact_id=pending, journey="j", step_id="s", channel="sms", template="t", purpose="marketing",
            status="sent", address="+4915112345678", attempt_key="", due_at=NOW - 50 * DAY, created_at=NOW - 50 * DAY,
            sent_at=NOW - 50 * DAY)).inserted_primary_key[0]
    (rt.data_dir / "handover").mkdir(parents=True, exist_ok=True)
    (rt.data_dir / "handover" / "handovers.jsonl").write_text(
        json.dumps({"handover_id": handover, "email": "maybe@example.com"}) + "\n"
        + json.dumps({"handover_id": handover + 1, "email": "other@example.com"}) + "\n")
    (rt.data_dir / "outbox").mkdir(parents=True, exist_ok=True)
    (rt.data_dir / "outbox" / "sms.jsonl").write_text(json.dumps({"message_id": sms, "to": "+4915112345678"}) + "\n")
    result = purge(store, _policies(pending_contacts="30d"), NOW, rt.data_dir)
    assert result.counts["pending_contacts:contacts"] == 1
    with store.reading() as conn:
        assert conn.execute(select(deal_t.c.contact_id, deal_t.c.email, deal_t.c.amount)).all() == [(None, None, 50.0)]
    assert "maybe" not in (rt.data_dir / "handover" / "handovers.jsonl").read_text()
    assert "other@example.com" in (rt.data_dir / "handover" / "handovers.jsonl").read_text()
    assert "4915112345678" not in (rt.data_dir / "outbox" / "sms.jsonl").read_text()


HUBSPOT_LIST = """
segments:
  - name: fans
    when: {attribute: {fan: true}}
    destinations:
      - {destination: hubspot, list_id: "45"}
"""


def test_a_never_confirmed_contact_in_a_crm_list_leaves_it_at_the_next_sync(make_runtime, store, hubspot):
    """A HubSpot list needs no consent, so an unconfirmed sign-up is synced into it. The purge
    deleted its acknowledged membership row with the contact: no sync could ever remove the
    person from the list any more."""
    from nurture.registry import IntegrationContext
    from nurture.segments.sync import sync_segments
    from nurture.store.tables import membership_t
    from tests.test_privacy_erase import TOKEN
    rt = make_runtime({}, segments=HUBSPOT_LIST)
    context = IntegrationContext(rt.project.root, rt.data_dir, {**rt.env, "NURTURE_HUBSPOT_TOKEN": TOKEN,
                                                                 "NURTURE_HUBSPOT_BASE_URL": hubspot.url})
    fan = subscriber(store, "fan@example.com", attributes={"fan": True})
    maybe = add_contact(store, "maybe@example.com", at=NOW - 60 * DAY, attributes={"fan": True})
    set_consent(store, maybe, status="pending", at=NOW - 60 * DAY, confirmed=False)
    [report] = sync_segments(store, rt.project, NOW - 59 * DAY, context)
    assert report.added == 2 and hubspot.members("45") == {"fan@example.com", "maybe@example.com"}

    result = purge(store, _policies(pending_contacts="30d"), NOW, rt.data_dir)
    assert result.counts["pending_contacts:contacts"] == 1 and _count(store, contact_t, contact_t.c.id == maybe) == 0
    assert _count(store, membership_t, membership_t.c.contact_id == maybe) == 1  # left for the sync to remove
    # a new sign-up meanwhile (on SQLite before migration 0029 it took the purged contact's id)
    new = add_contact(store, "new@example.com", at=NOW, attributes={"fan": True})
    set_consent(store, new, status="pending", at=NOW, confirmed=False)
    # HubSpot's privacy-deletion webhook for the purged person's record names no one (were the
    # lingering row's contact id the new sign-up's, erasing them would be the wrong person)
    from nurture.privacy.erase import contacts_for_crm_record
    with store.reading() as conn:
        record = conn.execute(select(membership_t.c.payload["record_id"].as_string())
                              .where(membership_t.c.payload["email"].as_string() == "maybe@example.com")).scalar_one()
    assert contacts_for_crm_record(store, "hubspot", record) == []

    [report] = sync_segments(store, rt.project, NOW, context)  # the nightly sync after the purge
    assert (report.status, report.failed) == ("ok", 0)
    assert hubspot.members("45") == {"fan@example.com", "new@example.com"}
    with store.reading() as conn:
        held = conn.execute(select(membership_t.c.contact_id, membership_t.c.payload["email"].as_string())
                            .order_by(membership_t.c.contact_id)).all()
    assert held == [(fan, "fan@example.com"), (new, "new@example.com")]


def test_whatsapp_lines_go_with_the_bodies_and_with_a_never_confirmed_phone_only_contact(make_runtime, store):
    """whatsapp.jsonl lines stayed for good: `message_bodies` read only sms.jsonl, and the
    pending-contact purge passed no WhatsApp messages; a phone-only lead whose SMS opt-in
    stayed pending (docs/lead-ads.md) was never purged at all (the purge asked for an e-mail)."""
    rt = make_runtime({})
    old = add_contact(store, "old@example.com", at=NOW - 500 * DAY, phone="+4915100000001")
    lead = add_contact(store, None, at=NOW - 60 * DAY, phone="+4915100000002")
    set_consent(store, lead, channel="sms", status="pending", at=NOW - 60 * DAY, confirmed=False)
    ids = {}
    with store.engine.begin() as conn:
        for who, phone, key in ((old, "+4915100000001", "old"), (lead, "+4915100000002", "lead")):
            ids[key] = conn.execute(message_t.insert().values(
                contact_id=who, journey="j", step_id="w", channel="whatsapp", template="t", purpose="marketing",
                status="sent", address=f"whatsapp:{phone}", attempt_key=key, due_at=NOW - 100 * DAY,
                created_at=NOW - 100 * DAY if key == "old" else NOW - 50 * DAY,
                sent_at=NOW - 100 * DAY)).inserted_primary_key[0]
    (rt.data_dir / "outbox").mkdir(parents=True, exist_ok=True)
    outbox = rt.data_dir / "outbox" / "whatsapp.jsonl"
    outbox.write_text("".join(json.dumps({"message_id": ids[k], "to": f"whatsapp:+491510000000{n}"}) + "\n"
                              for k, n in (("old", 1), ("lead", 2))))
    dry = purge(store, _policies(message_bodies="90d", pending_contacts="30d"), NOW, rt.data_dir, dry_run=True)
    assert (dry.counts["message_bodies:outbox_whatsapp"], dry.counts["pending_contacts:contacts"]) == (1, 1)
    assert outbox.read_text().count("\n") == 2
    result = purge(store, _policies(message_bodies="90d", pending_contacts="30d"), NOW, rt.data_dir)
    assert (result.counts["message_bodies:outbox_whatsapp"], result.counts["pending_contacts:contacts"]) == (1, 1)
    assert outbox.read_text() == ""
    assert _count(store, contact_t, contact_t.c.id == lead) == 0 and _count(store, contact_t, contact_t.c.id == old) == 1


def test_a_purge_works_from_the_bodies_kept_not_from_the_years_of_message_rows(make_runtime, store, monkeypatch):
    """The hygiene flow purges every 15 minutes: each run looked for the .eml of every kept
    message older than the body period — long gone — under every journey folder (a purge that
    removed nothing took 16–37 s at 100,000 such rows). It now reads the outbox and asks the
    database about the bodies there: the one due goes, a recent one and one still being sent
    stay, and an SMS line whose row is gone goes like an .eml file whose row is gone."""
    rt = make_runtime({})
    cid = add_contact(store, "old@example.com", at=NOW - 800 * DAY)
    kept_rows = []
    for i in range(600):  # years of message rows kept, their bodies purged long ago
        at = NOW - (100 + i) * DAY
        kept_rows.append(dict(contact_id=cid, journey=f"j{i % 6}", step_id="s", attempt_key=f"k{i}", channel="email",
                              purpose="marketing", template="t", status="sent", due_at=at, created_at=at, sent_at=at))
    ids = {}
    with store.engine.begin() as conn:
        conn.execute(message_t.insert(), kept_rows)
        for key, channel, status, age in (("due", "email", "sent", 95), ("recent", "email", "sent", 10),
                                          ("sending", "email", "sending", 95), ("text", "sms", "sent", 10)):
            at = NOW - age * DAY
            ids[key] = conn.execute(message_t.insert().values(
                contact_id=cid, journey="j0", step_id="s", attempt_key=key, channel=channel, purpose="marketing",
                template="t", status=status, due_at=at, created_at=at)).inserted_primary_key[0]
    outbox = rt.data_dir / "outbox"
    for j in range(6):
        (outbox / "email" / f"j{j}").mkdir(parents=True, exist_ok=True)
    bodies = {key: outbox / "email" / "j0" / f"{ids[key]:09d}.eml" for key in ("due", "recent", "sending")}
    for path in bodies.values():
        path.write_text("body")
    (outbox / "sms.jsonl").write_text("".join(json.dumps({"message_id": m, "to": "+4915100000001"}) + "\n"
                                              for m in (ids["text"], 999999)))
    looked_up = []
    real_is_file = type(outbox).is_file
    monkeypatch.setattr(type(outbox), "is_file", lambda self: looked_up.append(self) or real_is_file(self))
    result = purge(store, _policies(message_bodies="90d"), NOW, rt.data_dir)
    assert len(looked_up) < 10  # not one per kept row and journey folder (3,600 before)
    assert (result.counts["message_bodies:outbox_emails"], result.counts["message_bodies:outbox_sms"]) == (1, 1)
    assert not bodies["due"].exists() and bodies["recent"].exists() and bodies["sending"].exists()
    assert [json.loads(line)["message_id"] for line in (outbox / "sms.jsonl").read_text().splitlines()] == [ids["text"]]


def test_sync_records_go_and_kinds_without_a_period_stay(make_runtime, store):
    rt = make_runtime({})
    with store.engine.begin() as conn:
        conn.execute(sync_run_t.insert(), [dict(segment="s", target="t", destination="csv", started_at=NOW - d * DAY,
                                                status="ok") for d in (10, 100)])
    cid = add_contact(store, "old@example.com")
    add_event(store, cid, "page_view", NOW - 1000 * DAY)
    result = purge(store, _policies(sync_records="30d"), NOW, rt.data_dir)
    assert dict(result.counts) == {"sync_records:sync_runs": 1}
    assert _count(store, sync_run_t) == 1 and _count(store, event_t) == 1
    assert purge(store, Policies(), NOW, rt.data_dir).cutoffs == {}


def test_nurture_purge_prints_what_it_removed_and_a_dry_run_what_it_would(tmp_path):
    root = write_project(tmp_path / "shop", {}, policies=DEFAULT_POLICIES + "retention: {events: 30d}\n")
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({"event_id": f"e{i}", "email": "ann@example.com", "event": "page_view",
                                            "timestamp": f"2026-0{m}-01T10:00:00Z"})
                                for i, m in enumerate((1, 2, 5))) + "\n")
    assert nurture(root, "track", str(events)).returncode == 0
    dry = nurture(root, "purge", "--dry-run", "--now", "2026-05-20T00:00:00Z")
    assert dry.returncode == 0 and "events: older than 2026-04-20T00:00 — would remove events 2" in dry.stdout
    done = nurture(root, "purge", "--now", "2026-05-20T00:00:00Z")
    assert "removed events 2" in done.stdout
    again = nurture(root, "purge", "--now", "2026-05-20T00:00:00Z")
    assert "removed nothing" in again.stdout
    none = nurture(write_project(tmp_path / "other", {}), "purge")
    assert none.returncode == 0 and "nothing is purged" in none.stdout


def test_an_old_body_of_a_ten_digit_message_id_is_purged(make_runtime, store):
    """The file channel names a body `{id:09d}.eml`: ten digits and more from id 10⁹ on."""
    rt = make_runtime({})
    cid = add_contact(store, "old@example.com", at=NOW - 800 * DAY)
    at = NOW - 200 * DAY
    big = 1_000_000_001
    with store.engine.begin() as conn:
        conn.execute(message_t.insert().values(
            id=big, contact_id=cid, journey="j0", step_id="s", attempt_key="k", channel="email",
            purpose="marketing", template="t", status="sent", due_at=at, created_at=at, sent_at=at))
    body = rt.data_dir / "outbox" / "email" / "j0" / f"{big:09d}.eml"
    body.parent.mkdir(parents=True, exist_ok=True)
    body.write_text("a body older than the period")
    result = purge(store, _policies(message_bodies="90d"), NOW, rt.data_dir)
    assert not body.exists() and result.counts["message_bodies:outbox_emails"] == 1

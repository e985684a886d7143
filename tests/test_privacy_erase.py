"""The right to erasure (GDPR Art. 17): `nurture erase`, `POST /privacy/erase` and HubSpot's
`contact.privacyDeletion` webhook. A person who went through a journey (e-mail, SMS, a
handover), sits in a CSV audience and a HubSpot list, with consents, a bounce and events, is
erased: nothing in the database or under the data directory names them any more, the contact
row stays (pseudonymized) so reports add up, they leave the audiences at once and HubSpot
deletes them (GDPR delete), an import or event cannot bring them back, and erasing again
changes nothing more. Everything else — another contact's rows and files — is untouched."""
from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select

from integrations.http_retry import RetryPolicy
from nurture.ingest import import_contacts, track_records
from nurture.privacy.erase import contacts_for_crm_record, erase_contacts, erase_emails, erase_people
from nurture.privacy.models import erasure_t
from nurture.registry import IntegrationContext
from nurture.runtime import run_tick
from nurture.segments.sync import default_factory, sync_segments
from nurture.store.tables import (consent_t, contact_t, deal_t, enrollment_t, event_t, handover_t, identity_t,
                                  membership_t, message_t, suppression_t, sync_run_t)
from nurture.web.privacy import hubspot_request_uri, hubspot_signature_v3
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, add_event, add_suppression, journey_yaml, messages, set_consent, subscriber
from tests.fakes.hubspot import FakeHubSpot
from tests.test_web_site import running_site

T0 = utc(2026, 11, 16, 10)  # a Monday, 10:00 UTC: outside quiet hours
TOKEN = "hubspot-token-for-privacy-tests"
PRIVACY_TOKEN = "privacy-token-for-tests-0042"
CLIENT_SECRET = "hubspot-app-client-secret-77"
ALICE, BOB = "alice@example.com", "bob@example.com"
ALICE_PHONE = "+4915123456789"

JOURNEY = journey_yaml("welcome", """
    - id: hello
      send: {channel: email, template: hello, subject: "Hi {{ contact.first_name }}"}
    - id: text
      send: {channel: sms, template: hello}
    - id: to_sales
      handover: {sla: 24h, note: "wants a demo"}
    - id: later
      wait: 3d
    - id: bye
      send: {channel: email, template: other, subject: "Bye"}
""")

SEGMENTS = """
segments:
  - name: fans
    when: {attribute: {fan: true}}
    destinations:
      - {destination: csv, audience: fans}
      - {destination: hubspot, list_id: "45"}
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def hubspot():
    fake = FakeHubSpot(TOKEN).start()
    yield fake
    fake.stop()
    assert fake.problems == [], "HubSpot saw protocol violations"


class World:
    """Alice and Bob after a journey tick and a segment sync."""

    def __init__(self, rt: Any, hubspot: FakeHubSpot):
        self.rt, self.store, self.hubspot = rt, rt.store, hubspot
        rt.env.update({"NURTURE_HUBSPOT_TOKEN": TOKEN, "NURTURE_HUBSPOT_BASE_URL": hubspot.url})
        self.alice = subscriber(self.store, ALICE, channels=("email", "sms", "ads"), first_name="Alice",
                                last_name="Liddell", phone=ALICE_PHONE, country="DE", timezone="Europe/Berlin",
                                locale="de", score=42.0, attributes={"fan": True, "company": "Wonderland GmbH"})
        self.bob = subscriber(self.store, BOB, channels=("email", "ads"), first_name="Bob",
                              attributes={"fan": True})
        add_event(self.store, self.alice, "signup", T0, {"form": "newsletter", "email_seen": ALICE},
                  event_id=f"form-{ALICE}")
        add_event(self.store, self.bob, "signup", T0, {"form": "newsletter"})
        for minutes in (5, 10):
            run_tick(rt, "welcome", T0 + timedelta(minutes=minutes))
        add_suppression(self.store, "hard_bounce", address=ALICE, channel="email", at=T0 + timedelta(minutes=30))
        with self.store.engine.begin() as conn:  # a provider reply that quotes the address
            conn.execute(message_t.update().where(message_t.c.contact_id == self.alice, message_t.c.step_id == "hello")
                         .values(reason=f"250 ok: queued for <{ALICE}>"))
        self.sync()

    @property
    def context(self) -> IntegrationContext:
        return IntegrationContext(self.rt.project.root, self.rt.data_dir, dict(self.rt.env))

    def factory(self, name: str, context: IntegrationContext) -> Any:
        dest = default_factory(name, context)
        if hasattr(dest, "client"):
            dest.client.policy = RetryPolicy(max_attempts=2, base_delay=0.01, sleep=lambda _: None)
        return dest

    def sync(self) -> list:
        return sync_segments(self.store, self.rt.project, T0 + timedelta(hours=1), self.context, factory=self.factory)

    def erase(self, *emails: str, **kwargs: Any):
        return erase_emails(self.store, self.rt.project, emails, context=self.context, actor="cli:tester",
                            now=T0 + timedelta(hours=2), factory=self.factory, **kwargs)

    def csv_members(self) -> set[str]:
        out: set[str] = set()
        for path in sorted((self.rt.data_dir / "audiences" / "fans").glob("*.csv")):
            with open(path, encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    (out.add if path.stem.endswith("-add") else out.discard)(row["email"])
        return out


@pytest.fixture
def world(make_runtime, hubspot):
    rt = make_runtime({"welcome": JOURNEY}, segments=SEGMENTS)
    return World(rt, hubspot)


def dump(store) -> dict[str, list[tuple]]:
    """Every row of every table, as text-comparable tuples."""
    metadata = MetaData()
    metadata.reflect(store.engine)
    out = {}
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            out[table.name] = [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns))]
        conn.rollback()
    return out


def mentions(store, data_dir: Path, *needles: str) -> list[str]:
    """Where the database or a file under the data directory still names any of `needles`."""
    found = []
    for table, rows in dump(store).items():
        for row in rows:
            text = repr(row).lower()
            found.extend(f"{table}: {row}" for n in needles if n.lower() in text)
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.name.startswith("nurture.db"):
            text = path.read_bytes().decode("utf-8", "replace").lower()
            found.extend(f"{path}" for n in needles if n.lower() in text)
    return found


def rows(store, table, *where) -> list:
    with store.engine.connect() as conn:
        out = conn.execute(select(table).where(*where).order_by(table.c.id)).all()
        conn.rollback()
    return out


# ---------------------------------------------------------------- the engine (SQLite + PostgreSQL)


def test_an_erased_person_is_gone_everywhere_and_the_rest_stays(world):
    store, data_dir, alice, bob = world.store, world.rt.data_dir, world.alice, world.bob
    # before: the person is everywhere
    assert mentions(store, data_dir, ALICE, "Liddell", ALICE_PHONE)
    assert world.csv_members() == {sha(ALICE), sha(BOB)}
    assert world.hubspot.members("45") == {ALICE, BOB}
    statuses_before = sorted((m.contact_id, m.step_id, m.status) for m in rows(store, message_t))
    bob_files = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*.eml") if p.read_text().count(BOB))
    assert len([m for m in rows(store, message_t, message_t.c.contact_id == alice) if m.channel == "email"]) == 1
    assert any(ALICE_PHONE in line for line in (data_dir / "outbox" / "sms.jsonl").read_text().splitlines())

    [result] = world.erase(ALICE)

    assert result.outcome == "erased" and result.pending == []
    # events: her signup and the MQL stage change her handover recorded
    assert result.removed["contact"] == 1 and result.removed["events"] == 2 and result.removed["messages"] == 2
    assert result.removed["outbox_emails"] == 1 and result.removed["outbox_sms"] == 1
    assert result.removed["handover_file_lines"] == 1 and result.removed["audience_memberships"] == 2
    assert result.removed["crm_records"] == 1 and result.removed["suppressions"] == 1
    assert result.destinations == {"csv:fans": "removed", "hubspot:45": "removed", "crm:hubspot": "deleted"}
    # nothing in the store or under the data directory names her any more
    assert mentions(store, data_dir, ALICE, "alice", "Liddell", ALICE_PHONE, "Wonderland") == []

    # the contact row stays, pseudonymized: its id holds the foreign keys and report counts
    [contact] = rows(store, contact_t, contact_t.c.id == alice)
    assert (contact.email, contact.phone, contact.first_name, contact.last_name, contact.timezone, contact.country,
            contact.locale, contact.attributes, contact.score) == (None, None, None, None, None, None, None, {}, 0.0)
    assert sorted((m.contact_id, m.step_id, m.status) for m in rows(store, message_t)) == statuses_before
    assert {(m.address, m.subject) for m in rows(store, message_t, message_t.c.contact_id == alice)} == {(None, None)}
    events = sorted(rows(store, event_t, event_t.c.contact_id == alice), key=lambda e: e.name)
    assert [(e.name, e.properties, e.event_id.startswith("erased:")) for e in events] == [
        ("lifecycle_stage_changed", {}, True), ("signup", {}, True)]
    [enrollment] = rows(store, enrollment_t, enrollment_t.c.contact_id == alice)
    assert (enrollment.status, enrollment.exit_reason, enrollment.next_due_at) == ("exited", "erased", None)
    [handover] = rows(store, handover_t, handover_t.c.contact_id == alice)
    assert handover.score == 0.0 and handover.status == "delivered"

    # the consent ledger: pseudonymized rows plus one hashed tombstone with time and reason
    ledger = rows(store, consent_t, consent_t.c.contact_id == alice)
    [tombstone] = [c for c in ledger if c.status == "erased"]
    assert (tombstone.channel, tombstone.purpose, tombstone.subject_hash, tombstone.source,
            tombstone.recorded_at) == ("*", "*", sha(ALICE), "erasure:request", T0 + timedelta(hours=2))
    assert {c.source for c in ledger if c.status != "erased"} == {"test"}
    # suppressions: an `erased` one by hash; the old bounce kept, its address hashed
    supp = {(s.reason, s.address, s.contact_id) for s in rows(store, suppression_t)}
    assert ("erased", sha(ALICE), alice) in supp and ("hard_bounce", sha(ALICE), None) in supp

    # the audiences: out of the CSV audience and the HubSpot list at once, then deleted at HubSpot
    assert world.csv_members() == {sha(BOB)}
    assert world.hubspot.members("45") == {BOB}
    assert world.hubspot.gdpr_deleted == [ALICE] and ALICE not in world.hubspot.contacts
    assert [m.contact_id for m in rows(store, membership_t)] == [bob, bob]
    removal_runs = rows(store, sync_run_t, sync_run_t.c.removed == 1)
    assert {(r.target, r.status) for r in removal_runs} == {("csv:fans", "ok"), ("hubspot:45", "ok")}

    # Bob is untouched: his row, his files, his memberships
    [b] = rows(store, contact_t, contact_t.c.id == bob)
    assert (b.email, b.first_name, b.attributes) == (BOB, "Bob", {"fan": True})
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*.eml") if p.read_text().count(BOB)) == bob_files
    assert json.loads((data_dir / "handover" / "handovers.jsonl").read_text())["contact"]["email"] == BOB

    # the log: who, when, what (counts only) — never the data
    [log] = rows(store, erasure_t)
    assert (log.contact_id, log.subject_hash, log.actor, log.reason, log.outcome, log.pending) == (
        alice, sha(ALICE), "cli:tester", "request", "erased", [])
    assert log.removed == result.removed and log.requested_at == T0 + timedelta(hours=2) and log.completed_at


def test_erasing_again_changes_nothing_more_and_says_already_erased(world):
    world.erase(ALICE)
    before = {k: v for k, v in dump(world.store).items() if k != "erasure"}
    files = sorted((p, p.read_bytes()) for p in world.rt.data_dir.rglob("*") if p.is_file() and "nurture.db" not in p.name)
    requests = len(world.hubspot.requests)

    [again, twice] = world.erase("Alice@Example.com", "alice@example.com")

    assert again is twice and again.outcome == "already_erased" and again.removed == {} and again.pending == []
    assert again.erased_at == T0 + timedelta(hours=2)
    assert {k: v for k, v in dump(world.store).items() if k != "erasure"} == before
    assert sorted((p, p.read_bytes()) for p in world.rt.data_dir.rglob("*")
                  if p.is_file() and "nurture.db" not in p.name) == files
    assert len(world.hubspot.requests) == requests  # nothing asked of HubSpot again
    assert [(e.outcome, e.subject_hash) for e in rows(world.store, erasure_t)] == [
        ("erased", sha(ALICE)), ("already_erased", sha(ALICE))]


def test_erasing_again_sweeps_what_arrived_in_the_instant_of_the_erasure(world):
    world.erase(ALICE)
    with world.store.engine.begin() as conn:  # written by a worker that had read her just before
        conn.execute(event_t.insert().values(event_id=f"late-{ALICE}", contact_id=world.alice, name="page_view",
                                             properties={"email": ALICE}, occurred_at=T0, received_at=T0))
        conn.execute(message_t.insert().values(contact_id=world.alice, journey="welcome", step_id="late",
                                               channel="email", template="hello", subject="Hi Alice", address=ALICE,
                                               status="queued", due_at=T0, created_at=T0))
    [again] = world.erase(ALICE)
    assert again.outcome == "already_erased"
    assert again.removed == {"events": 1, "messages": 1, "messages_cancelled": 1}
    assert mentions(world.store, world.rt.data_dir, ALICE, "alice") == []
    [late] = rows(world.store, message_t, message_t.c.step_id == "late")
    assert (late.status, late.reason) == ("suppressed", "erased")


def test_an_existing_database_upgrades_to_the_privacy_schema_without_losing_rows(empty_db_url):
    from alembic import command
    from alembic.config import Config

    from nurture.store.db import MIGRATIONS, make_engine, open_store
    engine = make_engine(empty_db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008")
    with engine.begin() as conn:
        cid = conn.execute(contact_t.insert().values(email=ALICE, lifecycle_stage="lead", score=1.0, attributes={},
                                                     created_at=T0, updated_at=T0)).inserted_primary_key[0]
        conn.execute(consent_t.insert().values(contact_id=cid, channel="email", purpose="marketing", status="granted",
                                               source="import:old.csv", policy_version="v1", recorded_at=T0))
    engine.dispose()
    store = open_store(empty_db_url)
    try:
        [consent] = rows(store, consent_t)
        assert (consent.contact_id, consent.source, consent.policy_version, consent.subject_hash) == (
            cid, "import:old.csv", "v1", None)
        assert rows(store, erasure_t) == []
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(contact_t)).scalar() == 1
            conn.rollback()
    finally:
        store.dispose()


def test_an_unknown_address_is_not_found_and_nothing_about_it_is_stored(world):
    [result, bad] = world.erase("nobody@example.com", "not an address")
    assert (result.outcome, bad.outcome) == ("not_found", "invalid") and bad.error
    [log] = rows(world.store, erasure_t)
    assert (log.outcome, log.subject_hash, log.contact_id) == ("not_found", None, None)
    assert mentions(world.store, world.rt.data_dir, "nobody") == []
    assert world.hubspot.gdpr_deleted == []


def test_an_erased_person_is_refused_by_import_and_track_and_never_recreated(world, tmp_path):
    world.erase(ALICE)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email,first_name,consent_email\nALICE@example.com,Alice,granted\ncarol@example.com,Carol,granted\n")
    imported = import_contacts(world.store, contacts, now=T0 + timedelta(days=1))
    assert (imported.created, imported.erased) == (1, 1)
    [error] = imported.errors
    assert (error.line, error.field) == (2, "email") and "erased" in error.message and "alice" not in error.message
    tracked = track_records(world.store, [
        (1, {"event_id": "late-1", "email": ALICE, "event": "page_view", "timestamp": "2026-11-17T10:00:00Z"}),
        (2, {"event_id": "late-2", "email": BOB, "event": "page_view", "timestamp": "2026-11-17T10:00:00Z"})],
        now=T0 + timedelta(days=1))
    assert (tracked.inserted, tracked.erased, [(e.line, e.field) for e in tracked.errors]) == (1, 1, [(1, "email")])
    assert mentions(world.store, world.rt.data_dir, ALICE) == []
    with world.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(contact_t)).scalar() == 3  # alice's row, bob, carol
        conn.rollback()
    # and the next nightly sync does not bring her back anywhere
    world.sync()
    assert world.csv_members() == {sha(BOB)} and world.hubspot.members("45") == {BOB}


def test_a_second_address_finds_the_person_and_every_address_of_theirs_is_blocked(world, tmp_path):
    """Alice is also known by her work address (an identify call linked it). Erasing by it
    answered `not_found` ("nothing is held") and kept her whole profile; export-contact said
    "no contact". Now either address finds her, and both stay blocked afterwards."""
    from nurture.privacy.export import export_contact
    work = "alice.work@corp.example"
    with world.store.engine.begin() as conn:
        conn.execute(identity_t.insert().values(contact_id=world.alice, kind="email", value=work,
                                                first_seen_at=T0))
    doc = export_contact(world.store, world.rt.project, work, now=T0 + timedelta(hours=1))
    assert doc is not None and doc["contact"]["email"] == ALICE
    assert [(i["kind"], i["value"]) for i in doc["identities"]] == [("email", work)]
    [result] = world.erase(work)
    assert result.outcome == "erased" and result.request == work
    assert mentions(world.store, world.rt.data_dir, ALICE, work, "Liddell") == []
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"email\n{ALICE}\n{work}\n")
    imported = import_contacts(world.store, contacts, now=T0 + timedelta(days=1))
    assert (imported.created, imported.erased) == (0, 2)
    assert [r.outcome for r in world.erase(ALICE, work)] == ["already_erased", "already_erased"]


def test_an_address_only_a_waiting_crm_deal_holds_is_erased_from_it_and_blocked(world):
    """No contact has carol's address, but a deal waits for her as its contact: erase said
    `not_found` ("nothing is held") and the deal kept her address."""
    carol = "carol.crm@example.com"
    with world.store.engine.begin() as conn:
        conn.execute(deal_t.insert().values(crm="hubspot", deal_id="77", email=carol, name="pilot",
                                            pipeline="default", stage="s1", outcome="open", amount=1000.0,
                                            currency="EUR", modified_at=T0, created_at=T0, updated_at=T0))
    [result] = world.erase(carol.upper())
    assert (result.outcome, result.removed) == ("erased", {"deals": 1})
    assert mentions(world.store, world.rt.data_dir, carol) == []
    with world.store.engine.connect() as conn:
        assert conn.execute(select(deal_t.c.amount, deal_t.c.email)).all() == [(1000.0, None)]  # amounts stay
        conn.rollback()
    assert [r.outcome for r in world.erase(carol)] == ["already_erased"]


def test_an_erased_persons_old_unsubscribe_link_writes_nothing(world, site):
    """One-click unsubscribe and the preference form of an erased person answered 200 and wrote
    a consent row with the client's IP address and user agent, and attributes, to the
    pseudonymized contact."""
    from nurture.tokens import make_token
    from tests.test_web_site import SECRET
    token = make_token(SECRET, "unsubscribe", world.alice, channel="email")
    world.erase(ALICE)
    before = len(rows(world.store, consent_t))
    one_click = site.http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                               headers={"User-Agent": "Zebrafish-Agent/9"})
    form = site.http.post(f"/u/{token}/preferences", content=b"channel=email&topic=news")
    assert "no record" in one_click.text and "no record" in form.text
    assert len(rows(world.store, consent_t)) == before
    assert mentions(world.store, world.rt.data_dir, "zebrafish") == []


def test_a_destination_that_fails_leaves_the_membership_pending_and_erasing_again_retries_it(world):
    world.hubspot.fail_next(2, None)  # the list removal: connection dropped twice (every attempt)
    [result] = world.erase(ALICE)
    assert result.outcome == "erased"
    assert result.destinations["csv:fans"] == "removed" and result.destinations["hubspot:45"] == "pending"
    assert [p.split(":")[0:2] for p in result.pending] == [["hubspot", "45"]]
    assert result.destinations["crm:hubspot"] == "deleted"  # the GDPR delete went through
    [log] = rows(world.store, erasure_t)
    assert log.pending == result.pending and "alice" not in json.dumps(log.pending)
    # the membership row stays until HubSpot confirms the removal: it holds what the removal needs
    # (HubSpot's record id, and the e-mail the list acknowledged) — the only place she is still named
    assert sorted(m.contact_id for m in rows(world.store, membership_t, membership_t.c.target == "hubspot:45")) == [
        world.alice, world.bob]
    assert [m.split(":")[0] for m in mentions(world.store, world.rt.data_dir, ALICE, "Liddell")] == ["segment_membership"]
    [again] = world.erase(ALICE)
    assert again.outcome == "already_erased" and again.pending == []
    assert again.destinations == {"hubspot:45": "removed"} and again.removed == {"audience_memberships": 1}
    assert mentions(world.store, world.rt.data_dir, ALICE, "Liddell") == []


def test_a_provider_reply_quoting_the_person_is_recorded_without_them(world):
    from tests.fakes.http_server import Reply
    world.hubspot.fail_next(1, Reply(400, {"status": "error", "category": "VALIDATION_ERROR",
                                           "message": f"Contact {ALICE} (+{ALICE_PHONE[1:]}) is locked"}))
    [result] = world.erase(ALICE)
    assert result.destinations["hubspot:45"] == "pending" and "[erased]" in result.pending[0]
    assert ALICE not in " ".join(result.pending)
    [log] = rows(world.store, erasure_t)
    assert log.pending == result.pending
    # the membership row waiting for the removal is the only place left that names her
    assert [m.split(":")[0] for m in mentions(world.store, world.rt.data_dir, ALICE, ALICE_PHONE[1:])] == [
        "segment_membership"]


def test_a_crm_whose_gdpr_delete_failed_is_asked_again_by_the_next_erase(world):
    def refuse(request):
        if request.path.endswith("/gdpr-delete"):
            from tests.fakes.http_server import Reply
            return Reply(403, {"status": "error", "category": "MISSING_SCOPES", "message": "scope missing"})
        return original(request)
    original, world.hubspot.handle = world.hubspot.handle, refuse
    [result] = world.erase(ALICE)
    assert result.destinations["crm:hubspot"] == "pending"
    assert result.pending == ["crm:hubspot: HTTP 403: " + result.pending[0].split("HTTP 403: ", 1)[1]]
    world.hubspot.handle = original
    [again] = world.erase(ALICE)
    assert again.outcome == "already_erased" and again.destinations == {"crm:hubspot": "deleted"}
    assert world.hubspot.gdpr_deleted == [ALICE]


class Killed(BaseException):
    """Stands for SIGKILL: the process ends right after the erasure's store transaction committed."""


def _killed_after_the_store_part(world, monkeypatch, who: str) -> None:
    """Erase `who`, the process dying right after the erasure's store transaction committed."""
    import nurture.privacy.erase as erase_module

    def killed(*args, **kwargs):
        raise Killed()
    with monkeypatch.context() as patch:
        patch.setattr(erase_module, "_after_the_channel", killed)
        with pytest.raises(Killed):
            world.erase(who)


def _crash_after_the_store_part(world, monkeypatch) -> None:
    _killed_after_the_store_part(world, monkeypatch, ALICE)
    [log] = rows(world.store, erasure_t)
    assert (log.outcome, log.completed_at, log.pending) == ("in_progress", None, [])
    assert world.hubspot.gdpr_deleted == [] and world.hubspot.members("45") == {ALICE, BOB}


def test_erasing_again_after_a_crash_does_the_whole_downstream_part_and_completes_the_erasure(world, monkeypatch):
    """docs/privacy.md: an `in_progress` row is an erasure interrupted after its store part —
    erase the address again to finish it. The rerun did the files and audiences (re-read from
    the store) but never the HubSpot GDPR delete (nothing was recorded pending), and left the
    row `in_progress` for ever (retention never purges it: no completed_at)."""
    _crash_after_the_store_part(world, monkeypatch)

    [again] = world.erase(ALICE)

    assert again.outcome == "already_erased" and again.pending == []
    assert again.destinations == {"csv:fans": "removed", "hubspot:45": "removed", "crm:hubspot": "deleted"}
    assert world.hubspot.gdpr_deleted == [ALICE] and world.hubspot.members("45") == {BOB}
    assert world.csv_members() == {sha(BOB)}
    assert mentions(world.store, world.rt.data_dir, ALICE, "Liddell", ALICE_PHONE) == []
    first, log = rows(world.store, erasure_t)
    assert (first.outcome, first.pending, log.outcome) == ("erased", [], "already_erased")
    assert first.completed_at is not None and first.requested_at == T0 + timedelta(hours=2)
    assert first.removed["contact"] == 1 and first.removed["consents"] >= 1  # the store part, as recorded
    assert (first.removed["audience_memberships"], first.removed["crm_records"], first.removed["outbox_emails"]) == (
        2, 1, 1)  # and the downstream part the rerun did
    assert log.removed == again.removed
    # finished: a third request asks nothing of HubSpot, and retention purges the completed rows
    requests = len(world.hubspot.requests)
    [third] = world.erase(ALICE)
    assert third.outcome == "already_erased" and third.destinations == {} and third.pending == []
    assert len(world.hubspot.requests) == requests
    from nurture.privacy.retention import purge
    from nurture.spec.models import Policies
    purged = purge(world.store, Policies.model_validate({"retention": {"erasure_records": "1d"}}),
                   utc(2099, 1, 1), world.rt.data_dir)
    assert purged.counts["erasure_records:erasures"] == 3 and rows(world.store, erasure_t) == []


def test_a_rerun_after_a_crash_whose_crm_delete_fails_leaves_it_pending_for_the_next_erase(world, monkeypatch):
    _crash_after_the_store_part(world, monkeypatch)

    def refuse(request):
        if request.path.endswith("/gdpr-delete"):
            from tests.fakes.http_server import Reply
            return Reply(503, {"status": "error", "message": "try later"})
        return original(request)
    original, world.hubspot.handle = world.hubspot.handle, refuse
    [again] = world.erase(ALICE)
    assert again.outcome == "already_erased" and again.destinations["crm:hubspot"] == "pending"
    assert [p.split(":")[:2] for p in again.pending] == [["crm", "hubspot"]]
    first, _ = rows(world.store, erasure_t)
    assert (first.outcome, first.pending) == ("erased", again.pending) and first.completed_at is not None

    world.hubspot.handle = original
    [third] = world.erase(ALICE)
    assert third.destinations == {"crm:hubspot": "deleted"} and third.pending == []
    assert ALICE in world.hubspot.gdpr_deleted


def test_an_interrupted_erasure_of_an_address_only_deals_held_is_completed_by_the_rerun(world, monkeypatch):
    """The rerun answered `already_erased` and left the first row `in_progress` for ever: a
    query for unfinished erasures never came back empty, and retention never purged it."""
    carol = "carol.crm@example.com"
    with world.store.engine.begin() as conn:
        conn.execute(deal_t.insert().values(crm="hubspot", deal_id="77", email=carol, name="pilot",
                                            pipeline="default", stage="s1", outcome="open", amount=1000.0,
                                            currency="EUR", modified_at=T0, created_at=T0, updated_at=T0))

    _killed_after_the_store_part(world, monkeypatch, carol)
    assert [r.outcome for r in rows(world.store, erasure_t)] == ["in_progress"]

    assert [r.outcome for r in world.erase(carol)] == ["already_erased"]
    first, again = rows(world.store, erasure_t)
    assert (first.outcome, first.removed, first.pending) == ("erased", {"deals": 1}, [])
    assert again.outcome == "already_erased"
    assert first.completed_at is not None and first.subject_hash == again.subject_hash == sha(carol)


def test_a_person_whose_address_changed_since_the_sync_is_still_found_by_their_hubspot_record(world):
    record = world.hubspot.contacts[ALICE]
    with world.store.engine.begin() as conn:  # Alice changes her address (an identify, an import)
        conn.execute(contact_t.update().where(contact_t.c.id == world.alice).values(email="alice.new@example.com"))
    assert contacts_for_crm_record(world.store, "hubspot", record) == [world.alice]


def test_a_crashed_workers_sending_row_is_not_waited_for(world):
    """An erasure waits for a message a tick's channel has now; one a crashed run left `sending`
    days ago is reconcile's: waiting for it held every erasure (POST /privacy/erase, the HubSpot
    webhook too) for a minute, then reported it pending."""
    import time
    with world.store.engine.begin() as conn:
        conn.execute(message_t.insert().values(contact_id=world.alice, journey="welcome", step_id="late",
                                               channel="email", template="hello", subject="Hi Alice", address=ALICE,
                                               status="sending", due_at=T0 - timedelta(days=2),
                                               created_at=T0 - timedelta(days=2), claimed_at=T0 - timedelta(days=2)))
    started = time.monotonic()
    [result] = world.erase(ALICE)
    assert time.monotonic() - started < 10 and (result.outcome, result.pending) == ("erased", [])


def test_contacts_are_found_by_their_hubspot_record_id_and_erased_without_asking_hubspot_again(world):
    record = world.hubspot.contacts[ALICE]
    assert contacts_for_crm_record(world.store, "hubspot", record) == [world.alice]
    requests = len(world.hubspot.requests)
    [result] = erase_contacts(world.store, world.rt.project, [(f"hubspot record {record}", world.alice)],
                              context=world.context, actor="webhook:hubspot", reason="hubspot_privacy_deletion",
                              now=T0 + timedelta(hours=2), factory=world.factory, gone_from={"hubspot"})
    assert result.outcome == "erased" and result.request == f"hubspot record {record}"
    assert result.destinations == {"csv:fans": "removed", "hubspot:45": "gone"}
    assert len(world.hubspot.requests) == requests  # HubSpot deleted her itself: nothing is sent there
    assert world.csv_members() == {sha(BOB)}
    assert mentions(world.store, world.rt.data_dir, ALICE, "Liddell") == []
    [tombstone] = [c for c in rows(world.store, consent_t) if c.status == "erased"]
    assert tombstone.subject_hash == sha(ALICE) and tombstone.source == "erasure:hubspot_privacy_deletion"


# ---------------------------------------------------------------- a person known only by phone

NOAH_PHONE, NOAH_OLD_PHONE = "+4915199887766", "+4915100112233"
WA_SID = "HX" + "0123456789abcdef" * 2
TEXTS = journey_yaml("texts", f"""
    - id: text
      send: {{channel: sms, template: hello}}
    - id: wa
      send: {{channel: whatsapp, template: hello, content_sid: "{WA_SID}"}}
""")
PHONE_FANS = """
segments:
  - name: fans
    when: {attribute: {fan: true}}
    destinations:
      - {destination: csv, audience: fans}
"""


class PhoneWorld:
    """Noah, whom Nurture knows only by phone (a phone-only lead): his current number and the
    one he had before (a phone identity), an SMS and a WhatsApp message in the file outbox, a CSV
    audience (his number's hash); and Bob, by e-mail."""

    def __init__(self, rt: Any):
        self.rt, self.store = rt, rt.store
        self.noah = add_contact(self.store, None, phone=NOAH_PHONE, first_name="Noah", last_name="Phoneonly",
                                attributes={"fan": True})
        for channel in ("sms", "whatsapp", "ads"):
            set_consent(self.store, self.noah, channel)
        with self.store.engine.begin() as conn:
            conn.execute(identity_t.insert().values(contact_id=self.noah, kind="phone", value=NOAH_OLD_PHONE,
                                                    first_seen_at=T0))
        self.bob = subscriber(self.store, BOB, channels=("email", "ads"), first_name="Bob", attributes={"fan": True})
        add_event(self.store, self.noah, "signup", T0)
        for minutes in (5, 10):
            run_tick(rt, "texts", T0 + timedelta(minutes=minutes))
        sync_segments(self.store, rt.project, T0 + timedelta(hours=1), self.context)

    @property
    def context(self) -> IntegrationContext:
        return IntegrationContext(self.rt.project.root, self.rt.data_dir, dict(self.rt.env))

    def erase(self, *given: str, **kwargs: Any):
        return erase_people(self.store, self.rt.project, given, context=self.context, actor="cli:tester",
                            now=T0 + timedelta(hours=2), **kwargs)


@pytest.fixture
def phone_world(make_runtime):
    return PhoneWorld(make_runtime({"texts": TEXTS}, segments=PHONE_FANS,
                                   templates={"whatsapp/hello.txt": "Hi {{ contact.first_name }}"}))


def test_a_person_known_only_by_phone_is_erased_by_their_number_everywhere(phone_world):
    store, data_dir, noah = phone_world.store, phone_world.rt.data_dir, phone_world.noah
    assert sorted((m.channel, m.status) for m in messages(store, contact_id=noah)) == [("sms", "sent"),
                                                                                      ("whatsapp", "sent")]
    assert mentions(store, data_dir, NOAH_PHONE, NOAH_OLD_PHONE, "Phoneonly")
    assert [m.contact_id for m in rows(store, membership_t)] == [noah, phone_world.bob]

    [result] = phone_world.erase("+49 151 99887766")  # as people type it

    assert (result.outcome, result.pending, result.destinations) == ("erased", [], {"csv:fans": "removed"})
    assert (result.removed["contact"], result.removed["outbox_sms"], result.removed["outbox_whatsapp"],
            result.removed["audience_memberships"], result.removed["identities"]) == (1, 1, 1, 1, 1)
    # nothing in the store or under the data directory names him, by either number
    assert mentions(store, data_dir, NOAH_PHONE, NOAH_OLD_PHONE, "Noah", "Phoneonly") == []
    assert [m.contact_id for m in rows(store, membership_t)] == [phone_world.bob]
    # his tombstones: the number he was named by and every other one he was known by
    [tombstone] = [c for c in rows(store, consent_t, consent_t.c.contact_id == noah) if c.status == "erased"]
    assert tombstone.subject_hash == sha(NOAH_PHONE)
    assert {s.address for s in rows(store, suppression_t, suppression_t.c.reason == "erased")} == {
        sha(NOAH_PHONE), sha(NOAH_OLD_PHONE)}
    [log] = rows(store, erasure_t)
    assert (log.contact_id, log.subject_hash, log.outcome) == (noah, sha(NOAH_PHONE), "erased")
    # Bob is untouched
    [bob] = rows(store, contact_t, contact_t.c.id == phone_world.bob)
    assert (bob.email, bob.first_name) == (BOB, "Bob")

    [again] = phone_world.erase(NOAH_OLD_PHONE)  # the number he had before names him too
    assert (again.outcome, again.removed, again.erased_at) == ("already_erased", {}, T0 + timedelta(hours=2))


def test_a_number_known_only_as_an_identity_finds_the_person_and_a_national_number_takes_the_default_country(
        phone_world):
    [result] = phone_world.erase("0151 00112233", default_country="DE")
    assert result.outcome == "erased" and result.removed["contact"] == 1
    assert mentions(phone_world.store, phone_world.rt.data_dir, NOAH_PHONE, NOAH_OLD_PHONE, "Noah") == []


def test_a_person_with_an_email_named_by_their_number_is_erased_as_by_their_address(world):
    [result] = erase_people(world.store, world.rt.project, [ALICE_PHONE], context=world.context, actor="cli:tester",
                            now=T0 + timedelta(hours=2), factory=world.factory)
    assert result.outcome == "erased" and world.hubspot.gdpr_deleted == [ALICE]  # the CRM delete by her address
    assert mentions(world.store, world.rt.data_dir, ALICE, "Liddell", ALICE_PHONE) == []
    [log] = rows(world.store, erasure_t)
    assert log.subject_hash == sha(ALICE)
    assert {s.address for s in rows(world.store, suppression_t, suppression_t.c.reason == "erased")} == {
        sha(ALICE), sha(ALICE_PHONE)}
    [again] = world.erase(ALICE)
    assert again.outcome == "already_erased"


def test_a_number_several_contacts_share_erases_no_one(phone_world):
    other = add_contact(phone_world.store, "sister@example.com", phone=NOAH_PHONE, first_name="Sister")
    [result, bad] = phone_world.erase(NOAH_PHONE, "call me")
    assert result.outcome == "invalid" and "2 contacts" in result.error and "e-mail" in result.error
    assert bad.outcome == "invalid" and "not an e-mail address or phone number" in bad.error
    assert [c.first_name for c in rows(phone_world.store, contact_t, contact_t.c.id.in_((phone_world.noah, other)))] == [
        "Noah", "Sister"]
    assert rows(phone_world.store, suppression_t, suppression_t.c.reason == "erased") == []


def test_a_person_erased_by_phone_is_refused_by_phone_only_imports_and_segment_messages(phone_world, tmp_path):
    phone_world.erase(NOAH_PHONE)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"phone,first_name\n{NOAH_OLD_PHONE},Noah\n+4915100000001,Other\n"
                        f"{NOAH_PHONE},Noah\n")
    imported = import_contacts(phone_world.store, contacts, now=T0 + timedelta(days=1))
    assert (imported.created, imported.erased) == (1, 2)
    assert [(e.line, e.field) for e in imported.errors] == [(2, "phone"), (4, "phone")]
    assert "erased" in imported.errors[0].message and NOAH_OLD_PHONE not in imported.errors[0].message
    write_key = "write-key-for-privacy-tests-0123"
    with running_site(phone_world.rt, T0 + timedelta(days=1), NURTURE_WRITE_KEY=write_key) as site:
        identify = site.http.post("/v1/identify", auth=(write_key, ""), json={
            "anonymousId": "browser-1", "traits": {"phone": NOAH_PHONE, "firstName": "Noah"}, "messageId": "m-1"})
        tracked = site.http.post("/v1/track", auth=(write_key, ""), json={
            "userId": "noah-1", "event": "page_view", "context": {"traits": {"phone": NOAH_OLD_PHONE}},
            "messageId": "m-2"})
    assert identify.status_code == 200 and tracked.status_code == 200, (identify.text, tracked.text)
    assert mentions(phone_world.store, phone_world.rt.data_dir, NOAH_PHONE, NOAH_OLD_PHONE, "Noah") == []


def test_privacy_erase_takes_phone_numbers(make_runtime):
    phone_world = PhoneWorld(make_runtime({"texts": TEXTS}, segments=PHONE_FANS,
                                          templates={"whatsapp/hello.txt": "Hi {{ contact.first_name }}"}))
    with running_site(phone_world.rt, T0 + timedelta(hours=2), NURTURE_PRIVACY_TOKEN=PRIVACY_TOKEN,
                      NURTURE_DEFAULT_COUNTRY="DE") as site:
        answer = site.http.post("/privacy/erase", json={"emails": ["nobody@example.com"], "phones": ["0151 99887766"]},
                                headers={"Authorization": f"Bearer {PRIVACY_TOKEN}"})
    assert answer.status_code == 200, answer.text
    unknown, noah = answer.json()["results"]
    assert (unknown["outcome"], noah["request"], noah["outcome"]) == ("not_found", "0151 99887766", "erased")
    assert mentions(phone_world.store, phone_world.rt.data_dir, NOAH_PHONE, "Noah") == []


# ---------------------------------------------------------------- HubSpot's signature v3


def test_the_v3_signature_is_hmac_sha256_of_method_uri_body_and_timestamp():
    body = b'[{"objectId":1}]'
    expected = base64.b64encode(hmac.new(b"secret", b"POSThttps://x.example/webhooks/hubspot?a=b:c" + body + b"1700000000000",
                                         hashlib.sha256).digest()).decode()
    assert hubspot_signature_v3("secret", "POST", "https://x.example/webhooks/hubspot?a=b%3Ac", body,
                                "1700000000000") == expected
    assert hubspot_request_uri("https://x.example/p?e=a%40b.com%2Cc%2fd&s=%20") == "https://x.example/p?e=a@b.com,c/d&s=%20"


# ---------------------------------------------------------------- the web endpoints


@pytest.fixture
def site(world):
    with running_site(world.rt, T0 + timedelta(hours=2), NURTURE_PRIVACY_TOKEN=PRIVACY_TOKEN,
                      NURTURE_HUBSPOT_CLIENT_SECRET=CLIENT_SECRET) as s:
        yield s


def test_privacy_erase_needs_the_privacy_token(site, world):
    body = {"emails": [ALICE]}
    missing = site.http.post("/privacy/erase", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = site.http.post("/privacy/erase", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and PRIVACY_TOKEN not in wrong.text
    other = site.http.post("/privacy/erase", json=body, headers={"Authorization": f"Basic {PRIVACY_TOKEN}"})
    assert other.status_code == 401
    assert rows(world.store, erasure_t) == [] and rows(world.store, contact_t, contact_t.c.email == ALICE)


BAD_BODIES = [
    (b"{not json", "body"),
    (b'["alice@example.com"]', "body"),
    (b"{}", "emails"),
    (b'{"emails": []}', "emails"),
    (b'{"emails": "alice@example.com"}', "emails"),
    (b'{"emails": ["alice@example.com", 7]}', "emails[1]"),
    (b'{"emails": ["alice@example.com", "not an address"]}', "emails[1]"),
    (b'{"emails": ["alice@example.com"], "reason": "Because I say so!"}', "reason"),
    (b'{"emails": ["alice@example.com"], "force": true}', "force"),
    (b'{"phones": []}', "phones"),
    (b'{"phones": ["+4915123456789", "call me"]}', "phones[1]"),
    (b'{"phones": ["alice@example.com"]}', "phones[0]"),
    (b'{"emails": ["alice@example.com"], "phones": [4915123456789]}', "phones[0]"),
    (b'{"phones": ["015123456789"]}', "phones[0]"),  # national, and no NURTURE_DEFAULT_COUNTRY
]


def test_privacy_erase_names_the_field_of_a_bad_body_and_erases_nothing(site, world):
    """Each bad body in turn, against one world (a world per body cost ~0.3 s each)."""
    for body, field in BAD_BODIES:
        answer = site.http.post("/privacy/erase", content=body, headers={"Authorization": f"Bearer {PRIVACY_TOKEN}",
                                                                           "Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500 and answer.json()["field"] == field, (body, answer.text)
        assert rows(world.store, erasure_t) == [] and rows(world.store, contact_t, contact_t.c.email == ALICE), body


def test_privacy_erase_erases_and_answers_per_address(site, world):
    auth = {"Authorization": f"Bearer {PRIVACY_TOKEN}"}
    answer = site.http.post("/privacy/erase", json={"emails": [ALICE, "nobody@example.com"], "reason": "ticket-4711"},
                            headers=auth)
    assert answer.status_code == 200, answer.text
    first, unknown = answer.json()["results"]
    assert (first["outcome"], first["removed"]["contact"], first["pending"]) == ("erased", 1, [])
    assert unknown["outcome"] == "not_found"
    again = site.http.post("/privacy/erase", json={"emails": [ALICE]}, headers=auth).json()["results"]
    assert [r["outcome"] for r in again] == ["already_erased"]
    assert [(e.actor, e.reason, e.outcome) for e in rows(world.store, erasure_t)] == [
        ("web", "ticket-4711", "erased"), ("web", "ticket-4711", "not_found"), ("web", "request", "already_erased")]
    assert world.csv_members() == {sha(BOB)} and world.hubspot.gdpr_deleted == [ALICE]


def test_the_events_webhook_refuses_an_erased_address_and_keeps_the_others(world):
    world.erase(ALICE)
    with running_site(world.rt, T0 + timedelta(hours=3), NURTURE_INGEST_TOKEN="ingest-token-privacy") as other:
        answer = other.http.post("/events", headers={"Authorization": "Bearer ingest-token-privacy"}, json=[
            {"event_id": "w1", "email": ALICE, "event": "page_view", "timestamp": "2026-11-16T12:00:00Z"},
            {"event_id": "w2", "email": BOB, "event": "page_view", "timestamp": "2026-11-16T12:00:00Z"}])
    assert answer.status_code == 200
    body = answer.json()
    assert body["inserted"] == 1 and [(e["record"], e["field"]) for e in body["errors"]] == [(1, "email")]
    assert mentions(world.store, world.rt.data_dir, ALICE) == []


def _signed(site, body: bytes, *, secret: str = CLIENT_SECRET, timestamp: int | None = None,
            path: str = "/webhooks/hubspot") -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(site.clock["now"].timestamp() * 1000))
    return {"X-HubSpot-Signature-v3": hubspot_signature_v3(secret, "POST", site.url + path, body, ts),
            "X-HubSpot-Request-Timestamp": ts, "Content-Type": "application/json"}


def _deletion(record: str) -> bytes:
    return json.dumps([{"eventId": 101, "subscriptionId": 7, "portalId": 62515, "appId": 54321,
                        "occurredAt": 1763287200000, "subscriptionType": "contact.privacyDeletion",
                        "attemptNumber": 0, "objectId": int(record), "changeSource": "GDPR"},
                       {"eventId": 102, "subscriptionType": "contact.deletion", "objectId": int(record)}]).encode()


def test_the_hubspot_webhook_verifies_the_v3_signature(site, world):
    body = _deletion(world.hubspot.contacts[ALICE])
    assert site.http.post("/webhooks/hubspot", content=body).status_code == 401
    assert site.http.post("/webhooks/hubspot", content=body,
                          headers=_signed(site, body, secret="another-secret")).status_code == 401
    assert site.http.post("/webhooks/hubspot", content=body + b" ",
                          headers=_signed(site, body)).status_code == 401  # the body was changed
    stale = int((site.clock["now"] - timedelta(minutes=6)).timestamp() * 1000)
    assert site.http.post("/webhooks/hubspot", content=body, headers=_signed(site, body, timestamp=stale)).status_code == 401
    for odd in (b"9" * 5000, "\u00b2".encode("latin-1")):  # int() refuses both; "²" is a digit to str.isdigit
        headers = {**_signed(site, body), "X-HubSpot-Request-Timestamp": odd}
        assert site.http.post("/webhooks/hubspot", content=body, headers=headers).status_code == 401  # was a 500
    assert rows(world.store, erasure_t) == [] and rows(world.store, contact_t, contact_t.c.email == ALICE)
    assert site.http.post("/webhooks/hubspot", content=b"[]", headers=_signed(site, b"[]")).json() == {
        "erased": 0, "already_erased": 0, "unknown": 0, "ignored": 0}


def test_a_hubspot_privacy_deletion_erases_the_contact_here_too(site, world):
    record = world.hubspot.contacts[ALICE]
    requests = len(world.hubspot.requests)
    body = _deletion(record)
    answer = site.http.post("/webhooks/hubspot", content=body, headers=_signed(site, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"erased": 1, "already_erased": 0, "unknown": 0, "ignored": 1}
    assert len(world.hubspot.requests) == requests  # HubSpot is not called back
    assert world.csv_members() == {sha(BOB)}
    assert mentions(world.store, world.rt.data_dir, ALICE, "Liddell") == []
    [log] = rows(world.store, erasure_t)
    assert (log.actor, log.reason, log.outcome) == ("webhook:hubspot", "hubspot_privacy_deletion", "erased")
    # a replay: her HubSpot record id was forgotten with her memberships — nothing left to do
    replay = site.http.post("/webhooks/hubspot", content=body, headers=_signed(site, body))
    assert replay.json() == {"erased": 0, "already_erased": 0, "unknown": 1, "ignored": 1}
    unknown = _deletion("999999")
    assert site.http.post("/webhooks/hubspot", content=unknown, headers=_signed(site, unknown)).json()["unknown"] == 1


def test_the_privacy_endpoints_are_off_without_their_secrets(world):
    with running_site(world.rt, T0) as bare:
        assert bare.http.post("/privacy/erase", json={"emails": [ALICE]},
                              headers={"Authorization": "Bearer x"}).status_code == 403
        assert bare.http.post("/webhooks/hubspot", content=b"[]").status_code == 403


# ---------------------------------------------------------------- the CLI, through the real entry point


def nurture(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NURTURE_PROJECT": str(root), "NURTURE_DATABASE_URL": f"sqlite:///{root / '.nurture' / 'cli.db'}",
           "NURTURE_DATA_DIR": str(root / ".nurture"), "COLUMNS": "200"}
    for name in ("NURTURE_DEBUG", "NURTURE_HUBSPOT_TOKEN", "PREFECT_API_URL"):
        env.pop(name, None)
    from tests.cli_inproc import run_cli
    proc = run_cli(list(args), env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def test_the_cli_erases_exports_and_refuses_to_reimport(tmp_path):
    root = write_project(tmp_path / "shop", {}, segments="""
        segments:
          - name: fans
            when: {attribute: {fan: true}}
            destinations:
              - {destination: csv, audience: fans}
        """)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"email,first_name,fan,consent_email,consent_ads\n{ALICE},Alice,true,granted,granted\n"
                        f"{BOB},Bob,true,granted,granted\n")
    assert nurture(root, "import", "contacts", str(contacts)).returncode == 0

    exported = nurture(root, "export-contact", ALICE)
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert doc["contact"]["first_name"] == "Alice" and {c["channel"] for c in doc["consents"]} == {"email", "ads"}

    erased = nurture(root, "erase", ALICE)
    assert erased.returncode == 0, erased.stdout + erased.stderr
    assert f"{ALICE}: erased (erasure #1)" in erased.stdout and "contact 1" in erased.stdout

    listing = tmp_path / "requests.txt"
    listing.write_text(f"# Art. 17 requests of the week\n\n{ALICE.upper()}\nnot-an-address\nnobody@example.com\n")
    again = nurture(root, "erase", "--file", str(listing), "--reason", "weekly-batch")
    assert again.returncode == 1
    assert f"{ALICE.upper()}: already erased on" in again.stdout
    assert "nobody@example.com: not found" in again.stdout
    assert "requests.txt:4: not an e-mail address" in again.stderr

    reimport = nurture(root, "import", "contacts", str(contacts))
    assert reimport.returncode == 1
    assert "contacts.csv:2: email: erased at the person's request" in reimport.stderr
    assert "0 created, 1 updated" in reimport.stdout

    gone = nurture(root, "export-contact", ALICE)
    assert gone.returncode == 1 and "was erased on" in gone.stderr and "nothing is held" in gone.stderr
    out = tmp_path / "bob.json"
    kept = nurture(root, "export-contact", BOB, "--out", str(out))
    assert kept.returncode == 0 and kept.stdout == ""
    assert json.loads(out.read_text())["contact"]["email"] == BOB and (out.stat().st_mode & 0o777) == 0o600
    assert nurture(root, "erase").returncode == 2


def test_the_cli_exports_and_erases_a_person_known_only_by_phone(tmp_path, monkeypatch):
    root = write_project(tmp_path / "shop", {})
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"phone,first_name,consent_sms\n{NOAH_PHONE},Noah,granted\n")
    assert nurture(root, "import", "contacts", str(contacts)).returncode == 0
    monkeypatch.setenv("NURTURE_DEFAULT_COUNTRY", "DE")

    exported = nurture(root, "export-contact", NOAH_PHONE)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["contact"]["first_name"] == "Noah"

    erased = nurture(root, "erase", "0151 99887766")  # national: NURTURE_DEFAULT_COUNTRY
    assert erased.returncode == 0, erased.stdout + erased.stderr
    assert "0151 99887766: erased (erasure #1)" in erased.stdout and "contact 1" in erased.stdout
    gone = nurture(root, "export-contact", NOAH_PHONE)
    assert gone.returncode == 1 and "was erased on" in gone.stderr
    unknown = nurture(root, "export-contact", "+4915100000001")
    assert unknown.returncode == 1 and "no contact with phone number +4915100000001" in unknown.stderr
    reimport = nurture(root, "import", "contacts", str(contacts))
    assert reimport.returncode == 1 and "contacts.csv:2: phone: erased at the person's request" in reimport.stderr


def test_what_an_erasure_keeps_never_enrolls_the_person_in_a_journey_again(make_runtime, store):
    """An erased contact keeps its id, stage, timestamps and its events' names and times. None
    of them enrolls it again: not an event still within a new journey's lookback, not a
    condition on the stage or on those events, not the anniversary of its signup."""
    hello = "- {id: hello, send: {channel: email, template: hello, subject: Hello}}"
    flag = "- {id: mark, update: {attributes: {touched: true}}}"
    journeys = {
        "on_event": journey_yaml("on_event", flag, trigger="{event: page_view, lookback: 30d}"),
        "on_viewer": journey_yaml("on_viewer", flag, trigger="{when: {event: page_view, within: 30d}}"),
        "on_signup_day": journey_yaml("on_signup_day", hello, trigger="{date: created_at, every: year}"),
    }
    rt = make_runtime(journeys)
    signed_up = T0 - timedelta(days=365)
    alice = subscriber(store, ALICE, lifecycle_stage="customer", created_at=signed_up)
    bob = subscriber(store, BOB, lifecycle_stage="customer", created_at=signed_up)
    for cid in (alice, bob):
        add_event(store, cid, "page_view", T0 - timedelta(days=2))
    erase_contacts(store, rt.project, [("alice", alice)], context=IntegrationContext(rt.project.root, rt.data_dir, {}),
                   actor="cli:tester", now=T0 - timedelta(days=1))
    for name in journeys:
        run_tick(rt, name, T0 + timedelta(hours=1))
    with store.engine.connect() as conn:
        entered = sorted(conn.execute(select(enrollment_t.c.journey, enrollment_t.c.contact_id)).all())
        conn.rollback()
    assert entered == [("on_event", bob), ("on_signup_day", bob), ("on_viewer", bob)]


# ---------------------------------------------------------------- the report's money stays


@pytest.mark.parametrize("properties, kept", [
    ({"value": 100, "discount": 10, "currency": "EUR", "name": "Alice", "address": "1 Rabbit Hole"},
     {"value": 100, "discount": 10, "currency": "EUR"}),
    ({"value": "45.00", "amount": 1200.0, "revenue": 3}, {"value": "45.00", "amount": 1200.0, "revenue": 3}),
    ({"value": "45 EUR", "discount": True, "amount": float("nan"), "currency": "euro"}, {}),  # no amounts
    ({"coupon": "welcome10", "code": "ALICE-7F3K"}, {"coupon": "welcome10"}),  # only a declared code
    ({"deal_id": "D-1", "email": "alice@example.com", "note": "call Alice"}, {}),
    (None, {}),
])
def test_an_erased_event_keeps_only_the_amounts_the_reports_read(properties, kept):
    from nurture.privacy.kept_amounts import kept_properties
    assert kept_properties(properties, frozenset({"welcome10"})) == kept


def test_erasing_a_customer_leaves_the_reports_money_as_it_was(make_project, store, tmp_path):
    """docs/privacy.md: every report still adds up. Two customers bought for 100 € with a 10 €
    coupon after a journey's e-mail; one of them also won a 1,000 € deal. Erasing her keeps the
    lead-source revenue (1,200 €), the CLV (600 €) and the journey's offer cost (20 €)."""
    from nurture.reporting import build_report
    from nurture.reporting.contract import report_json
    from nurture.spec.project import load_project
    from nurture.store.tables import touch_t
    offer = ("- id: mail\n  send: {channel: email, template: hello, subject: Hi, "
             "offer: {code: WELCOME10, value: 10}}")
    project = load_project(make_project({"j": journey_yaml("j", offer, extra="goal: {event: purchase, within: 3d}")}))
    assert project.errors == []
    bought = T0 + timedelta(hours=3)
    people = []
    with store.engine.begin() as conn:
        for email in (ALICE, BOB):
            cid = conn.execute(contact_t.insert().values(
                email=email, first_name="Alice", lifecycle_stage="lead", score=0.0, attributes={},
                created_at=T0, updated_at=T0)).inserted_primary_key[0]
            people.append(cid)
            eid = conn.execute(enrollment_t.insert().values(
                contact_id=cid, journey="j", version="v1", step_id=None, status="converted", holdout=False,
                entered_at=T0, converted_at=bought, revenue=100.0, defer_count=0, state={})).inserted_primary_key[0]
            conn.execute(message_t.insert().values(
                enrollment_id=eid, contact_id=cid, journey="j", step_id="mail", attempt_key="send", channel="email",
                purpose="marketing", template="hello", status="sent", due_at=T0 + timedelta(hours=1),
                created_at=T0 + timedelta(hours=1), sent_at=T0 + timedelta(hours=1), attempts=1))
            conn.execute(touch_t.insert().values(contact_id=cid, touch="first", source="google", medium="cpc",
                                                 occurred_at=T0))
    alice, bob = people
    for cid in people:
        add_event(store, cid, "purchase", bought, {"value": 100, "coupon": "WELCOME10", "currency": "EUR",
                                                   "shipping_name": "Alice Liddell"})
    add_event(store, alice, "deal_won", bought, {"value": 1000, "currency": "EUR", "deal_id": "D1",
                                                 "name": "Liddell Ltd renewal"})

    def money():
        j = report_json(build_report(store, project, T0 + timedelta(days=5)))
        return (j["sources_total"]["revenue"], j["sources_total"]["customers"], j["kpis"]["clv"],
                j["journeys"][0]["costs"]["offers"], j["journeys"][0]["roi"])
    # 100 + 100 + 1,000 €; CLV 1,200 / 2 buyers; 2 coupons × 10 €; ROI (200 − 20.002) / 20.002 (2 e-mails × 0.001 €)
    before = money()
    assert before == (1200.0, 2, 600.0, 20.0, pytest.approx(179.998 / 20.002))
    [result] = erase_emails(store, project, [ALICE], context=IntegrationContext(project.root, tmp_path / "data", {}),
                            actor="test", now=T0 + timedelta(days=4))
    assert result.outcome == "erased" and money() == before
    kept = {e.name: e.properties for e in rows(store, event_t, event_t.c.contact_id == alice)}
    assert kept == {"purchase": {"value": 100, "coupon": "WELCOME10", "currency": "EUR"},
                    "deal_won": {"value": 1000, "currency": "EUR"}}
    # erasing again finds nothing more to change in her events
    [again] = erase_emails(store, project, [ALICE], context=IntegrationContext(project.root, tmp_path / "data", {}),
                           actor="test", now=T0 + timedelta(days=4, hours=1))
    assert again.outcome == "already_erased" and again.removed.get("events", 0) == 0

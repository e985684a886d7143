"""Specification (issue 13, item 7): a contact already in a HubSpot list whose properties change
(phone, name) is updated in place — one contact upsert, no list removal, no list add — so the
CRM's list workflows do not fire again and a failed upsert never leaves the contact off the list.
A changed e-mail is a different HubSpot record (HubSpot upserts by e-mail), so it still takes the
old record out and puts the new one in. Runs the real sync engine on both stores against the
local fake HubSpot."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from integrations.http_retry import RetryPolicy
from nurture.registry import IntegrationContext
from nurture.segments.sync import default_factory, sync_segments
from nurture.spec.project import load_project
from nurture.store.tables import contact_t, membership_t
from tests.conftest import utc, write_project
from tests.fakes.http_server import Reply
from tests.fakes.hubspot import FakeHubSpot

NOW = utc(2026, 11, 21, 1, 0)
TOKEN = "hubspot-list-token"
LIST = "45"


@pytest.fixture
def crm(store, tmp_path):
    server = FakeHubSpot(TOKEN).start()
    root = write_project(tmp_path / "p", {}, segments=f"""
        segments:
          - name: vip
            when: {{attribute: {{vip: true}}}}
            destinations:
              - {{destination: hubspot, list_id: "{LIST}"}}
        """)
    project = load_project(root)
    assert not project.errors, [str(e) for e in project.errors]
    env = {"NURTURE_HUBSPOT_TOKEN": TOKEN, "NURTURE_HUBSPOT_BASE_URL": server.url, "NURTURE_SYNC_MAX_ATTEMPTS": "2"}
    context = IntegrationContext(root, tmp_path / ".nurture", env)
    waits: list[float] = []

    def factory(name, ctx):
        dest = default_factory(name, ctx)
        dest.client.policy = RetryPolicy(max_attempts=2, base_delay=0.0, sleep=waits.append)
        return dest

    def sync(now):
        [report] = sync_segments(store, project, now, context, factory=factory)
        return report

    ids = {}
    at = NOW - timedelta(days=30)
    with store.engine.begin() as conn:
        for name, phone in (("ann", "+4915112345678"), ("bob", None)):
            ids[name] = conn.execute(contact_t.insert().values(
                email=f"{name}@example.com", phone=phone, first_name=name.title(), lifecycle_stage="customer",
                score=0.0, attributes={"vip": True}, created_at=at, updated_at=at)).inserted_primary_key[0]
    first = sync(NOW)
    assert (first.status, first.added) == ("ok", 2) and server.members(LIST) == {"ann@example.com", "bob@example.com"}
    yield server, store, ids, sync
    server.stop()
    assert server.problems == []


def change(store, contact_id, when, **values):
    with store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == contact_id).values(updated_at=when, **values))


def list_requests(server, since):
    return [(r.method, r.path) for r in server.requests[since:] if "/lists/" in r.path]


def upserted(server, since):
    return [i for r in server.requests[since:] if r.path.endswith("/batch/upsert") for i in r.json()["inputs"]]


def test_a_listed_contact_whose_phone_changes_gets_only_a_contact_upsert(crm):
    server, store, ids, sync = crm
    later = NOW + timedelta(days=1)
    change(store, ids["ann"], later, phone="+4915199999999")
    mark = len(server.requests)
    report = sync(later + timedelta(hours=1))
    assert (report.status, report.updated, report.added, report.removed, report.failed) == ("ok", 1, 0, 0, 0)
    assert list_requests(server, mark) == []  # no memberships/remove, no memberships/add
    assert [(i["id"], i["properties"]["phone"]) for i in upserted(server, mark)] == \
        [("ann@example.com", "+4915199999999")]
    assert server.properties["ann@example.com"]["phone"] == "+4915199999999"
    assert server.members(LIST) == {"ann@example.com", "bob@example.com"}
    assert report.requests == 1
    assert sync(later + timedelta(hours=2)).requests == 0  # acknowledged: nothing left to send


def test_a_failed_upsert_leaves_the_contact_in_the_list_and_is_retried_next_run(crm):
    server, store, ids, sync = crm
    later = NOW + timedelta(days=1)
    change(store, ids["ann"], later, phone="+4915199999999", first_name="Annie")
    server.fail_next(2, Reply(503, {"status": "error", "message": "Service unavailable"}))  # both attempts
    mark = len(server.requests)
    report = sync(later + timedelta(hours=1))
    assert (report.status, report.updated, report.failed) == ("failed", 0, 1)
    assert list_requests(server, mark) == []
    assert server.members(LIST) == {"ann@example.com", "bob@example.com"}  # still listed
    with store.engine.connect() as conn:
        held = conn.execute(select(membership_t.c.contact_id)).scalars().all()
        conn.rollback()
    assert sorted(held) == sorted(ids.values())  # still acknowledged as a member, with its old state
    again = sync(later + timedelta(hours=2))
    assert (again.status, again.updated, again.failed) == ("ok", 1, 0)
    assert server.properties["ann@example.com"]["firstname"] == "Annie"
    assert server.members(LIST) == {"ann@example.com", "bob@example.com"}


def test_a_rejected_upsert_of_a_listed_contact_fails_alone_and_keeps_it_listed(crm):
    server, store, ids, sync = crm
    later = NOW + timedelta(days=1)
    change(store, ids["ann"], later, phone="+4915199999999")
    change(store, ids["bob"], later, first_name="Robert")
    server.rejected.add("ann@example.com")  # a 207 multi-status naming ann
    report = sync(later + timedelta(hours=1))
    assert (report.status, report.updated, report.failed) == ("partial", 1, 1)
    assert "VALIDATION_ERROR" in report.errors[0]["reason"]
    assert server.members(LIST) == {"ann@example.com", "bob@example.com"}


def test_a_changed_email_is_another_hubspot_record_so_it_replaces_the_old_one_in_the_list(crm):
    server, store, ids, sync = crm
    later = NOW + timedelta(days=1)
    change(store, ids["bob"], later, email="robert@example.com")
    mark = len(server.requests)
    report = sync(later + timedelta(hours=1))
    assert (report.status, report.updated, report.added, report.removed) == ("ok", 1, 0, 0)
    assert [m for m, _ in list_requests(server, mark)] == ["PUT", "PUT"]  # remove the old record, add the new
    assert server.members(LIST) == {"ann@example.com", "robert@example.com"}

"""Specification of the sync engine on both stores (a SQLite file and a real PostgreSQL):
membership is one SQL expression over all contacts (ads consent = latest ledger row,
suppressions by contact or address), the diff is against the acknowledged state, and every
run leaves a sync_run row. The destination here is the real CSV one (no server needed);
the provider protocols have their own conformance suite."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

from integrations.csv_audience import CsvAudienceDestination
from integrations.hubspot import HubSpotDestination
from nurture.consent_ledger import record_consent, suppress
from nurture.registry import IntegrationContext, IntegrationError
from nurture.segments.membership import members
from nurture.segments.sync import _upsert, sync_segments
from nurture.spec.project import load_project
from nurture.store.tables import consent_t, contact_t, event_t, membership_t, sync_run_t
from tests.conftest import utc, write_project

NOW = utc(2026, 11, 21, 1, 0)
DAY = timedelta(days=1)

SEGMENTS = """
segments:
  - name: buyers
    when: {event: purchase, within: 30d}
    destinations:
      - {destination: csv, audience: buyers}
      - {destination: meta, audience_id: "123"}
  - name: big_buyers
    when: {all: [{segment: buyers}, {attribute: {ltv: {gte: 100}}}]}
    destinations:
      - {destination: csv, audience: big}
"""


@pytest.fixture
def world(store, tmp_path):
    root = write_project(tmp_path / "p", {}, segments=SEGMENTS)
    project = load_project(root)
    assert not project.errors, project.errors
    ids = {}
    with store.engine.begin() as conn:
        for name, ltv, ads in (("ann", 150, "granted"), ("bob", 20, "granted"), ("cy", 500, None),
                               ("dee", 300, "granted"), ("eve", 10, "granted")):
            cid = conn.execute(contact_t.insert().values(
                email=f"{name}@example.com", lifecycle_stage="customer", score=0.0, attributes={"ltv": ltv},
                created_at=NOW - 60 * DAY, updated_at=NOW - 60 * DAY)).inserted_primary_key[0]
            ids[name] = cid
            if ads:
                record_consent(conn, cid, "ads", ads, source="import", at=NOW - 50 * DAY)
            if name != "eve":  # eve never bought
                conn.execute(event_t.insert().values(
                    event_id=f"p-{name}", contact_id=cid, name="purchase", properties={"value": ltv},
                    occurred_at=NOW - 2 * DAY, received_at=NOW - 2 * DAY))
    context = IntegrationContext(root, tmp_path / ".nurture", {})
    return project, ids, context, tmp_path / ".nurture" / "audiences"


def run(store, project, context, now=NOW, segment=None):
    return {(r.segment, r.destination): r for r in sync_segments(store, project, now, context, segment=segment)}


def in_segment(store, project, name, cls, now=NOW, wall=None):
    with store.engine.connect() as conn:
        ids = members(conn, project.segments[name], project.segments, cls, now, wall)
        conn.rollback()
    return ids


def test_membership_is_the_condition_plus_what_the_destination_needs(store, world):
    project, ids, _, _ = world
    crm = in_segment(store, project, "buyers", HubSpotDestination)
    ads = in_segment(store, project, "buyers", CsvAudienceDestination)
    assert crm == sorted([ids["ann"], ids["bob"], ids["cy"], ids["dee"]])  # a CRM list needs no ads consent
    assert ads == sorted([ids["ann"], ids["bob"], ids["dee"]])  # cy never gave ads consent
    assert in_segment(store, project, "big_buyers", CsvAudienceDestination) == sorted([ids["ann"], ids["dee"]])


def test_the_latest_ads_consent_row_decides_and_the_future_does_not_count_yet(store, world):
    project, ids, _, _ = world
    with store.engine.begin() as conn:
        record_consent(conn, ids["ann"], "ads", "revoked", source="web", at=NOW - DAY)
        record_consent(conn, ids["cy"], "ads", "revoked", source="web", at=NOW - 3 * DAY)
        record_consent(conn, ids["cy"], "ads", "granted", source="web", at=NOW - DAY)
        record_consent(conn, ids["bob"], "ads", "revoked", source="web", at=NOW + DAY)  # not yet
    # (the wall clock pinned to the logical one: bob's revocation lies in the future of both)
    assert in_segment(store, project, "buyers", CsvAudienceDestination, wall=NOW) == sorted(
        [ids["bob"], ids["cy"], ids["dee"]])


def test_a_revocation_or_suppression_already_recorded_counts_whatever_the_logical_clock(store, world):
    """A late or re-run scheduled sync runs with a logical clock before revocations and
    suppressions that are already recorded: they count (up to the wall clock), grants do not."""
    project, ids, _, _ = world
    with store.engine.begin() as conn:
        record_consent(conn, ids["bob"], "ads", "revoked", source="web", at=NOW + DAY)
        suppress(conn, reason="manual", at=NOW + DAY, contact_id=ids["dee"], channel="ads")
        record_consent(conn, ids["ann"], "ads", "revoked", source="web", at=NOW - 3 * DAY)
        record_consent(conn, ids["ann"], "ads", "granted", source="web", at=NOW + DAY)  # from NOW + DAY on
        record_consent(conn, ids["cy"], "ads", "granted", source="web", at=NOW - DAY)
    assert in_segment(store, project, "buyers", CsvAudienceDestination, wall=NOW + 2 * DAY) == [ids["cy"]]
    assert in_segment(store, project, "buyers", CsvAudienceDestination, now=NOW + 2 * DAY) == sorted(
        [ids["ann"], ids["cy"]])


def test_suppressions_for_all_channels_or_ads_exclude_only_where_they_apply(store, world):
    project, ids, _, _ = world
    with store.engine.begin() as conn:
        suppress(conn, reason="manual", at=NOW - DAY, address="ANN@example.com")  # all channels, by address
        suppress(conn, reason="manual", at=NOW - DAY, contact_id=ids["bob"], channel="ads")
        suppress(conn, reason="unsubscribed", at=NOW - DAY, contact_id=ids["dee"], channel="email")
    assert in_segment(store, project, "buyers", CsvAudienceDestination) == [ids["dee"]]
    assert in_segment(store, project, "buyers", HubSpotDestination) == sorted([ids["bob"], ids["cy"], ids["dee"]])


def test_sync_adds_then_only_changes_and_records_every_run(store, world):
    project, ids, context, folder = world
    first = run(store, project, context)
    assert (first["buyers", "csv"].added, first["big_buyers", "csv"].added) == (3, 2)
    # meta has no credentials: its target fails with the reason, the others are not held up
    assert first["buyers", "meta"].status == "failed"
    assert "NURTURE_META_ACCESS_TOKEN" in first["buyers", "meta"].errors[0]["reason"]
    again = run(store, project, context, NOW + timedelta(hours=1))
    assert [(r.added, r.removed, r.requests) for k, r in again.items() if k[1] == "csv"] == [(0, 0, 0), (0, 0, 0)]
    with store.engine.begin() as conn:  # a profile edit that changes no identifier sends nothing …
        conn.execute(update(contact_t).where(contact_t.c.id == ids["bob"])
                     .values(attributes={"ltv": 20, "note": "vip-candidate"}, updated_at=NOW + DAY))
    third = run(store, project, context, NOW + DAY, segment="buyers")
    assert (third["buyers", "csv"].added, third["buyers", "csv"].updated, third["buyers", "csv"].requests) == (0, 0, 0)
    with store.engine.connect() as conn:  # … but re-stamps the acknowledged row, so it is not re-checked again
        version = conn.execute(select(membership_t.c.contact_version).where(
            membership_t.c.contact_id == ids["bob"], membership_t.c.target == "csv:buyers")).scalar_one()
        runs = conn.execute(select(sync_run_t.c.segment, sync_run_t.c.target, sync_run_t.c.status)
                            .order_by(sync_run_t.c.id)).all()
        conn.rollback()
    assert version == NOW + DAY
    assert len(runs) == 3 + 3 + 2 and {r.status for r in runs} == {"ok", "failed"}
    assert len(list(folder.rglob("*.csv"))) == 2


def test_contacts_who_leave_are_removed_even_when_deleted(store, world):
    project, ids, context, folder = world
    run(store, project, context)
    with store.engine.begin() as conn:  # bob's purchase ages out of 30d; dee is erased
        conn.execute(delete(event_t).where(event_t.c.contact_id == ids["dee"]))
        conn.execute(delete(consent_t).where(consent_t.c.contact_id == ids["dee"]))
        conn.execute(delete(contact_t).where(contact_t.c.id == ids["dee"]))
        conn.execute(event_t.insert().values(  # ann buys again and stays
            event_id="p-ann-2", contact_id=ids["ann"], name="purchase", properties={"value": 5},
            occurred_at=NOW + 20 * DAY, received_at=NOW + 20 * DAY))
    later = run(store, project, context, NOW + 29 * DAY)
    assert (later["buyers", "csv"].removed, later["big_buyers", "csv"].removed) == (2, 1)
    assert later["buyers", "csv"].members == 1 and later["big_buyers", "csv"].members == 1
    removals = sorted(folder.rglob("*-remove.csv"))
    assert len(removals) == 2


def test_acknowledging_the_same_member_twice_keeps_one_row(store):
    row = {"segment": "s", "target": "csv:x", "contact_id": 1, "contact_version": NOW, "fingerprint": "a",
           "payload": {"row": ["h"]}, "acked_at": NOW}
    with store.engine.begin() as conn:
        _upsert(conn, [row])
        _upsert(conn, [{**row, "fingerprint": "b", "contact_version": NOW + DAY}])
    with store.engine.connect() as conn:
        rows = conn.execute(select(membership_t.c.fingerprint, membership_t.c.contact_version)).all()
        conn.rollback()
    assert rows == [("b", NOW + DAY)]


def test_a_plugin_bug_fails_its_target_loudly_and_the_others_still_sync(store, world):
    project, ids, context, folder = world

    class BrokenCsv(CsvAudienceDestination):
        def add(self, target, members, batch):
            raise RuntimeError("plug-in bug")

    def factory(name, ctx):
        if name == "csv":
            cls = CsvAudienceDestination if factory.fixed else BrokenCsv
            return cls(ctx.data_dir / "audiences")
        raise IntegrationError("meta: not configured in this test")
    factory.fixed = False
    reports = sync_segments(store, project, NOW, context, factory=factory)
    by = {(r.segment, r.destination): r for r in reports}
    assert by["buyers", "csv"].status == "failed"
    assert by["buyers", "csv"].errors == [{"reason": "RuntimeError in csv: plug-in bug", "count": 1}]
    assert by["big_buyers", "csv"].status == "failed" and by["buyers", "meta"].status == "failed"
    factory.fixed = True
    fixed = {(r.segment, r.destination): r for r in sync_segments(store, project, NOW, context, factory=factory)}
    assert (fixed["buyers", "csv"].added, fixed["big_buyers", "csv"].added) == (3, 2)
    with store.engine.connect() as conn:
        statuses = [r[0] for r in conn.execute(select(sync_run_t.c.status).where(
            sync_run_t.c.target == "csv:buyers").order_by(sync_run_t.c.id))]
        conn.rollback()
    assert statuses == ["interrupted", "failed", "ok"]

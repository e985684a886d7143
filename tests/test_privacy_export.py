"""The right of access and to portability (GDPR Art. 15/20): `export_contact` answers one JSON
document with everything held about a person — contact, identifiers, consents with source and
policy version, events, enrollments, messages, scores, handovers, segments, audience
memberships with their sync records and the outbox files — and nothing about anyone else.
(`nurture export-contact` through the real entry point: tests/test_privacy_erase.py.)"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from nurture.consent_ledger import record_consent
from nurture.privacy.export import FORMAT, erasure_of, export_contact
from tests.engine_fixtures import add_contact
from tests.test_privacy_erase import (ALICE, ALICE_PHONE, BOB, JOURNEY, NOAH_OLD_PHONE, NOAH_PHONE,  # noqa: F401
                                      SEGMENTS, T0, World, hubspot, phone_world)

NOW = T0 + timedelta(hours=2)


def _world(make_runtime, hubspot) -> World:
    world = World(make_runtime({"welcome": JOURNEY}, segments=SEGMENTS), hubspot)
    with world.store.engine.begin() as conn:
        record_consent(conn, world.alice, "email", "granted", source="web:preference_center", at=T0 + timedelta(hours=1),
                       policy_version="test-1", confirmed=True)
    return world


def test_the_export_holds_everything_about_the_person(make_runtime, hubspot):
    world = _world(make_runtime, hubspot)
    doc = export_contact(world.store, world.rt.project, ALICE, data_dir=world.rt.data_dir, now=NOW)
    assert doc is not None
    text = json.dumps(doc)  # plain JSON: no datetime left unconverted
    assert BOB not in text and "Bob" not in text  # nothing about anyone else

    assert (doc["format"], doc["exported_at"]) == (FORMAT, NOW.isoformat())
    contact = doc["contact"]
    assert (contact["email"], contact["first_name"], contact["last_name"], contact["phone"], contact["country"],
            contact["timezone"], contact["locale"], contact["score"]) == (
        ALICE, "Alice", "Liddell", ALICE_PHONE, "DE", "Europe/Berlin", "de", 42.0)
    assert contact["attributes"] == {"fan": True, "company": "Wonderland GmbH"}

    ids = doc["identifiers"]
    assert (ids["email"], ids["phone"]) == (ALICE, ALICE_PHONE)
    assert ids["crm_records"] == {"hubspot": [world.hubspot.contacts[ALICE]]}
    assert set(ids["audience_identifiers"]) == {"csv:fans", "hubspot:45"}

    # consents: every ledger row with its source and policy version, and the state in force
    assert [(c["channel"], c["status"], c["source"], c["policy_version"]) for c in doc["consents"]] == [
        ("email", "granted", "test", ""), ("sms", "granted", "test", ""), ("ads", "granted", "test", ""),
        ("email", "granted", "web:preference_center", "test-1")]
    state = {(s["channel"], s["purpose"]): s for s in doc["consent_state"]}
    assert state["email", "marketing"]["source"] == "web:preference_center"
    assert state["email", "marketing"]["policy_version"] == "test-1" and state["email", "marketing"]["confirmed_at"]
    assert [(s["reason"], s["address"]) for s in doc["suppressions"]] == [("hard_bounce", ALICE)]

    event, stage = doc["events"]  # the signup, and the MQL stage her handover recorded
    assert (stage["name"], stage["properties"]["to"]) == ("lifecycle_stage_changed", "mql")
    assert (event["name"], event["properties"]["form"], event["occurred_at"]) == ("signup", "newsletter", T0.isoformat())
    [enrollment] = doc["enrollments"]
    assert (enrollment["journey"], enrollment["status"], enrollment["step_id"]) == ("welcome", "active", "later")
    assert [(m["step_id"], m["channel"], m["status"], m["address"]) for m in doc["messages"]] == [
        ("hello", "email", "sent", ALICE), ("text", "sms", "sent", ALICE_PHONE)]
    assert doc["messages"][0]["subject"] == "Hi Alice"
    assert doc["files"] == [f"outbox/email/welcome/{doc['messages'][0]['id']:09d}.eml"]
    assert doc["scores"] == {"score": 42.0, "lifecycle_stage": "mql"}  # the handover step raised it
    [handover] = doc["handovers"]
    assert (handover["step_id"], handover["destination"], handover["note"]) == ("to_sales", "file", "wants a demo")

    # segments now, and what each audience acknowledged, with the sync that did it
    assert doc["segments"] == ["fans"]
    assert sorted((a["segment"], a["target"]) for a in doc["audiences"]) == [("fans", "csv:fans"), ("fans", "hubspot:45")]
    assert all(a["acked_at"] and a["payload"] for a in doc["audiences"])
    assert sorted((r["target"], r["status"], r["added"]) for r in doc["sync_runs"]) == [
        ("csv:fans", "ok", 2), ("hubspot:45", "ok", 2)]
    assert doc["erasures"] == []


def test_the_export_finds_the_address_as_people_type_it(make_runtime, hubspot):
    world = _world(make_runtime, hubspot)
    doc = export_contact(world.store, world.rt.project, "  Alice@EXAMPLE.com ", now=NOW)
    assert doc is not None and doc["contact"]["email"] == ALICE and "files" not in doc


def test_nothing_is_exported_for_an_unknown_or_erased_address(make_runtime, hubspot):
    world = _world(make_runtime, hubspot)
    assert export_contact(world.store, world.rt.project, "nobody@example.com") is None
    assert erasure_of(world.store, "nobody@example.com") is None
    world.erase(ALICE)
    assert export_contact(world.store, world.rt.project, ALICE) is None
    assert erasure_of(world.store, ALICE) == NOW
    assert export_contact(world.store, world.rt.project, BOB)["contact"]["first_name"] == "Bob"


def test_a_person_known_only_by_phone_is_exported_by_their_number(phone_world):
    store, project = phone_world.store, phone_world.rt.project
    doc = export_contact(store, project, NOAH_PHONE, data_dir=phone_world.rt.data_dir, now=NOW)
    assert doc is not None and (doc["contact"]["email"], doc["contact"]["phone"]) == (None, NOAH_PHONE)
    assert [(i["kind"], i["value"]) for i in doc["identities"]] == [("phone", NOAH_OLD_PHONE)]
    assert sorted((m["channel"], m["address"]) for m in doc["messages"]) == [("sms", NOAH_PHONE),
                                                                            ("whatsapp", NOAH_PHONE)]
    assert BOB not in json.dumps(doc)
    # the number he had before, and a national number in the default country, name him too
    assert export_contact(store, project, NOAH_OLD_PHONE)["contact"]["id"] == phone_world.noah
    assert export_contact(store, project, "0151 99887766", default_country="DE")["contact"]["id"] == phone_world.noah
    assert export_contact(store, project, "0151 99887766") is None  # no country: no number
    assert export_contact(store, project, "+4915100000001") is None and erasure_of(store, NOAH_PHONE) is None

    phone_world.erase(NOAH_PHONE)
    assert export_contact(store, project, NOAH_PHONE) is None
    assert erasure_of(store, NOAH_PHONE) == erasure_of(store, NOAH_OLD_PHONE) == NOW


def test_a_number_several_contacts_share_exports_no_one(phone_world):
    add_contact(phone_world.store, "sister@example.com", phone=NOAH_PHONE, first_name="Sister")
    with pytest.raises(ValueError, match="2 contacts are known by"):
        export_contact(phone_world.store, phone_world.rt.project, NOAH_PHONE)


def test_the_attributes_export_the_same_from_sqlite_and_postgresql(store):
    # PostgreSQL keeps attributes as JSONB (keys reordered, numbers as `numeric`): SQLite used to
    # export them as written, so the same person's document differed between the two
    attributes = {"zip_code": "10115", "vip": True, "ltv": 1e20, "a": 1, "big": 1e300, "tiny": 1.5e-10,
                  "nested": {"z": [{"y": 2.0, "x": -2e16}], "b": 1.0}, "order_id": 1234567890123456789}
    add_contact(store, "ann@example.com", attributes=attributes)
    doc = export_contact(store, None, "ann@example.com", now=NOW)
    assert json.dumps(doc["contact"]["attributes"]) == json.dumps({
        "a": 1, "big": 10**300, "ltv": 10**20,
        "nested": {"b": 1.0, "z": [{"x": -2 * 10**16, "y": 2.0}]},
        "order_id": 1234567890123456789, "tiny": 1.5e-10, "vip": True, "zip_code": "10115"})

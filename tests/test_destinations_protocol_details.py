"""Protocol details one destination has and the others do not (the shared behaviour is in
the conformance suite): HubSpot's daily limit, Meta's upload session, Google's BadRequest
field violations, LinkedIn's versioned Rest.li headers — each against its fake server."""
from __future__ import annotations

import json

import pytest

from integrations.google import GoogleDestination
from integrations.http_retry import RetryPolicy
from integrations.hubspot import HubSpotDestination
from integrations.linkedin import LinkedInDestination
from integrations.meta import MetaDestination
from nurture.registry import SyncBatch, SyncMember
from nurture.segments import identifiers
from tests.fakes.google import FakeGoogle
from tests.fakes.http_server import Reply
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.linkedin import FakeLinkedIn
from tests.fakes.meta import FakeMeta

TOKEN = "t0ken"


@pytest.fixture
def waits():
    return []


def members(n: int) -> list[SyncMember]:
    return [SyncMember(i + 1, email=f"m{i}@example.com") for i in range(n)]


def test_hubspot_daily_limit_is_not_waited_out(waits):
    server = FakeHubSpot(TOKEN).start()
    try:
        dest = HubSpotDestination(TOKEN, server.url, RetryPolicy(sleep=waits.append))
        daily = Reply(429, {"status": "error", "message": "You have reached your daily limit.",
                            "errorType": "RATE_LIMIT", "policyName": "DAILY"},
                      {"X-HubSpot-RateLimit-Daily": "250000", "X-HubSpot-RateLimit-Daily-Remaining": "0"})
        server.fail_next(1, daily)
        results = dest.add({"list_id": "7"}, members(3), SyncBatch(1))
    finally:
        server.stop()
    assert waits == [] and len(server.requests) == 1
    assert {(r.ok, r.reason) for r in results} == {(False, "HubSpot daily API limit reached")}


def test_hubspot_remembers_record_ids_and_removes_by_them():
    server = FakeHubSpot(TOKEN).start()
    try:
        dest = HubSpotDestination(TOKEN, server.url)
        added = dest.add({"list_id": "7"}, members(2), SyncBatch(1))
        acked = [SyncMember(r.contact_id, payload=r.payload) for r in added]
        removed = dest.remove({"list_id": "7"}, acked[:1], SyncBatch(2))
    finally:
        server.stop()
    assert [r.payload for r in added] == [{"email": "m0@example.com", "record_id": "1000"},
                                          {"email": "m1@example.com", "record_id": "1001"}]
    assert removed[0].ok and server.members("7") == {"m1@example.com"}
    assert server.requests[-1].json() == ["1000"]


def test_meta_numbers_one_upload_session_and_flags_its_last_batch():
    server = FakeMeta(TOKEN).start()
    try:
        dest = MetaDestination(TOKEN, server.url, "v25.0")
        everyone = members(5)
        for seq, chunk in enumerate((everyone[:2], everyone[2:4], everyone[4:]), start=1):
            dest.add({"audience_id": "42"}, chunk, SyncBatch(987654321, seq, seq == 3, 5))
    finally:
        server.stop()
    sessions = [json.loads(r.form()["session"]) for r in server.requests]
    assert [(s["session_id"], s["batch_seq"], s["last_batch_flag"], s["estimated_num_total"]) for s in sessions] == \
        [(987654321, 1, False, 5), (987654321, 2, False, 5), (987654321, 3, True, 5)]
    assert all(r.path == "/v25.0/42/users" and "access_token" not in r.query for r in server.requests)


def test_google_fails_only_the_members_a_bad_request_names_and_resends_the_rest():
    server = FakeGoogle(TOKEN).start()
    try:
        dest = GoogleDestination(TOKEN, server.url)
        batch = members(4)
        server.rejected.add(identifiers.sha256_hex("m2@example.com"))
        results = dest.add({"account_id": "1", "audience_id": "9"}, batch, SyncBatch(1))
    finally:
        server.stop()
    assert [(r.contact_id, r.ok) for r in sorted(results, key=lambda r: r.contact_id)] == \
        [(1, True), (2, True), (3, False), (4, True)]
    assert len(server.requests) == 2  # rejected whole, then the three valid ones
    assert len(server.members("9")) == 3
    first = server.requests[0].json()
    assert first["encoding"] == "HEX" and first["consent"] == {"adUserData": "CONSENT_GRANTED",
                                                                "adPersonalization": "CONSENT_GRANTED"}
    assert first["destinations"] == [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1"},
                                      "productDestinationId": "9"}]


def test_linkedin_sends_the_versioned_restli_batch_create_headers():
    server = FakeLinkedIn(TOKEN).start()
    try:
        dest = LinkedInDestination(TOKEN, server.url, version="202610")
        dest.add({"dmp_segment_id": "555"}, members(2), SyncBatch(1))
        dest.remove({"dmp_segment_id": "555"}, [SyncMember(1, payload={"SHA256_EMAIL": "a" * 64})], SyncBatch(2))
    finally:
        server.stop()
    h = server.requests[0].headers
    assert (h["linkedin-version"], h["x-restli-method"], h["x-restli-protocol-version"]) == \
        ("202610", "BATCH_CREATE", "2.0.0")
    assert server.requests[1].json() == {"elements": [{"action": "REMOVE", "userIds": [
        {"idType": "SHA256_EMAIL", "idValue": "a" * 64}]}]}
    assert server.problems == []

"""Protocol details one destination has and the others do not (the shared behaviour is in
the conformance suite): HubSpot's daily limit, Meta's upload session, Google's BadRequest
field violations, LinkedIn's versioned Rest.li headers, TikTok's errors inside an HTTP 200 —
each against its fake server."""
from __future__ import annotations

import json

import pytest

from integrations.google import GoogleDestination
from integrations.http_retry import RetryPolicy
from integrations.hubspot import HubSpotDestination
from integrations.linkedin import LinkedInDestination
from integrations.meta import MetaDestination
from integrations.tiktok import TikTokDestination, TikTokSettings
from nurture.registry import IntegrationContext, IntegrationError, SyncBatch, SyncMember
from nurture.segments import identifiers
from nurture.spec.project import load_project
from tests.conftest import write_project
from tests.fakes.google import FakeGoogle
from tests.fakes.http_server import Reply
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.linkedin import FakeLinkedIn
from tests.fakes.meta import FakeMeta
from tests.fakes.tiktok import FakeTikTok

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


@pytest.mark.parametrize("headers, body", [
    ({"Retry-After": "NaN"}, {"status": "error"}),  # float() reads it: a NaN wait reached time.sleep
    ({"X-HubSpot-RateLimit-Interval-Milliseconds": "ten"}, {"status": "error"}),  # int() refused it
    ({"X-HubSpot-RateLimit-Interval-Milliseconds": "1000.5"}, {"status": "error"}),
    ({}, ["not", "an", "object"]),  # .get on a list
])
def test_an_odd_rate_limit_answer_is_an_ordinary_429_waited_out_with_the_usual_backoff(waits, headers, body):
    server = FakeHubSpot(TOKEN).start()
    try:
        dest = HubSpotDestination(TOKEN, server.url, RetryPolicy(sleep=waits.append, base_delay=1.0))
        server.fail_next(1, Reply(429, body, headers))
        results = dest.add({"list_id": "7"}, members(2), SyncBatch(1))
    finally:
        server.stop()
    assert waits == [1.0]  # the first backoff, no hint taken from the answer
    assert all(r.ok for r in results)


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


def test_hubspot_update_upserts_a_listed_contact_without_touching_the_list():
    server = FakeHubSpot(TOKEN).start()
    try:
        dest = HubSpotDestination(TOKEN, server.url)
        [added] = dest.add({"list_id": "7"}, [SyncMember(1, email="m0@example.com")], SyncBatch(1))
        mark = len(server.requests)
        [updated] = dest.update({"list_id": "7"}, [SyncMember(1, email="m0@example.com", phone="+4915112345678",
                                                              payload=added.payload)], SyncBatch(2))
        paths = [r.path for r in server.requests[mark:]]
    finally:
        server.stop()
    assert dest.updates_in_place(added.payload, {"email": "m0@example.com", "phone": "+4915112345678"})
    assert not dest.updates_in_place(added.payload, {"email": "new@example.com"})
    assert paths == ["/crm/v3/objects/contacts/batch/upsert"]
    assert updated.ok and updated.payload == added.payload
    assert server.properties["m0@example.com"]["phone"] == "+4915112345678"
    assert server.members("7") == {"m0@example.com"}


def test_hubspot_update_lists_the_record_hubspot_answers_when_it_is_another_one():
    server = FakeHubSpot(TOKEN).start()
    try:
        dest = HubSpotDestination(TOKEN, server.url)
        merged = SyncMember(1, email="m0@example.com", payload={"email": "m0@example.com", "record_id": "999"})
        [result] = dest.update({"list_id": "7"}, [merged], SyncBatch(1))
    finally:
        server.stop()
    assert result.ok and result.payload == {"email": "m0@example.com", "record_id": "1000"}
    assert server.members("7") == {"m0@example.com"}


# ---------------------------------------------------------------- TikTok


def tiktok(server, waits):
    return TikTokDestination(TOKEN, server.url, RetryPolicy(max_attempts=3, base_delay=1.0, sleep=waits.append))


TIKTOK_TARGET = {"advertiser_id": "7178918106775994370", "audience_id": "167290896"}


def test_tiktok_sends_one_positional_row_per_person_with_the_access_token_header(waits):
    server = FakeTikTok(TOKEN).start()
    try:
        dest = tiktok(server, waits)
        results = dest.add(TIKTOK_TARGET, [SyncMember(1, email=" Ann@Example.COM "),
                                           SyncMember(2, phone="030 1234567", country="DE")], SyncBatch(1))
    finally:
        server.stop()
    request = server.requests[0]
    assert request.path == "/open_api/v1.3/segment/mapping/" and request.headers["access-token"] == TOKEN
    assert "authorization" not in request.headers
    ann, phone = identifiers.sha256_hex("ann@example.com"), identifiers.sha256_hex("+49301234567")
    assert request.json() == {
        "advertiser_ids": ["7178918106775994370"], "action": "add", "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
        "batch_data": [[{"id": ann, "audience_ids": ["167290896"]}, {}],
                       [{}, {"id": phone, "audience_ids": ["167290896"]}]]}
    assert [r.payload for r in results] == [{"EMAIL_SHA256": ann}, {"PHONE_SHA256": phone}]
    assert server.members("167290896") == {ann, phone} and server.problems == []


def test_tiktok_an_error_code_inside_an_http_200_is_a_failure_not_retried(waits):
    server = FakeTikTok(TOKEN).start()
    try:
        dest = tiktok(server, waits)
        server.fail_next(1, FakeTikTok.error(40001, "No permission to operate the audience."))
        results = dest.add(TIKTOK_TARGET, members(3), SyncBatch(1))
    finally:
        server.stop()
    assert waits == [] and len(server.requests) == 1
    assert {(r.ok, r.reason) for r in results} == \
        {(False, "TikTok error 40001: No permission to operate the audience.")}
    assert server.members("167290896") == set()


@pytest.mark.parametrize("code", [40100, 40133, 50002, 60001])
def test_tiktok_a_rate_limit_or_service_code_inside_an_http_200_is_retried_with_backoff(waits, code):
    server = FakeTikTok(TOKEN).start()
    try:
        dest = tiktok(server, waits)
        server.fail_next(2, FakeTikTok.error(code, "Try again later."))
        results = dest.add(TIKTOK_TARGET, members(2), SyncBatch(1))
    finally:
        server.stop()
    assert waits == [1.0, 2.0] and len(server.requests) == 3
    assert all(r.ok for r in results) and len(server.members("167290896")) == 2


def test_tiktok_a_refused_person_is_isolated_by_halving_and_the_others_are_added(waits):
    server = FakeTikTok(TOKEN).start()
    try:
        dest = tiktok(server, waits)
        server.rejected.add(identifiers.sha256_hex("m5@example.com"))
        results = dest.add(TIKTOK_TARGET, members(8), SyncBatch(1))
    finally:
        server.stop()
    assert [r.contact_id for r in results if not r.ok] == [6]
    assert "TikTok error 40002" in next(r.reason for r in results if not r.ok)
    assert len(server.members("167290896")) == 7
    assert len(server.requests) == 1 + 2 + 2 + 2  # 8 → 4 + 4 → 2 + 2 → 1 + 1
    assert waits == []


def test_tiktok_stops_splitting_when_the_whole_audience_is_refused(waits):
    server = FakeTikTok(TOKEN).start()
    try:
        dest = tiktok(server, waits)
        refusal = FakeTikTok.error(40002, "Parameter error: the audience is being processed.")
        server.fail_next(100, refusal)
        first = dest.add(TIKTOK_TARGET, members(8), SyncBatch(1))
        spent = len(server.requests)
        second = dest.add(TIKTOK_TARGET, members(8), SyncBatch(2))
    finally:
        server.stop()
    assert not any(r.ok for r in first + second)
    assert spent <= 1 + 4 * (8).bit_length()  # within the batch's budget
    assert len(server.requests) == spent + 1  # the next batch is not split again


def test_tiktok_removal_deletes_the_acknowledged_hashes(waits):
    server = FakeTikTok(TOKEN).start()
    try:
        dest = tiktok(server, waits)
        added = dest.add(TIKTOK_TARGET, members(2), SyncBatch(1))
        removed = dest.remove(TIKTOK_TARGET, [SyncMember(r.contact_id, payload=r.payload) for r in added[:1]],
                              SyncBatch(2))
    finally:
        server.stop()
    body = server.requests[-1].json()
    assert body["action"] == "delete" and body["id_schema"] == ["EMAIL_SHA256", "PHONE_SHA256"]
    assert body["batch_data"] == [[{"id": identifiers.sha256_hex("m0@example.com"), "audience_ids": ["167290896"]},
                                   {}]]
    assert removed[0].ok and server.members("167290896") == {identifiers.sha256_hex("m1@example.com")}


def test_tiktok_needs_its_token_and_defaults_to_the_business_api(tmp_path):
    with pytest.raises(IntegrationError, match="set NURTURE_TIKTOK_ACCESS_TOKEN"):
        TikTokSettings.from_env(IntegrationContext(tmp_path, tmp_path, {}))
    env = {"NURTURE_TIKTOK_ACCESS_TOKEN": "tt-sentinel-0001"}
    settings = TikTokSettings.from_env(IntegrationContext(tmp_path, tmp_path, env))
    assert settings.base_url == "https://business-api.tiktok.com" and "tt-sentinel-0001" not in repr(settings)


def test_tiktok_segments_yaml_needs_numeric_advertiser_and_audience_ids(tmp_path):
    root = write_project(tmp_path / "p", {}, segments="""
        segments:
          - name: vip
            when: {attribute: {vip: true}}
            destinations:
              - {destination: tiktok, advertiser_id: "7178918106775994370", audience_id: 167290896}
              - {destination: tiktok, audience_id: "167290896"}
              - {destination: tiktok, advertiser_id: "my shop", audience_id: "16729-0896"}
        """)
    assert [str(e) for e in load_project(root).errors] == [
        "journeys/segments.yaml:6:9: destination 'tiktok' needs 'advertiser_id' "
        "(e.g. {destination: tiktok, advertiser_id: \"...\"})",
        "journeys/segments.yaml:7:46: 'advertiser_id' of destination 'tiktok' must be TikTok's numeric advertiser id, "
        "not 'my shop' (copy it from the platform's UI, in quotes)",
        "journeys/segments.yaml:7:70: 'audience_id' of destination 'tiktok' must be TikTok's numeric audience id, "
        "not '16729-0896' (copy it from the platform's UI, in quotes)",
    ]

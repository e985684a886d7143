"""Google Customer Match through the Data Manager API as a segment destination (`google`).

`POST /v1/audienceMembers:ingest` adds and `POST /v1/audienceMembers:remove` removes, at
most 10,000 members per request, each member's `userData.userIdentifiers` holding the
hex SHA-256 of the e-mail (lowercased, whitespace removed; gmail.com / googlemail.com
without dots and `+suffix`) and of the phone (E.164 with `+`). The destination is
`{operatingAccount: {accountType, accountId}, productDestinationId: <user list id>}`.
429 RESOURCE_EXHAUSTED and 5xx are retried with backoff; a 400 INVALID_ARGUMENT whose
BadRequest field violations name `audienceMembers[i]` fails those members and sends the
rest again, once.

Settings: NURTURE_GOOGLE_ACCESS_TOKEN (OAuth token with the datamanager scope),
NURTURE_GOOGLE_BASE_URL (default https://datamanager.googleapis.com).
segments.yaml: `{destination: google, account_id: "1234567890", audience_id: "987654"}`
(optional `account_type`, default GOOGLE_ADS; optional `login_account_id` for a manager).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import httpx
from pydantic import SecretStr

from integrations.http_retry import (DONE, FAIL, RETRY, ProviderClient, RetryPolicy, Verdict, error_object,
                                     retry_after, short_body)
from nurture.registry import (AudienceDestination, IntegrationContext, IntegrationError, MemberResult, SyncBatch,
                              SyncMember)
from nurture.segments import identifiers
from nurture.settings import EnvSettings, setting

_MEMBER_INDEX = re.compile(r"audience_?[mM]embers\[(\d+)\]")


def classify(response: httpx.Response) -> Verdict:
    if 200 <= response.status_code < 300:
        return Verdict(DONE)
    error = error_object(response)
    status = error.get("status", "")
    if response.status_code == 429 or status == "RESOURCE_EXHAUSTED":
        return Verdict(RETRY, "HTTP 429 RESOURCE_EXHAUSTED", retry_after(response))
    if response.status_code >= 500 or status in ("UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"):
        return Verdict(RETRY, f"HTTP {response.status_code} {status}".strip(), retry_after(response))
    return Verdict(FAIL, f"HTTP {response.status_code} {status}: {error.get('message') or short_body(response)}"[:300])


def violated_members(response: Optional[httpx.Response]) -> dict[int, str]:
    """audienceMembers indexes named by a BadRequest's field violations."""
    if response is None or response.status_code != 400:
        return {}
    details = error_object(response).get("details")
    out: dict[int, str] = {}
    for detail in details if isinstance(details, list) else []:
        violations = detail.get("fieldViolations") if isinstance(detail, dict) else None
        for violation in violations if isinstance(violations, list) else []:
            if not isinstance(violation, dict):
                continue
            match = _MEMBER_INDEX.search(str(violation.get("field", "")))
            if match:
                out[int(match.group(1))] = str(violation.get("description", "invalid member"))[:200]
    return out


class GoogleSettings(EnvSettings):
    """The Google OAuth token and the Data Manager API's address."""
    access_token: Optional[SecretStr] = setting(
        "NURTURE_GOOGLE_ACCESS_TOKEN", doc="Google OAuth access token (scope https://www.googleapis.com/auth/datamanager).")
    base_url: str = setting("NURTURE_GOOGLE_BASE_URL", "https://datamanager.googleapis.com",
                            doc="The Data Manager API's address.")

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "GoogleSettings":
        settings = cls.from_mapping(context.env)
        if settings.access_token is None:
            raise IntegrationError("google: set NURTURE_GOOGLE_ACCESS_TOKEN (OAuth, scope "
                                   "https://www.googleapis.com/auth/datamanager)")
        return settings


class GoogleDestination(AudienceDestination):
    name = "google"
    required_keys = ("account_id", "audience_id")
    optional_keys = ("account_type", "login_account_id")
    identifier_columns = ("email", "phone")
    max_batch = 10_000

    def __init__(self, access_token: str, base_url: str = "https://datamanager.googleapis.com",
                 policy: Optional[RetryPolicy] = None):
        self.client = ProviderClient(self.name, base_url, policy=policy, classify=classify, timeout=120,
                                     headers={"Authorization": f"Bearer {access_token}"}, secrets=[access_token])

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "GoogleDestination":
        settings = GoogleSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, RetryPolicy.from_env(context.env))

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def identifiers(self, member: SyncMember) -> Optional[dict]:
        out = {}
        address = identifiers.hashed(identifiers.google_email(member.email))
        phone = identifiers.hashed(identifiers.e164(member.phone, member.country))
        if address:
            out["emailAddress"] = address
        if phone:
            out["phoneNumber"] = phone
        return out or None

    @staticmethod
    def destination(target: dict[str, Any]) -> dict:
        dest: dict[str, Any] = {"operatingAccount": {"accountType": str(target.get("account_type", "GOOGLE_ADS")),
                                                     "accountId": str(target["account_id"])},
                                "productDestinationId": str(target["audience_id"])}
        if target.get("login_account_id"):
            dest["loginAccount"] = {"accountType": str(target.get("account_type", "GOOGLE_ADS")),
                                    "accountId": str(target["login_account_id"])}
        return dest

    def _send(self, verb: str, target: dict[str, Any], rows: list[tuple[SyncMember, dict]]) -> list[MemberResult]:
        results: list[MemberResult] = []
        for _ in range(2):  # the second pass only after dropping members Google named as invalid
            body: dict[str, Any] = {"destinations": [self.destination(target)], "encoding": "HEX",
                                    "audienceMembers": [{"userData": {"userIdentifiers": [{k: v} for k, v in ident.items()]}}
                                                        for _, ident in rows]}
            if verb == "ingest":
                body["consent"] = {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
                body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
            answer = self.client.call("POST", f"/v1/audienceMembers:{verb}", json=body)
            if answer.ok:
                return results + [MemberResult(m.contact_id, True, ident) for m, ident in rows]
            bad = violated_members(answer.response)
            if not bad:
                return results + [MemberResult(m.contact_id, False, reason=answer.reason) for m, _ in rows]
            results += [MemberResult(rows[i][0].contact_id, False, reason=f"Google rejected it: {why}")
                        for i, why in bad.items() if i < len(rows)]
            rows = [row for i, row in enumerate(rows) if i not in bad]
            if not rows:
                return results
        return results + [MemberResult(m.contact_id, False, reason="rejected twice by Google") for m, _ in rows]

    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows, results = self.identifiable(members, "no e-mail or phone")
        return results + (self._send("ingest", target, rows) if rows else [])

    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows = [(m, dict(m.payload)) for m in members if m.payload]
        results = [MemberResult(m.contact_id, True) for m in members if not m.payload]
        return results + (self._send("remove", target, rows) if rows else [])

    def close(self) -> None:
        self.client.close()

"""LinkedIn Matched Audiences (DMP segment users) as a segment destination (`linkedin`).

`POST /rest/dmpSegments/{id}/users` with `X-RestLi-Method: BATCH_CREATE`,
`X-Restli-Protocol-Version: 2.0.0` and a `LinkedIn-Version` (YYYYMM) header; the body's
`elements` are `{action: ADD|REMOVE, userIds: [{idType: SHA256_EMAIL, idValue}]}` and the
answer has one `{status}` per element, in order (201/200 = done). 429 and 5xx are retried
with backoff. Batches hold at most 5,000 elements.

Settings: NURTURE_LINKEDIN_ACCESS_TOKEN (rw_dmp_segments), NURTURE_LINKEDIN_BASE_URL (default
https://api.linkedin.com), NURTURE_LINKEDIN_VERSION (default 202610).
segments.yaml: `{destination: linkedin, dmp_segment_id: "987654321"}`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from pydantic import SecretStr

from integrations.http_retry import ProviderClient, RetryPolicy
from nurture.registry import (AudienceDestination, IntegrationContext, IntegrationError, MemberResult, SyncBatch,
                              SyncMember)
from nurture.segments import identifiers
from nurture.settings import EnvSettings, setting


class LinkedInSettings(EnvSettings):
    """The LinkedIn token and the Marketing API's address and version."""
    access_token: Optional[SecretStr] = setting(
        "NURTURE_LINKEDIN_ACCESS_TOKEN",
        doc="LinkedIn access token (scope rw_dmp_segments; rw_conversions for the conversions).")
    base_url: str = setting("NURTURE_LINKEDIN_BASE_URL", "https://api.linkedin.com", doc="LinkedIn's API address.")
    version: str = setting("NURTURE_LINKEDIN_VERSION", "202610", doc="The LinkedIn-Version header (YYYYMM).")

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "LinkedInSettings":
        settings = cls.from_mapping(context.env)
        if settings.access_token is None:
            raise IntegrationError("linkedin: set NURTURE_LINKEDIN_ACCESS_TOKEN (scope rw_dmp_segments)")
        return settings


class LinkedInDestination(AudienceDestination):
    name = "linkedin"
    required_keys = ("dmp_segment_id",)
    identifier_columns = ("email",)
    max_batch = 5_000

    def __init__(self, access_token: str, base_url: str = "https://api.linkedin.com", version: str = "202610",
                 policy: Optional[RetryPolicy] = None):
        self.client = ProviderClient(self.name, base_url, policy=policy, timeout=120, secrets=[access_token],
                                     headers={"Authorization": f"Bearer {access_token}", "LinkedIn-Version": version,
                                              "X-Restli-Protocol-Version": "2.0.0",
                                              "X-RestLi-Method": "BATCH_CREATE"})

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "LinkedInDestination":
        settings = LinkedInSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, settings.version,
                   RetryPolicy.from_env(context.env))

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def identifiers(self, member: SyncMember) -> Optional[dict]:
        value = identifiers.hashed(identifiers.email(member.email))
        return {"SHA256_EMAIL": value} if value else None

    def _send(self, action: str, target: dict[str, Any], rows: list[tuple[SyncMember, dict]]) -> list[MemberResult]:
        elements = [{"action": action, "userIds": [{"idType": "SHA256_EMAIL", "idValue": ident["SHA256_EMAIL"]}]}
                    for _, ident in rows]
        answer = self.client.call("POST", f"/rest/dmpSegments/{target['dmp_segment_id']}/users",
                                  json={"elements": elements})
        if not answer.ok:
            return [MemberResult(m.contact_id, False, reason=answer.reason) for m, _ in rows]
        body = answer.json()
        statuses = body.get("elements") if isinstance(body, dict) else None
        statuses = statuses if isinstance(statuses, list) else []  # an answer is untrusted: a list or nothing
        results = []
        for i, (member, ident) in enumerate(rows):
            item = statuses[i] if i < len(statuses) and isinstance(statuses[i], dict) else {}
            status = item.get("status")
            ok = isinstance(status, int) and 200 <= status < 300
            error = item.get("error") if isinstance(item.get("error"), dict) else {}
            reason = None if ok else f"LinkedIn element status {status}: " + str(
                error.get("message", "") if i < len(statuses) else "missing")[:200]
            results.append(MemberResult(member.contact_id, ok, ident if ok else {}, reason=reason))
        return results

    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows, results = self.identifiable(members, "no valid e-mail")
        return results + (self._send("ADD", target, rows) if rows else [])

    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows = [(m, dict(m.payload)) for m in members if m.payload.get("SHA256_EMAIL")]
        results = [MemberResult(m.contact_id, True) for m in members if not m.payload.get("SHA256_EMAIL")]
        return results + (self._send("REMOVE", target, rows) if rows else [])

    def close(self) -> None:
        self.client.close()

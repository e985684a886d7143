"""Meta Custom Audiences as a segment destination (`meta`).

`POST /{version}/{audience_id}/users` adds and `DELETE /{version}/{audience_id}/users`
removes, each with the form fields `payload={"schema": [...], "data": [[...], ...]}` and
`session={"session_id", "batch_seq", "last_batch_flag", "estimated_num_total"}`, at most
10,000 rows per request. The multi-key schema is EMAIL, PHONE, FN, LN, COUNTRY, every
value normalized the Meta way and SHA-256 hashed (see nurture.segments.identifiers); a
missing value is an empty string. Throttling answers (error codes 17, 613, 80003, and 4 /
32 for app and user request limits) are backed off and retried; rows Meta reports in
`invalid_entry_samples` fail on their own.

Settings: NURTURE_META_ACCESS_TOKEN, NURTURE_META_BASE_URL (default
https://graph.facebook.com), NURTURE_META_API_VERSION (default v25.0).
segments.yaml: `{destination: meta, audience_id: "23851234567890"}`.

Also the Lead Ads reader (`LeadReader`, `MetaDestination.lead_reader`): one lead by id, for the
`leadgen` webhook of `nurture web` (nurture.web.meta_leads, docs/lead-ads.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import httpx
from pydantic import SecretStr

from integrations.http_retry import (DONE, FAIL, RETRY, ProviderClient, RetryPolicy, Verdict, error_object,
                                     retry_after, short_body)
from nurture.registry import (AudienceDestination, IntegrationContext, IntegrationError, MemberResult, SyncBatch,
                              SyncMember)
from nurture.segments import identifiers
from nurture.settings import EnvSettings, setting

SCHEMA = ["EMAIL", "PHONE", "FN", "LN", "COUNTRY"]
THROTTLE_CODES = {4, 17, 32, 613, 80003}


def classify(response: httpx.Response) -> Verdict:
    if 200 <= response.status_code < 300:
        return Verdict(DONE)
    error = error_object(response)
    code = error.get("code") if isinstance(error.get("code"), int) else None  # (a list is no code)
    if code in THROTTLE_CODES or response.status_code == 429:
        return Verdict(RETRY, f"Meta throttled the request (code {code})", retry_after(response))
    if response.status_code >= 500 or error.get("is_transient"):
        return Verdict(RETRY, f"HTTP {response.status_code} from Meta", retry_after(response))
    message = error.get("message") or short_body(response)
    return Verdict(FAIL, f"Meta error {code}: {message}"[:300])


class MetaSettings(EnvSettings):
    """The Meta system user's token and the Graph API's address and version."""
    access_token: Optional[SecretStr] = setting(
        "NURTURE_META_ACCESS_TOKEN", doc="Meta system user access token (ads_management).")
    base_url: str = setting("NURTURE_META_BASE_URL", "https://graph.facebook.com", doc="The Graph API's address.")
    api_version: str = setting("NURTURE_META_API_VERSION", "v25.0", doc="The Graph API version.")

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "MetaSettings":
        settings = cls.from_mapping(context.env)
        if settings.access_token is None:
            raise IntegrationError("meta: set NURTURE_META_ACCESS_TOKEN (a system user token with ads_management)")
        return settings


class MetaDestination(AudienceDestination):
    name = "meta"
    required_keys = ("audience_id",)
    identifier_columns = ("email", "phone")
    max_batch = 10_000

    def __init__(self, access_token: str, base_url: str = "https://graph.facebook.com", version: str = "v25.0",
                 policy: Optional[RetryPolicy] = None):
        self.access_token = access_token
        self.version = version.strip("/")
        self._accepted: dict[int, int] = {}  # session id -> batch_seq of its last accepted batch
        self.client = ProviderClient(self.name, base_url, policy=policy, classify=classify, timeout=120,
                                     secrets=[access_token])

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "MetaDestination":
        settings = MetaSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, settings.api_version,
                   RetryPolicy.from_env(context.env))

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def identifiers(self, member: SyncMember) -> Optional[dict]:
        row = identifiers.meta_row(member)
        return {"schema": SCHEMA, "row": row} if row else None

    def _send(self, method: str, target: dict[str, Any], rows: list[tuple[SyncMember, list[str]]],
              batch: SyncBatch) -> list[MemberResult]:
        # batch_seq counts the batches Meta accepted in this session: a batch that failed for
        # good was never part of it, so the next one takes its number.
        seq = self._accepted.get(batch.session_id, 0) + 1
        session = {"session_id": batch.session_id, "batch_seq": seq, "last_batch_flag": batch.last,
                   "estimated_num_total": batch.estimated_total or len(rows)}
        form = {"payload": json.dumps({"schema": SCHEMA, "data": [row for _, row in rows]}),
                "session": json.dumps(session), "access_token": self.access_token}
        answer = self.client.call(method, f"/{self.version}/{target['audience_id']}/users", data=form)
        if not answer.ok:
            return [MemberResult(m.contact_id, False, reason=answer.reason) for m, _ in rows]
        self._accepted[batch.session_id] = seq
        body = answer.json()
        invalid = body.get("invalid_entry_samples") if isinstance(body, dict) else None
        invalid = invalid if isinstance(invalid, dict) else {}  # an answer is untrusted: only an object
        results = []
        for member, row in rows:
            bad = next((str(invalid[v]) for v in row if v and v in invalid), None)
            results.append(MemberResult(member.contact_id, bad is None,
                                        {"schema": SCHEMA, "row": row} if bad is None else {},
                                        reason=f"Meta rejected the row: {bad}" if bad else None))
        return results

    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        pairs, results = self.identifiable(members, "no e-mail or phone")
        rows = [(member, ident["row"]) for member, ident in pairs]
        return results + (self._send("POST", target, rows, batch) if rows else [])

    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows = [(m, list(m.payload["row"])) for m in members if m.payload.get("row")]
        results = [MemberResult(m.contact_id, True) for m in members if not m.payload.get("row")]
        return results + (self._send("DELETE", target, rows, batch) if rows else [])

    @classmethod
    def lead_reader(cls, context: IntegrationContext) -> Optional["LeadReader"]:
        """Meta Lead Ads: the reader of leads `nurture web` finds through this registered class
        (the engine imports no integration); None when NURTURE_META_ACCESS_TOKEN is not set."""
        return LeadReader.from_env(context.env)

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- Lead Ads: reading one lead
#
# `GET /{version}/{lead_id}`, the lead a `leadgen` webhook names (nurture.web.meta_leads), as
# documented at https://developers.facebook.com/docs/marketing-api/guides/lead-ads/retrieving/:
# `{id, created_time, ad_id, form_id, field_data: [{name, values: [...]}], ...}` (`platform`: fb
# or ig; `is_organic`: a lead from no ad). The token (NURTURE_META_ACCESS_TOKEN: a Page or system
# user token with `leads_retrieval`) goes in the `Authorization: Bearer` header, never in the URL.
# Throttling, 5xx and network errors are retried with the shared policy; the answer is a
# `LeadFetch` — never an exception — whose reason is free of the token.


LEAD_FIELDS = "id,created_time,ad_id,ad_name,adset_id,campaign_id,campaign_name,form_id,field_data,platform,is_organic"


@dataclass
class LeadFetch:
    ok: bool
    lead: dict = field(default_factory=dict)
    reason: str = ""
    attempts: int = 0


class LeadReader:
    """Reads leads over one HTTP client; `close()` when done."""

    def __init__(self, access_token: str, base_url: str = "https://graph.facebook.com", version: str = "v25.0",
                 policy: Optional[RetryPolicy] = None):
        self.version = version.strip("/")
        self.client = ProviderClient("meta", base_url, policy=policy, classify=classify, timeout=30,
                                     headers={"Authorization": f"Bearer {access_token}"}, secrets=[access_token])

    @classmethod
    def from_env(cls, env: Mapping[str, str], policy: Optional[RetryPolicy] = None) -> Optional["LeadReader"]:
        """None when NURTURE_META_ACCESS_TOKEN is not set."""
        settings = MetaSettings.from_mapping(env)
        if settings.access_token is None:
            return None
        return cls(settings.access_token.get_secret_value(), settings.base_url, settings.api_version,
                   policy or RetryPolicy.from_env(env))

    def fetch(self, lead_id: str) -> LeadFetch:
        if not lead_id.isdigit():
            return LeadFetch(False, reason=f"not a lead id: {lead_id[:40]!r}")
        answer = self.client.call("GET", f"/{self.version}/{lead_id}", params={"fields": LEAD_FIELDS})
        if not answer.ok:
            return LeadFetch(False, reason=answer.reason, attempts=answer.attempts)
        body: Any = answer.json()
        if not isinstance(body, dict) or not isinstance(body.get("field_data", []), list):
            return LeadFetch(False, reason="Meta answered a lead without field_data", attempts=answer.attempts)
        return LeadFetch(True, body, attempts=answer.attempts)

    def close(self) -> None:
        self.client.close()

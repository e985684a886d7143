"""TikTok custom audiences (the Audience Segment API) as a segment destination (`tiktok`).

`POST /open_api/v1.3/segment/mapping/` with the `Access-Token` header and the JSON body
`{advertiser_ids: [<advertiser>], action: add | delete, id_schema: [EMAIL_SHA256, PHONE_SHA256],
batch_data: [[{id, audience_ids: [<audience>]}, {id, audience_ids}], …]}`: one inner list per
person, its entries in `id_schema`'s order, `{}` where the person has no such identifier. The
e-mail is trimmed and lowercased, the phone E.164 with `+`, each SHA-256 hex
(nurture.segments.identifiers). At most 1,000 people per request.

TikTok answers with HTTP 200 and an envelope `{code, message, request_id, data}` even when the
request failed: only `code` 0 is success. Rate limits (40100, 40016, 40133 — TikTok sends no
Retry-After), service errors (50000, 50002, 51305), maintenance (60001) and a write conflict
(40202) are retried with backoff like a 429 or a 5xx; any other code fails the batch. TikTok
reports no per-person result: a parameter error (40000, 40002) or a partial success (20001) on
a batch of several people is answered for the whole request, so the batch is split in halves to
isolate the person it refuses (within a budget of a few requests per batch; and not again in
the run once splitting a batch saved no one, as when the audience itself is refused) and the
others still go through.

Settings: NURTURE_TIKTOK_ACCESS_TOKEN (a Marketing API access token of the advertiser),
NURTURE_TIKTOK_BASE_URL (default https://business-api.tiktok.com).
segments.yaml: `{destination: tiktok, advertiser_id: "7178918106775994370", audience_id: "167290896"}`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import httpx
from pydantic import SecretStr

from integrations.http_retry import DONE, FAIL, RETRY, ProviderClient, RetryPolicy, Verdict, retry_after, short_body
from nurture.registry import (AudienceDestination, IntegrationContext, IntegrationError, MemberResult, SyncBatch,
                              SyncMember)
from nurture.segments import identifiers
from nurture.settings import EnvSettings, setting

MAPPING_PATH = "/open_api/v1.3/segment/mapping/"  # the trailing slash is part of it (TikTok: 404 without)
SCHEMA = ("EMAIL_SHA256", "PHONE_SHA256")
THROTTLE_CODES = {40016, 40100, 40133}
TRANSIENT_CODES = {40202, 50000, 50002, 51305, 60001}
ISOLATE_CODES = {20001, 40000, 40002}  # about some rows of the batch, but TikTok does not say which


def envelope(response: Optional[httpx.Response]) -> dict:
    """TikTok's `{code, message, request_id, data}`; {} when the body is not one."""
    if response is None:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def classify(response: httpx.Response) -> Verdict:
    status = response.status_code
    if status == 429:
        return Verdict(RETRY, "HTTP 429 rate limited", retry_after(response))
    if status >= 500:
        return Verdict(RETRY, f"HTTP {status} server error", retry_after(response))
    if not 200 <= status < 300:  # the request never reached the API (a wrong path or method)
        return Verdict(FAIL, f"HTTP {status}: {short_body(response)}")
    body = envelope(response)
    code = body.get("code")
    if code == 0:
        return Verdict(DONE)
    message = str(body.get("message") or "")[:200]
    if not isinstance(code, int):
        return Verdict(FAIL, f"TikTok answered without a return code: {short_body(response)}")
    if code in THROTTLE_CODES:
        return Verdict(RETRY, f"TikTok rate limit (code {code}): {message}")
    if code in TRANSIENT_CODES:
        return Verdict(RETRY, f"TikTok service error (code {code}): {message}")
    return Verdict(FAIL, f"TikTok error {code}: {message}")


class TikTokSettings(EnvSettings):
    """The TikTok Marketing API access token and the API's address."""
    access_token: Optional[SecretStr] = setting(
        "NURTURE_TIKTOK_ACCESS_TOKEN", doc="TikTok Marketing API access token (Audience Management permission).")
    base_url: str = setting("NURTURE_TIKTOK_BASE_URL", "https://business-api.tiktok.com",
                            doc="The TikTok Business API's address.")

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "TikTokSettings":
        settings = cls.from_mapping(context.env)
        if settings.access_token is None:
            raise IntegrationError("tiktok: set NURTURE_TIKTOK_ACCESS_TOKEN (a Marketing API access token of the "
                                   "advertiser, with the Audience Management permission)")
        return settings


class TikTokDestination(AudienceDestination):
    name = "tiktok"
    required_keys = ("advertiser_id", "audience_id")
    key_formats = {"advertiser_id": (r"\d+", "TikTok's numeric advertiser id"),
                   "audience_id": (r"\d+", "TikTok's numeric audience id")}
    identifier_columns = ("email", "phone")
    max_batch = 1_000

    def __init__(self, access_token: str, base_url: str = "https://business-api.tiktok.com",
                 policy: Optional[RetryPolicy] = None):
        self.client = ProviderClient(self.name, base_url, policy=policy, classify=classify, timeout=120,
                                     headers={"Access-Token": access_token}, secrets=[access_token])
        self._isolating = True  # off once splitting a refused batch saved no one: the refusal is not a row's

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "TikTokDestination":
        settings = TikTokSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, RetryPolicy.from_env(context.env))

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def identifiers(self, member: SyncMember) -> Optional[dict]:
        out = {}
        address = identifiers.hashed(identifiers.email(member.email))
        phone = identifiers.hashed(identifiers.e164(member.phone, member.country))
        if address:
            out["EMAIL_SHA256"] = address
        if phone:
            out["PHONE_SHA256"] = phone
        return out or None

    @staticmethod
    def body(action: str, target: dict[str, Any], rows: Sequence[tuple[SyncMember, dict]]) -> dict:
        audience = [str(target["audience_id"])]
        return {"advertiser_ids": [str(target["advertiser_id"])], "action": action, "id_schema": list(SCHEMA),
                "batch_data": [[{"id": ident[k], "audience_ids": audience} if ident.get(k) else {} for k in SCHEMA]
                               for _, ident in rows]}

    def _send(self, action: str, target: dict[str, Any], rows: list[tuple[SyncMember, dict]]) -> list[MemberResult]:
        # Enough requests to isolate one or two refused people in the largest batch; a refusal
        # of the whole batch (say, an audience still processing) stops splitting when it runs out.
        budget = [4 * len(rows).bit_length() if self._isolating else 0]
        results = self._send_part(action, target, rows, budget)
        if budget[0] < 4 * len(rows).bit_length() and not any(r.ok for r in results):
            self._isolating = False
        return results

    def _send_part(self, action: str, target: dict[str, Any], rows: list[tuple[SyncMember, dict]],
                   budget: list[int]) -> list[MemberResult]:
        answer = self.client.call("POST", MAPPING_PATH, json=self.body(action, target, rows))
        if answer.ok:
            return [MemberResult(m.contact_id, True, dict(ident)) for m, ident in rows]
        code = envelope(answer.response).get("code")
        if len(rows) > 1 and budget[0] >= 2 and isinstance(code, int) and code in ISOLATE_CODES:
            budget[0] -= 2
            half = len(rows) // 2
            return self._send_part(action, target, rows[:half], budget) + \
                self._send_part(action, target, rows[half:], budget)
        return [MemberResult(m.contact_id, False, reason=answer.reason) for m, _ in rows]

    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows, results = self.identifiable(members, "no e-mail or phone")
        return results + (self._send("add", target, rows) if rows else [])

    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        rows = [(m, dict(m.payload)) for m in members if any(m.payload.get(k) for k in SCHEMA)]
        results = [MemberResult(m.contact_id, True) for m in members if not any(m.payload.get(k) for k in SCHEMA)]
        return results + (self._send("delete", target, rows) if rows else [])

    def close(self) -> None:
        self.client.close()

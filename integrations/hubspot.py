"""HubSpot CRM v3 as a segment destination (`hubspot`): a segment is a static list.

Adding: batch upsert of the contacts by e-mail (`POST /crm/v3/objects/contacts/batch/upsert`,
at most 100 inputs, `idProperty: email`), then `PUT /crm/v3/lists/{listId}/memberships/add`
with the record ids HubSpot returned. Removing: `PUT /crm/v3/lists/{listId}/memberships/remove`
with the record ids remembered from the add. A 207 multi-status answer fails only the
records it names; 429 waits as the `X-HubSpot-RateLimit-*` headers say (a daily limit is
not waited out: those records fail and are retried by the next night's run).

Settings: NURTURE_HUBSPOT_TOKEN (private app token, bearer), NURTURE_HUBSPOT_BASE_URL
(default https://api.hubapi.com). segments.yaml: `{destination: hubspot, list_id: "45"}`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import httpx

from integrations.http_retry import DONE, FAIL, RETRY, ProviderClient, RetryPolicy, Verdict, retry_after, short_body
from nurture.registry import (CrmDestination, IntegrationContext, IntegrationError, MemberResult, SyncBatch,
                              SyncMember)
from nurture.segments import identifiers


def classify(response: httpx.Response) -> Verdict:
    code = response.status_code
    if code in (200, 201, 204, 207):
        return Verdict(DONE)
    if code == 429:
        try:
            body = response.json()
        except ValueError:
            body = {}
        policy = str(body.get("policyName", "")).upper()
        if policy == "DAILY" or response.headers.get("X-HubSpot-RateLimit-Daily-Remaining") == "0":
            return Verdict(FAIL, "HubSpot daily API limit reached")
        hint = retry_after(response)
        if hint is None and response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"):
            hint = int(response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"]) / 1000.0
        return Verdict(RETRY, "HTTP 429 rate limited", hint)
    if code >= 500:
        return Verdict(RETRY, f"HTTP {code} server error", retry_after(response))
    return Verdict(FAIL, f"HTTP {code}: {short_body(response)}")


class HubSpotDestination(CrmDestination):
    name = "hubspot"
    required_keys = ("list_id",)
    identifier_columns = ("email",)
    max_batch = 100

    def __init__(self, token: str, base_url: str = "https://api.hubapi.com", policy: Optional[RetryPolicy] = None):
        self.client = ProviderClient(self.name, base_url, policy=policy, classify=classify,
                                     headers={"Authorization": f"Bearer {token}"})

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "HubSpotDestination":
        token = context.setting("NURTURE_HUBSPOT_TOKEN")
        if not token:
            raise IntegrationError("hubspot: set NURTURE_HUBSPOT_TOKEN to a private app access token")
        return cls(token, context.setting("NURTURE_HUBSPOT_BASE_URL") or "https://api.hubapi.com",
                   RetryPolicy.from_env(context.env))

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def identifiers(self, member: SyncMember) -> Optional[dict]:
        address = identifiers.email(member.email)
        if address is None:
            return None
        properties = {"email": address}
        for key, value in (("firstname", member.first_name), ("lastname", member.last_name),
                           ("phone", identifiers.e164(member.phone, member.country))):
            if value:
                properties[key] = value.strip()
        return properties

    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        by_email: dict[str, SyncMember] = {}
        inputs = []
        results: list[MemberResult] = []
        for member in members:
            props = self.identifiers(member)
            if props is None:
                results.append(MemberResult(member.contact_id, False, reason="no valid e-mail"))
                continue
            by_email[props["email"]] = member
            inputs.append({"idProperty": "email", "id": props["email"], "properties": props})
        if not inputs:
            return results
        upsert = self.client.call("POST", "/crm/v3/objects/contacts/batch/upsert", json={"inputs": inputs})
        if not upsert.ok:
            return results + [MemberResult(m.contact_id, False, reason=upsert.reason) for m in by_email.values()]
        body = upsert.json() or {}
        record_ids: dict[str, str] = {}
        for row in body.get("results", []):
            address = str((row.get("properties") or {}).get("email", "")).lower()
            if address in by_email and row.get("id") is not None:
                record_ids[address] = str(row["id"])
        errors: dict[str, str] = {}
        for error in body.get("errors", []):
            for ident in (error.get("context") or {}).get("ids", []) or []:
                errors[str(ident).lower()] = f"{error.get('category', 'ERROR')}: {error.get('message', '')}"[:300]
        for address, member in by_email.items():
            if address not in record_ids:
                results.append(MemberResult(member.contact_id, False,
                                            reason=errors.get(address, "not in HubSpot's upsert answer")))
        if not record_ids:
            return results
        listed = self.client.call("PUT", f"/crm/v3/lists/{target['list_id']}/memberships/add",
                                  json=list(record_ids.values()))
        if not listed.ok:
            return results + [MemberResult(by_email[a].contact_id, False, reason=listed.reason) for a in record_ids]
        answer = listed.json() or {}
        missing = {str(x) for x in answer.get("recordIdsMissing", []) or []}
        for address, record_id in record_ids.items():
            member = by_email[address]
            if record_id in missing:
                results.append(MemberResult(member.contact_id, False, reason=f"record {record_id} missing in HubSpot"))
            else:
                results.append(MemberResult(member.contact_id, True, {"email": address, "record_id": record_id}))
        return results

    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        assert len(members) <= self.max_batch
        with_id = [m for m in members if m.payload.get("record_id")]
        results = [MemberResult(m.contact_id, True) for m in members if not m.payload.get("record_id")]
        if not with_id:
            return results
        answer = self.client.call("PUT", f"/crm/v3/lists/{target['list_id']}/memberships/remove",
                                  json=[str(m.payload["record_id"]) for m in with_id])
        # recordIdsMissing on a removal: the record is not (or no longer) there — already done.
        return results + [MemberResult(m.contact_id, answer.ok, reason=None if answer.ok else answer.reason)
                          for m in with_id]

    def close(self) -> None:
        self.client.close()

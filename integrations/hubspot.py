"""HubSpot CRM v3 (`hubspot`): the segment destination (a segment is a static list) and the
sales handover (a contact with stage and score, and a sales task).

Adding: batch upsert of the contacts by e-mail (`POST /crm/v3/objects/contacts/batch/upsert`,
at most 100 inputs, `idProperty: email`), then `PUT /crm/v3/lists/{listId}/memberships/add`
with the record ids HubSpot returned. Removing: `PUT /crm/v3/lists/{listId}/memberships/remove`
with the record ids remembered from the add. A listed contact whose name or phone changed is
only upserted again (same e-mail, same record): it is never taken out of the list and put back,
which would fire the list's workflows and lose it when the add failed. A 207 multi-status
answer fails only the records it names; 429 waits as the `X-HubSpot-RateLimit-*` headers say
(a daily limit is not waited out: those records fail and are retried by the next night's run).

Handover (`NURTURE_HANDOVER_CRM=hubspot`): the same batch upsert, now with `lifecyclestage`
(lead → lead, mql → marketingqualifiedlead, sql → salesqualifiedlead, customer → customer) and
the score in a custom number property (NURTURE_HUBSPOT_SCORE_PROPERTY, default
`nurture_score`); then one `POST /crm/v3/objects/tasks` per handover — subject, body, due time
`hs_timestamp` = the SLA, `NOT_STARTED`, a priority, the owner (a HubSpot owner id, or an
e-mail resolved through `GET /crm/v3/owners?email=`) and the task→contact association
(HUBSPOT_DEFINED type 204). One request per task, so every handover gets its own result: a
record whose upsert or task failed is answered `ok=False` and stays pending for the engine's
retry, while the others are delivered. Create-task has no idempotency key, so before creating
tasks for contacts HubSpot already had, the tasks associated with them are read back
(`POST /crm/v4/associations/contacts/tasks/batch/read`, `POST /crm/v3/objects/tasks/batch/read`)
and a task whose body carries the handover's key (`Nurture handover <key>`) — created by an
earlier attempt whose answer never arrived, or before a crash — is reused, not created again.

Deals in (nurture.crm, `nurture crm pull`): `HubSpotDestination.deal_source(context)` is a
`HubSpotDeals` — the CRM search on `hs_lastmodifieddate`, the deals' contacts through the v4
associations and contacts batch reads; see the section "deals in" below and docs/crm.md.

Erasure (nurture.privacy): `erase_person(email)` is HubSpot's GDPR delete,
`POST /crm/v3/objects/contacts/gdpr-delete` `{"objectId": <e-mail>, "idProperty": "email"}` (204).

Settings: NURTURE_HUBSPOT_TOKEN (private app token, bearer), NURTURE_HUBSPOT_BASE_URL
(default https://api.hubapi.com), NURTURE_HUBSPOT_SCORE_PROPERTY, NURTURE_HUBSPOT_TASK_PRIORITY
(LOW | MEDIUM | HIGH, default HIGH). segments.yaml: `{destination: hubspot, list_id: "45"}`.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Optional, Sequence

import httpx
from pydantic import SecretStr

from integrations.http_retry import DONE, FAIL, RETRY, ProviderClient, RetryPolicy, Verdict, retry_after, short_body
from nurture.crm.deals import MAX_CONTACTS, CrmContact, DealSnapshot
from nurture.crm.source import CrmUnavailable, DealBatch
from nurture.registry import (CrmDestination, IntegrationContext, IntegrationError, MemberResult, SyncBatch,
                              SyncMember)
from nurture.privacy.crm import PersonErasure
from nurture.scoring.handover import HandoverRecord, HandoverResult
from nurture.segments import identifiers
from nurture.settings import EnvSettings, setting

LIFECYCLE_STAGES = {"lead": "lead", "mql": "marketingqualifiedlead", "sql": "salesqualifiedlead",
                    "customer": "customer"}
STAGE_ORDER = tuple(LIFECYCLE_STAGES)
TASK_TO_CONTACT = 204  # HubSpot's default (HUBSPOT_DEFINED) association type: task -> contact
TASK_PRIORITIES = ("LOW", "MEDIUM", "HIGH")
_PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HANDOVER_MARK = re.compile(r"Nurture handover ([^\s<]+)")  # the body may come back as HTML
# Refusals only a change of HubSpot's setup ends: the token refused (401) or missing a scope
# (403). A handover refused so waits without using up an attempt (HandoverResult.waiting).
_REFUSED_TOKEN = re.compile(r"\bHTTP 40[13]\b")


def _rows(body: Any) -> Optional[list[dict]]:
    """The `results` of a batch answer, its objects only; None when the answer has no list."""
    rows = body.get("results") if isinstance(body, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else None


def _dig(value: Any, *keys: str) -> Any:
    """value[k1][k2]… where each step is an object, else None (an answer is untrusted)."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def classify(response: httpx.Response) -> Verdict:
    code = response.status_code
    if code in (200, 201, 204, 207):
        return Verdict(DONE)
    if code == 429:
        try:
            body = response.json()
        except ValueError:
            body = {}
        policy = str(body.get("policyName", "") if isinstance(body, dict) else "").upper()
        if policy == "DAILY" or response.headers.get("X-HubSpot-RateLimit-Daily-Remaining") == "0":
            return Verdict(FAIL, "HubSpot daily API limit reached")
        hint = retry_after(response)
        interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")
        if hint is None and interval.isascii() and interval.isdigit() and len(interval) <= 9:
            hint = int(interval) / 1000.0  # (anything but whole milliseconds: the usual backoff)
        return Verdict(RETRY, "HTTP 429 rate limited", hint)
    if code >= 500:
        return Verdict(RETRY, f"HTTP {code} server error", retry_after(response))
    return Verdict(FAIL, f"HTTP {code}: {short_body(response)}")


class HubSpotSettings(EnvSettings):
    """The HubSpot private app's token and where to reach HubSpot (the retry policy:
    integrations.http_retry.RetrySettings)."""
    token: Optional[SecretStr] = setting("NURTURE_HUBSPOT_TOKEN", doc="HubSpot private app access token (bearer).")
    base_url: str = setting("NURTURE_HUBSPOT_BASE_URL", "https://api.hubapi.com", doc="HubSpot's API address.")
    score_property: str = setting("NURTURE_HUBSPOT_SCORE_PROPERTY", "nurture_score",
                                  doc="The contact property (internal name) a handover writes the score to.")
    task_priority: str = setting("NURTURE_HUBSPOT_TASK_PRIORITY", "HIGH",
                                 doc="Priority of the sales task a handover creates: LOW, MEDIUM or HIGH.")

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "HubSpotSettings":
        settings = cls.from_mapping(context.env)
        if settings.token is None:
            raise IntegrationError("hubspot: set NURTURE_HUBSPOT_TOKEN to a private app access token")
        if not _PROPERTY_NAME.match(settings.score_property):
            raise IntegrationError(f"hubspot: NURTURE_HUBSPOT_SCORE_PROPERTY '{settings.score_property}' is not a "
                                   "HubSpot property's internal name (lowercase letters, digits, underscores)")
        priority = settings.task_priority.upper()
        if priority not in TASK_PRIORITIES:
            raise IntegrationError(f"hubspot: NURTURE_HUBSPOT_TASK_PRIORITY must be one of {', '.join(TASK_PRIORITIES)}")
        return settings.model_copy(update={"task_priority": priority})


class HubSpotDestination(CrmDestination):
    name = "hubspot"
    required_keys = ("list_id",)
    identifier_columns = ("email",)
    max_batch = 100

    def __init__(self, token: str, base_url: str = "https://api.hubapi.com", policy: Optional[RetryPolicy] = None,
                 *, score_property: str = "nurture_score", task_priority: str = "HIGH"):
        self.client = ProviderClient(self.name, base_url, policy=policy, classify=classify,
                                     headers={"Authorization": f"Bearer {token}"}, secrets=[token])
        self.score_property = score_property
        self.task_priority = task_priority
        self._owners: dict[str, Optional[str]] = {}  # owner e-mail -> HubSpot owner id (None: unknown)

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "HubSpotDestination":
        settings = HubSpotSettings.from_env(context)
        return cls(settings.token.get_secret_value(), settings.base_url, RetryPolicy.from_env(context.env),
                   score_property=settings.score_property, task_priority=settings.task_priority)

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    @classmethod
    def deal_source(cls, context: IntegrationContext) -> "HubSpotDeals":
        """The deal pull's source (nurture.crm.source), with the same token and retry policy."""
        settings = HubSpotSettings.from_env(context)
        return HubSpotDeals(settings.token.get_secret_value(), settings.base_url, RetryPolicy.from_env(context.env))

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
        record_ids, errors, _ = self._upsert(inputs)
        for address, member in by_email.items():
            if address not in record_ids:
                results.append(MemberResult(member.contact_id, False, reason=errors[address]))
        if not record_ids:
            return results
        listed = self.client.call("PUT", f"/crm/v3/lists/{target['list_id']}/memberships/add",
                                  json=list(record_ids.values()))
        if not listed.ok:
            return results + [MemberResult(by_email[a].contact_id, False, reason=listed.reason) for a in record_ids]
        answer = listed.json()
        missing = answer.get("recordIdsMissing") if isinstance(answer, dict) else None
        missing = {str(x) for x in missing} if isinstance(missing, list) else set()
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

    # -- a listed contact whose properties changed (nurture.segments.sync.UpdatesInPlace)

    def updates_in_place(self, acknowledged: dict, identifiers: dict) -> bool:
        """Upserts go by e-mail, so the same e-mail is the same HubSpot record: a changed name or
        phone is only an upsert, and the record stays in the list (taking it out and back in
        fires the list's workflows, and loses it when the add fails). A changed e-mail upserts
        another record: that one is replaced in the list (remove the old, add the new)."""
        return bool(acknowledged.get("record_id")) and acknowledged.get("email") == identifiers.get("email")

    def update(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        """Upsert the current properties of contacts already in the list; the list is not
        touched, unless HubSpot answers with another record id than the one listed (merged
        contacts): that record is added."""
        assert len(members) <= self.max_batch
        by_email: dict[str, SyncMember] = {}
        results: list[MemberResult] = []
        for member in members:
            props = self.identifiers(member)
            if props is None:
                results.append(MemberResult(member.contact_id, False, reason="no valid e-mail"))
            else:
                by_email[props["email"]] = member
        if not by_email:
            return results
        record_ids, errors, _ = self._upsert([{"idProperty": "email", "id": address, "properties":
                                               self.identifiers(member)} for address, member in by_email.items()])
        moved = [rid for a, rid in record_ids.items() if rid != str(by_email[a].payload.get("record_id"))]
        listed = self.client.call("PUT", f"/crm/v3/lists/{target['list_id']}/memberships/add", json=moved) \
            if moved else None
        for address, member in by_email.items():
            if address not in record_ids:
                results.append(MemberResult(member.contact_id, False, reason=errors[address]))
            elif listed is not None and record_ids[address] in moved and not listed.ok:
                results.append(MemberResult(member.contact_id, False, reason=listed.reason))
            else:
                results.append(MemberResult(member.contact_id, True,
                                            {"email": address, "record_id": record_ids[address]}))
        return results

    def _upsert(self, inputs: list[dict]) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """One batch upsert by e-mail: (record id by e-mail, failure reason by e-mail, the
        e-mails HubSpot created just now)."""
        addresses = [i["id"] for i in inputs]
        upsert = self.client.call("POST", "/crm/v3/objects/contacts/batch/upsert", json={"inputs": inputs})
        if not upsert.ok:
            return {}, {a: upsert.reason for a in addresses}, set()
        body = upsert.json()
        record_ids: dict[str, str] = {}
        created: set[str] = set()
        for row in _rows(body) or []:  # (an answer is untrusted: its objects only)
            address = str(_dig(row, "properties", "email") or "").lower()
            if address in addresses and row.get("id") is not None:
                record_ids[address] = str(row["id"])
                if row.get("new") is True:
                    created.add(address)
        errors: dict[str, str] = {}
        errors_in = body.get("errors") if isinstance(body, dict) else None
        for error in errors_in if isinstance(errors_in, list) else []:
            ids = _dig(error, "context", "ids")
            for ident in ids if isinstance(ids, list) else []:
                errors[str(ident).lower()] = f"{error.get('category', 'ERROR')}: {error.get('message', '')}"[:300]
        return record_ids, {a: errors.get(a, "not in HubSpot's upsert answer") for a in addresses
                            if a not in record_ids}, created

    # -- the sales handover

    def hand_over(self, records: Sequence[HandoverRecord]) -> list[HandoverResult]:
        """Upsert the contacts with stage and score, then one sales task per record; one
        result per record, never an exception for a provider or per-record failure."""
        results: dict[int, HandoverResult] = {}
        by_email: dict[str, list[HandoverRecord]] = {}
        for record in records:
            address = identifiers.email(record.email)
            if address is None:
                results[record.handover_id] = HandoverResult(
                    record.handover_id, False, reason="no valid e-mail: HubSpot upserts contacts by e-mail",
                    retry=False)
            else:
                by_email.setdefault(address, []).append(record)
        addresses = list(by_email)
        for start in range(0, len(addresses), self.max_batch):
            part = addresses[start:start + self.max_batch]
            record_ids, errors, created = self._upsert([self._contact_input(a, by_email[a]) for a in part])
            existing, lookup_error = self._existing_tasks([rid for a, rid in record_ids.items() if a not in created])
            for address in part:
                for record in by_email[address]:
                    if address not in record_ids:
                        results[record.handover_id] = HandoverResult(record.handover_id, False,
                                                                     reason=errors[address])
                    elif record.key in existing:  # an earlier attempt created it; its answer was lost
                        results[record.handover_id] = HandoverResult(
                            record.handover_id, True,
                            external_id=f"contact:{record_ids[address]} task:{existing[record.key]}")
                    elif lookup_error and address not in created:
                        results[record.handover_id] = HandoverResult(record.handover_id, False, reason=lookup_error)
                    else:
                        results[record.handover_id] = self._create_task(record, record_ids[address])
        return [self._waiting_for_setup(results[r.handover_id]) for r in records]

    def _waiting_for_setup(self, result: HandoverResult) -> HandoverResult:
        """A refusal for the portal's setup — the token, a scope, the score property not
        created yet (`Property "nurture_score" does not exist`, PROPERTY_DOESNT_EXIST) — is
        `waiting`: the handover stays pending, without using up attempts, until it is fixed."""
        reason = result.reason or ""
        missing = re.search(r'Property \W*' + re.escape(self.score_property) + r'\W* does not exist', reason)
        if result.ok or not (missing or "PROPERTY_DOESNT_EXIST" in reason or _REFUSED_TOKEN.search(reason)):
            return result
        return replace(result, waiting=True)

    def _existing_tasks(self, contact_ids: list[str]) -> tuple[dict[str, str], Optional[str]]:
        """Handover key -> task id of the Nurture tasks already associated with these contacts,
        or a failure reason (then no task is created: a duplicate is worse than a retry)."""
        task_ids: list[str] = []
        pending = [{"id": c} for c in contact_ids]
        asked: set[tuple[str, str]] = set()  # (contact, cursor) pages already read
        while pending:
            read = self.client.call("POST", "/crm/v4/associations/contacts/tasks/batch/read",
                                    json={"inputs": pending[:self.max_batch]})
            if not read.ok:
                return {}, f"existing tasks not read: {read.reason}"[:300]
            pending = pending[self.max_batch:]
            rows = _rows(read.json())
            if rows is None:
                return {}, "existing tasks not read: HubSpot's answer has no list of results"
            for row in rows:  # contacts without tasks are `errors`
                targets = row.get("to")
                task_ids.extend(str(to["toObjectId"]) for to in (targets if isinstance(targets, list) else [])
                                if isinstance(to, dict) and _DIGITS.fullmatch(str(to.get("toObjectId") or "")))
                paging = row.get("paging")
                after = _dig(paging, "next", "after")
                contact = _dig(row, "from", "id")
                if after and contact is not None:
                    if (str(contact), str(after)) in asked:  # the same page again: paging would never end
                        return {}, "existing tasks not read: HubSpot repeated a paging cursor"
                    asked.add((str(contact), str(after)))
                    pending.append({"id": str(contact), "after": str(after)})
        keys: dict[str, str] = {}
        for start in range(0, len(task_ids), self.max_batch):
            read = self.client.call("POST", "/crm/v3/objects/tasks/batch/read", json={
                "inputs": [{"id": t} for t in task_ids[start:start + self.max_batch]],
                "properties": ["hs_task_body"], "propertiesWithHistory": []})
            if not read.ok:
                return {}, f"existing tasks not read: {read.reason}"[:300]
            rows = _rows(read.json())
            if rows is None:
                return {}, "existing tasks not read: HubSpot's answer has no list of results"
            for row in rows:
                mark = _HANDOVER_MARK.search(str(_dig(row, "properties", "hs_task_body") or ""))
                if mark and row.get("id") is not None:
                    keys.setdefault(mark.group(1), str(row["id"]))
        return keys, None

    def _contact_input(self, address: str, records: list[HandoverRecord]) -> dict:
        """One upsert input per e-mail (HubSpot refuses duplicate ids in a batch): the furthest
        stage and the highest score of the contact's handovers in this batch."""
        stage = max((r.lifecycle_stage for r in records), key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else -1)
        first = records[0]
        properties = {"email": address, self.score_property: _number(max(r.score for r in records))}
        if stage in LIFECYCLE_STAGES:
            properties["lifecyclestage"] = LIFECYCLE_STAGES[stage]
        for key, value in (("firstname", first.first_name), ("lastname", first.last_name), ("phone", first.phone),
                           ("company", first.company)):
            if value and str(value).strip():
                properties[key] = str(value).strip()
        return {"idProperty": "email", "id": address, "properties": properties}

    def _create_task(self, record: HandoverRecord, contact_id: str) -> HandoverResult:
        owner_id, owner_error = self._owner_id(record.owner)
        if owner_error:
            return HandoverResult(record.handover_id, False, reason=owner_error)
        body_lines = [record.note] if record.note else []
        body_lines.append(f"Score {record.score:g}, stage {record.lifecycle_stage}"
                          + (f", from journey {record.journey}" if record.journey else "") + ".")
        if record.owner and owner_id is None:
            body_lines.append(f"Owner: {record.owner} (not a HubSpot user: the task is unassigned).")
        body_lines.append(f"Nurture handover {record.key}")
        properties = {"hs_task_subject": record.task_title, "hs_task_body": "\n".join(body_lines),
                      "hs_timestamp": _hubspot_time(record.task_due_at), "hs_task_status": "NOT_STARTED",
                      "hs_task_priority": self.task_priority}
        if owner_id:
            properties["hubspot_owner_id"] = owner_id
        created = self.client.call("POST", "/crm/v3/objects/tasks", json={
            "properties": properties,
            "associations": [{"to": {"id": contact_id},
                              "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                         "associationTypeId": TASK_TO_CONTACT}]}]})
        task_id = _dig(created.json(), "id") if created.ok else None
        if not task_id:
            return HandoverResult(record.handover_id, False,
                                  reason=f"contact {contact_id} upserted, task not created: "
                                         f"{created.reason or 'no id in HubSpot answer'}"[:300])
        return HandoverResult(record.handover_id, True, external_id=f"contact:{contact_id} task:{task_id}")

    def _owner_id(self, owner: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        """(HubSpot owner id or None, failure reason or None). A numeric owner is an owner id;
        an e-mail is looked up once per run; anything else leaves the task unassigned."""
        if not owner:
            return None, None
        owner = owner.strip()
        if owner.isascii() and owner.isdigit():
            return owner, None
        address = identifiers.email(owner)
        if address is None:
            return None, None
        if address not in self._owners:
            found = self.client.call("GET", "/crm/v3/owners", params={"email": address, "limit": 1})
            if not found.ok:
                return None, f"owner {address} not looked up: {found.reason}"[:300]
            matches = [o for o in _rows(found.json()) or []
                       if str(o.get("email", "")).lower() == address and o.get("id") is not None]
            self._owners[address] = str(matches[0]["id"]) if matches else None
        return self._owners[address], None

    # -- the right to erasure (nurture.privacy)

    def erase_person(self, email: str) -> PersonErasure:
        """GDPR delete: `POST /crm/v3/objects/contacts/gdpr-delete` with `{"objectId": <e-mail>,
        "idProperty": "email"}` — HubSpot permanently deletes the contact and its associated
        content (204), and blocklists an address it does not know, so it cannot come back."""
        address = identifiers.email(email)
        if address is None:
            return PersonErasure("failed", "no valid e-mail: HubSpot's GDPR delete names the contact by e-mail")
        answer = self.client.call("POST", "/crm/v3/objects/contacts/gdpr-delete",
                                  json={"objectId": address, "idProperty": "email"})
        if answer.ok:
            return PersonErasure("deleted")
        if answer.response is not None and answer.response.status_code == 404:
            return PersonErasure("not_found")
        return PersonErasure("failed", answer.reason)

    def close(self) -> None:
        self.client.close()


def _number(value: float) -> str:
    """HubSpot property values travel as strings; a number property takes `72.5`, `80`."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _hubspot_time(iso: str) -> str:
    """HubSpot's UTC format with milliseconds, e.g. 2026-11-17T10:00:00.000Z."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------- deals in (nurture.crm)
#
# The deal pull reads what changed: the CRM search (`POST /crm/v3/objects/deals/search`,
# https://developers.hubspot.com/docs/api/crm/search) filtered on `hs_lastmodifieddate` and
# sorted by it, oldest first; the deals' contacts through the v4 associations batch read
# (`POST /crm/v4/associations/deals/contacts/batch/read`, ≤1,000 inputs) and their e-mail and
# lifecycle stage through the contacts batch read (`POST /crm/v3/objects/contacts/batch/read`,
# ≤100 inputs). Requests grow with the changes, never with the size of the CRM.
#
# Paging is by key, not by `after`: each page is a new search starting at the last
# modification time read (the deals read at exactly that time are skipped by id). `after` is
# an offset into a result set that moves while it is read — a deal edited mid-pull leaves its
# place and the deal after it would be skipped for good — and the search refuses to page past
# 10,000 results (HTTP 400); a search that always starts afresh has neither problem. When a
# whole page shares one modification time (a bulk edit in HubSpot), that instant is read by
# record id (`hs_object_id` GT the last id, sorted by it) before moving on, so even 50,000
# deals written in the same millisecond are read, each once.
#
# Search is limited to 5 requests per second per account: searches are paced at
# SEARCH_INTERVAL; a 429 is waited out as `classify` says (Retry-After, else the
# X-HubSpot-RateLimit-Interval-Milliseconds, else backoff) and a daily limit fails the pull.

DEAL_PROPERTIES = ("dealname", "dealstage", "pipeline", "amount", "deal_currency_code", "closedate", "createdate",
                   "hs_lastmodifieddate", "hs_is_closed_won", "hs_is_closed")
# HubSpot's default lifecycle stages → Nurture's (nurture.lifecycle.STAGES); `other` and
# custom stages (numeric ids) say nothing about Nurture's order and are ignored.
HUBSPOT_LIFECYCLE = {"subscriber": "lead", "lead": "lead", "marketingqualifiedlead": "mql",
                     "salesqualifiedlead": "sql", "opportunity": "opportunity", "customer": "customer",
                     "evangelist": "customer"}
CONTACT_READ_PROPERTIES = ("email", "lifecyclestage") + tuple(f"hs_lifecyclestage_{s}_date" for s in HUBSPOT_LIFECYCLE)
MODIFIED, OBJECT_ID = "hs_lastmodifieddate", "hs_object_id"
SEARCH_LIMIT = 200  # the search's largest page
SEARCH_INTERVAL = 0.2  # seconds between searches: 5 per second per account
ASSOCIATION_INPUTS = 1000
CONTACT_INPUTS = 100
BATCH_DEALS = 1000  # deals per committed batch: one associations request each
MAX_NAMED_DEALS = 100  # deals one webhook call may name
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DIGITS = re.compile(r"\d{1,20}")


def _ms(moment: datetime) -> str:
    """Milliseconds since 1970, exactly (no float rounding): how the search compares dates."""
    return str((moment - _EPOCH) // timedelta(milliseconds=1))


def _moment(value: Any) -> Optional[datetime]:
    """A HubSpot date: ISO 8601, or milliseconds since 1970 as digits; None when absent or unreadable."""
    if value is None or value == "":
        return None
    from nurture.ingest import parse_timestamp
    try:
        if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            return parse_timestamp(int(value.strip()) / 1000)
        return parse_timestamp(value)
    except ValueError:
        return None


class HubSpotDeals:
    """The deal source of `nurture crm pull` (nurture.crm.source.DealSource) over HubSpot's API.
    `clock`/`sleep` pace the searches (tests and the bench pass their own)."""
    crm = "hubspot"

    def __init__(self, token: str, base_url: str = "https://api.hubapi.com", policy: Optional[RetryPolicy] = None, *,
                 page_size: int = SEARCH_LIMIT, batch_size: int = BATCH_DEALS,
                 search_interval: float = SEARCH_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 sleep: Optional[Callable[[float], None]] = None):
        self.base_url = base_url
        self.client = ProviderClient("hubspot", base_url, policy=policy, classify=classify,
                                     headers={"Authorization": f"Bearer {token}"}, secrets=[token])
        self.page_size = max(1, min(page_size, SEARCH_LIMIT))
        self.batch_size = max(1, batch_size)
        self.search_interval = search_interval
        self.clock = clock
        self.sleep = sleep or (policy.sleep if policy is not None else time.sleep)
        self._last_search: Optional[float] = None

    @property
    def requests(self) -> int:
        return self.client.requests

    def close(self) -> None:
        self.client.close()

    # -- the source

    def changed(self, since: datetime, until: datetime) -> Iterator[DealBatch]:
        buffer: list[dict] = []
        problems: list[str] = []
        for page, page_problems in self._pages(since, until):
            buffer.extend(page)
            problems.extend(page_problems)
            if len(buffer) >= self.batch_size:
                yield self._batch(buffer, problems)
                buffer, problems = [], []
        if buffer or problems:
            yield self._batch(buffer, problems)

    def deals(self, deal_ids: Sequence[str]) -> DealBatch:
        raws, problems = [], []
        for deal_id in list(dict.fromkeys(str(d) for d in deal_ids))[:MAX_NAMED_DEALS]:
            if not _DIGITS.fullmatch(deal_id):
                problems.append(f"deal {deal_id[:40]!r}: not a HubSpot record id")
                continue
            answer = self.client.call("GET", f"/crm/v3/objects/deals/{deal_id}",
                                      params={"properties": ",".join(DEAL_PROPERTIES), "archived": "false"})
            if answer.response is not None and answer.response.status_code == 404:
                continue  # deleted since the webhook was sent: nothing to read
            raws.append(self._record(self._answer(answer, "reading a deal")))
        raws = [r for r in raws if r is not None]
        batch = self._batch(raws, problems)
        batch.position = None  # named deals say nothing about where the incremental pull stands
        return batch

    # -- searching

    def _pages(self, since: datetime, until: datetime) -> Iterator[tuple[list[dict], list[str]]]:
        lower, strict = since, False
        seen: set[str] = set()  # deals already read whose modification time is `lower`
        while True:
            results, problems, timed = self._search([
                {"propertyName": MODIFIED, "operator": "GT" if strict else "GTE", "value": _ms(lower)},
                {"propertyName": MODIFIED, "operator": "LTE", "value": _ms(until)}], MODIFIED)
            fresh = [r for r, t in timed if strict or t != lower or r["id"] not in seen]
            if fresh or problems:
                yield fresh, problems
            if len(results) < self.page_size or not timed:
                return
            last = max(t for _, t in timed)
            if last < lower or (strict and last == lower):  # not what was asked for: paging on would never end
                raise CrmUnavailable("HubSpot's search answered deals outside the time asked for; try again later")
            if last == lower:  # a full page written in one instant: read that instant by record id
                yield from self._instant(lower, seen | {r["id"] for r, _ in timed})
                strict, seen = True, set()
                continue
            lower, strict = last, False
            seen = {r["id"] for r, t in timed if t == last}

    def _instant(self, moment: datetime, seen: set[str]) -> Iterator[tuple[list[dict], list[str]]]:
        after = "0"
        while True:
            results, problems, _ = self._search([
                {"propertyName": MODIFIED, "operator": "EQ", "value": _ms(moment)},
                {"propertyName": OBJECT_ID, "operator": "GT", "value": after}], OBJECT_ID)
            fresh = [r for r in results if r["id"] not in seen]
            if fresh or problems:
                yield fresh, problems
            ids = [int(r["id"]) for r in results]
            if len(results) < self.page_size or not ids or str(max(ids)) == after:
                return
            after = str(max(ids))

    def _search(self, filters: list[dict], sort: str) -> tuple[list[dict], list[str], list[tuple[dict, datetime]]]:
        """One search page: (its deals, problems, [(deal, modification time)] in order)."""
        self._pace()
        answer = self.client.call("POST", "/crm/v3/objects/deals/search", json={
            "filterGroups": [{"filters": filters}], "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": list(DEAL_PROPERTIES), "limit": self.page_size})
        body = self._answer(answer, "searching deals")
        items = body.get("results")
        if not isinstance(items, list):  # an error in a 200, or no answer at all: not "no more deals"
            raise CrmUnavailable(f"HubSpot's search answer has no list of results: {str(body)[:120]}")
        results, problems, timed = [], [], []
        for item in items:
            record = self._record(item)
            if record is None:
                problems.append(f"a search result is not a deal: {str(item)[:80]}")
                continue
            results.append(record)
            moment = _moment(record["properties"].get(MODIFIED) or record.get("updatedAt"))
            if moment is None:
                problems.append(f"deal {record['id']}: no readable hs_lastmodifieddate")
                continue
            timed.append((record, moment))
        return results, problems, timed

    def _pace(self) -> None:
        if self._last_search is not None and self.search_interval > 0:
            wait = self.search_interval - (self.clock() - self._last_search)
            if wait > 0:
                self.sleep(wait)
        self._last_search = self.clock()

    @staticmethod
    def _record(item: Any) -> Optional[dict]:
        if not isinstance(item, dict) or not _DIGITS.fullmatch(str(item.get("id", ""))):
            return None
        properties = item.get("properties")
        return {**item, "id": str(item["id"]), "properties": properties if isinstance(properties, dict) else {}}

    def _answer(self, answer: Any, doing: str) -> dict:
        """The JSON object of a successful answer; CrmUnavailable with what to do otherwise."""
        if answer.ok:
            body = answer.json()
            if not isinstance(body, dict):  # not JSON, or not an object: nothing in it can be read
                raise CrmUnavailable(f"HubSpot's answer while {doing} is not a JSON object")
            return body
        status = answer.response.status_code if answer.response is not None else None
        if status == 401:
            raise CrmUnavailable("HubSpot refused the token (HTTP 401) while " + doing + ": set NURTURE_HUBSPOT_TOKEN "
                                 "to a private app access token")
        if status == 403:
            raise CrmUnavailable("HubSpot refused access (HTTP 403) while " + doing + ": the private app needs the "
                                 "scopes crm.objects.deals.read and crm.objects.contacts.read")
        if status is None:
            raise CrmUnavailable(f"cannot reach HubSpot at {self.base_url} while {doing}: {answer.reason}")
        raise CrmUnavailable(f"HubSpot failed while {doing}: {answer.reason}")

    # -- a batch: contacts and snapshots

    def _batch(self, raws: list[dict], problems: list[str]) -> DealBatch:
        raws = list({r["id"]: r for r in raws}.values())  # a deal on two pages: its later copy
        associated = self._associations([r["id"] for r in raws])
        contacts = self._contacts(sorted({c for ids in associated.values() for c in ids}, key=int))
        deals, position = [], None
        problems = list(problems)
        for raw in raws:
            deal, problem = self._snapshot(raw, [contacts[c] for c in associated.get(raw["id"], []) if c in contacts])
            if problem:
                problems.append(problem)
            if deal is not None:
                deals.append(deal)
                if position is None or deal.modified_at >= position[0]:
                    position = (deal.modified_at, deal.deal_id)
        return DealBatch(deals, position, problems)

    def _associations(self, deal_ids: list[str]) -> dict[str, list[str]]:
        """Deal id → its contacts' record ids, in HubSpot's order (at most MAX_CONTACTS)."""
        found: dict[str, list[str]] = {}
        for start in range(0, len(deal_ids), ASSOCIATION_INPUTS):
            answer = self.client.call("POST", "/crm/v4/associations/deals/contacts/batch/read",
                                      json={"inputs": [{"id": d} for d in deal_ids[start:start + ASSOCIATION_INPUTS]]})
            body = self._answer(answer, "reading the deals' contacts")
            # A deal without contacts is one of `errors` (a 207): it simply has none.
            for row in _rows(body) or []:
                deal = str(_dig(row, "from", "id") or "")
                to = row.get("to")
                targets = [str(t.get("toObjectId")) for t in (to if isinstance(to, list) else []) if isinstance(t, dict)]
                found[deal] = [t for t in targets if _DIGITS.fullmatch(t)][:MAX_CONTACTS]
        return found

    def _contacts(self, contact_ids: list[str]) -> dict[str, CrmContact]:
        found: dict[str, CrmContact] = {}
        for start in range(0, len(contact_ids), CONTACT_INPUTS):
            answer = self.client.call("POST", "/crm/v3/objects/contacts/batch/read", json={
                "inputs": [{"id": c} for c in contact_ids[start:start + CONTACT_INPUTS]],
                "properties": list(CONTACT_READ_PROPERTIES), "propertiesWithHistory": []})
            body = self._answer(answer, "reading the deals' contacts")
            for row in _rows(body) or []:  # a contact deleted meanwhile is one of `errors`
                if not isinstance(row, dict) or not isinstance(row.get("properties"), dict):
                    continue
                props = row["properties"]
                email = props.get("email")
                if not isinstance(email, str) or not email.strip():
                    continue  # a contact without an address cannot be matched
                hubspot_stage = str(props.get("lifecyclestage") or "").strip().lower()
                stage = HUBSPOT_LIFECYCLE.get(hubspot_stage)
                at = _moment(props.get(f"hs_lifecyclestage_{hubspot_stage}_date")) if stage else None
                found[str(row.get("id"))] = CrmContact(email.strip()[:320], stage, at)
        return found

    @staticmethod
    def _snapshot(raw: dict, contacts: list[CrmContact]) -> tuple[Optional[DealSnapshot], Optional[str]]:
        props = raw["properties"]
        deal_id = raw["id"]
        modified = _moment(props.get(MODIFIED) or raw.get("updatedAt"))
        stage = props.get("dealstage")
        if modified is None:
            return None, f"deal {deal_id}: no readable hs_lastmodifieddate"
        if not isinstance(stage, str) or not stage.strip():
            return None, f"deal {deal_id}: no dealstage"
        problem = None
        amount: Optional[float] = None
        if props.get("amount") not in (None, ""):
            try:
                amount = float(str(props["amount"]).strip())
            except ValueError:
                amount = math.nan
            if not math.isfinite(amount) or not 0 <= amount <= 1e12:
                problem = f"deal {deal_id}: amount {str(props['amount'])[:40]!r} is not an amount: left empty"
                amount = None
        won = str(props.get("hs_is_closed_won", "")).lower() == "true" or stage == "closedwon"
        closed = str(props.get("hs_is_closed", "")).lower() == "true" or stage in ("closedwon", "closedlost")
        outcome = "won" if won else "lost" if closed else "open"
        def text(name: str) -> Optional[str]:
            value = props.get(name)
            return value if isinstance(value, str) and value.strip() else None
        return DealSnapshot(deal_id=deal_id, stage=stage.strip(), outcome=outcome, modified_at=modified,
                            contacts=tuple(contacts), name=text("dealname"), pipeline=text("pipeline"), amount=amount,
                            currency=text("deal_currency_code"), closed_at=_moment(props.get("closedate")),
                            created_at=_moment(props.get("createdate") or raw.get("createdAt"))), problem

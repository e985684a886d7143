"""Meta Conversions API as a conversions destination (`meta`).

`POST /{version}/{dataset_id}/events` with the form fields `data` (a JSON array of at most
1,000 server events) and `access_token`; the answer is `{events_received, messages,
fbtrace_id}`. Each event: `event_name`, `event_time` (Unix seconds), `event_id` (Meta
de-duplicates on it with `event_name`), `action_source` (`system_generated` for CRM events,
`physical_store` for in-store sales), `user_data` — `em` / `ph` SHA-256 of the e-mail and the
phone normalized Meta's way (nurture.segments.identifiers, as for Custom Audiences), `fn`,
`ln`, `country` likewise, `fbc` (`fb.1.<click time ms>.<fbclid>`) when the contact arrived
through a Facebook click (the engine passes only a click at most 90 days before the event, never
one after it) — and `custom_data` `{value, currency}`.
For a lead that came from Meta's own Lead Ads (its leadgen id is known: the event's
`lead_id` property or the contact's `meta_lead_id` / `lead_id` attribute) the event is a
Conversion Leads CRM event: `user_data.lead_id` (not hashed) and `custom_data.event_source:
crm` with `lead_event_source` (the CRM's name); for every other contact neither is sent.

Meta takes events up to 7 days old (62 for `physical_store`) and refuses the WHOLE request when
one is older, so the engine skips stale events before batching. Any other invalid event
also fails its whole request (error code 100 with an event error subcode, 2804xxx): the
batch is then split in halves and each half sent again, so the bad events are isolated and
fail alone — a few extra requests, only when Meta refused an event, at most 32 per batch (a
refusal that is not about an event, such as an unknown dataset, fails the batch at once). Throttling (codes 4, 17, 32, 613, 80003, HTTP 429) and 5xx
are retried with backoff (integrations.meta.classify, shared with the audiences).

Docs: https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event/
and https://developers.facebook.com/documentation/ads-commerce/conversions-api/conversion-leads-integration/payload-specification
Settings: the audiences' NURTURE_META_ACCESS_TOKEN, NURTURE_META_BASE_URL, NURTURE_META_API_VERSION.
conversions.yaml: `{destination: meta, dataset_id: "1234567890"}` (optional `action_source`,
`event_name`, `lead_event_source`).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional, Sequence

from integrations.http_retry import ProviderClient, RetryPolicy, error_object
from integrations.meta import MetaSettings, classify
from nurture.conversions.destination import ConversionDestination, ConversionEvent, ConversionResult
from nurture.registry import IntegrationContext
from nurture.segments import identifiers

MAX_AGE = {"system_generated": timedelta(days=7), "physical_store": timedelta(days=62)}
STANDARD_NAMES = {"purchase": "Purchase", "lead": "Lead"}  # Meta's standard events; others keep their name
INVALID_PARAMETER = 100
EVENT_ERRORS = range(2804000, 2805000)  # error_subcode of an invalid server event (not of a wrong dataset id)
SPLIT_BUDGET = 32  # extra requests a batch may spend isolating invalid events; then the rest fail as one
_DIGITS = re.compile(r"^\d{1,30}$")
MAX_NAME = 100


# application/x-www-form-urlencoded, one C-speed translate per field: urllib's quoting walks a
# 1,000-event JSON byte by byte in Python (a tenth of a second per request).
_FORM = {c: f"%{c:02X}" for c in range(128)}
_FORM.update({ord(c): c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"})
_FORM[ord(" ")] = "+"


def form_body(fields: Mapping[str, str]) -> bytes:
    """The form fields urlencoded (the values must be ASCII: JSON dumped with ensure_ascii)."""
    return "&".join(f"{k}={v.translate(_FORM)}" for k, v in fields.items()).encode("ascii")


def fbc(fbclid: str, clicked_at: datetime) -> str:
    """Meta's click id parameter: `fb.1.<creation time in ms>.<fbclid>`."""
    return f"fb.1.{int(clicked_at.timestamp() * 1000)}.{fbclid}"


class MetaConversionsDestination(ConversionDestination):
    name = "conversions.meta"
    platform = "meta"
    required_keys = ("dataset_id",)
    optional_keys = ("action_source", "event_name", "lead_event_source")
    max_batch = 1000

    def __init__(self, access_token: str, base_url: str = "https://graph.facebook.com", version: str = "v25.0",
                 policy: Optional[RetryPolicy] = None):
        self.access_token = access_token
        self.version = version.strip("/")
        self.client = ProviderClient(self.platform, base_url, policy=policy, classify=classify, timeout=120,
                                     secrets=[access_token])

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "MetaConversionsDestination":
        settings = MetaSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, settings.api_version,
                   RetryPolicy.from_env(context.env))

    @classmethod
    def check_target(cls, target: Mapping[str, Any]) -> dict[str, str]:
        problems = {}
        if target.get("dataset_id") is not None and not _DIGITS.match(str(target["dataset_id"])):
            problems["dataset_id"] = "dataset_id is the dataset's (pixel's) id: digits only"
        source = target.get("action_source")
        if source is not None and source not in MAX_AGE:
            problems["action_source"] = f"action_source is one of {', '.join(MAX_AGE)} (not '{source}')"
        for key in ("event_name", "lead_event_source"):
            value = target.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME
                                      or not value.isprintable()):
                problems[key] = f"{key} is a name of 1 to {MAX_NAME} printable characters"
        return problems

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def max_age(self, target: Mapping[str, Any]) -> Optional[timedelta]:
        return MAX_AGE[self._action_source(target)]

    @staticmethod
    def _action_source(target: Mapping[str, Any]) -> str:
        source = str(target.get("action_source") or "system_generated")
        return source if source in MAX_AGE else "system_generated"

    def server_event(self, target: Mapping[str, Any], event: ConversionEvent) -> Optional[dict]:
        """The event as Meta takes it, or None when it carries nothing Meta can match."""
        source = self._action_source(target)
        user: dict[str, Any] = {}
        address = identifiers.hashed(identifiers.email(event.email))
        phone = identifiers.hashed(identifiers.meta_phone(event.phone, event.country))
        if address:
            user["em"] = [address]
        if phone:
            user["ph"] = [phone]
        crm_lead = event.lead_id is not None and source == "system_generated"
        if crm_lead:
            user["lead_id"] = int(event.lead_id)  # type: ignore[arg-type]
        fbclid = event.click_ids.get("fbclid")
        if fbclid:
            user["fbc"] = fbc(fbclid, event.clicked_at.get("fbclid", event.occurred_at))
        if not user:
            return None
        for key, value in (("fn", identifiers.meta_name(event.first_name)),
                           ("ln", identifiers.meta_name(event.last_name)),
                           ("country", identifiers.meta_country(event.country))):
            if value:
                user[key] = [identifiers.sha256_hex(value)]
        custom: dict[str, Any] = {}
        if event.value is not None:
            custom.update(value=event.value, currency=event.currency)
        if crm_lead:
            custom.update(event_source="crm", lead_event_source=str(target.get("lead_event_source") or "Nurture"))
        out = {"event_name": str(target.get("event_name") or STANDARD_NAMES.get(event.conversion, event.conversion)),
               "event_time": int(event.occurred_at.timestamp()), "event_id": event.event_id,
               "action_source": source, "user_data": user}
        if custom:
            out["custom_data"] = custom
        return out

    def send(self, target: Mapping[str, Any], events: Sequence[ConversionEvent], now: datetime
             ) -> list[ConversionResult]:
        assert len(events) <= self.max_batch
        results: list[ConversionResult] = []
        rows: list[tuple[ConversionEvent, dict]] = []
        for event in events:
            payload = self.server_event(target, event)
            if payload is None:
                results.append(ConversionResult(event.event_pk, "skipped", "no_identifier"))
            else:
                rows.append((event, payload))
        return results + (self._post(target, rows, [SPLIT_BUDGET]) if rows else [])

    def _post(self, target: Mapping[str, Any], rows: list[tuple[ConversionEvent, dict]], budget: list[int]
              ) -> list[ConversionResult]:
        form = {"data": json.dumps([payload for _, payload in rows], allow_nan=False),
                "access_token": self.access_token}
        if self.access_token.isascii():
            request: dict[str, Any] = {"content": form_body(form),
                                       "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
        else:
            request = {"data": form}
        answer = self.client.call("POST", f"/{self.version}/{target['dataset_id']}/events", **request)
        if answer.ok:
            body = answer.json() or {}
            received = body.get("events_received") if isinstance(body, dict) else None
            if isinstance(received, int) and received != len(rows):
                reason = f"Meta received {received} of {len(rows)} events"
                return [ConversionResult(e.event_pk, "failed", reason) for e, _ in rows]
            trace = body.get("fbtrace_id") if isinstance(body, dict) else None
            return [ConversionResult(e.event_pk, "sent", request_id=trace) for e, _ in rows]
        error = error_object(answer.response) if answer.response is not None else {}
        invalid = (answer.response is not None and answer.response.status_code == 400
                   and error.get("code") == INVALID_PARAMETER and error.get("error_subcode") in EVENT_ERRORS)
        if invalid and len(rows) > 1 and budget[0] >= 2:  # one bad event refuses the request: find it by halves
            budget[0] -= 2
            middle = len(rows) // 2
            return self._post(target, rows[:middle], budget) + self._post(target, rows[middle:], budget)
        return [ConversionResult(e.event_pk, "failed", answer.reason) for e, _ in rows]

    def close(self) -> None:
        self.client.close()

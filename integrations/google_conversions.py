"""Google Ads offline conversions through the Data Manager API as a conversions destination
(`google`).

`POST /v1/events:ingest` with `destinations` (the Google Ads account as `operatingAccount`
and the conversion action as `productDestinationId`), `events` (at most 2,000), `encoding:
HEX`, the request's `consent` (`adUserData` and `adPersonalization` granted: only contacts
whose latest `ads` consent is granted are ever sent) and `validateOnly` (a dry run: Google
checks the request and stores nothing; the events stay due). Each event: `transactionId`
(the de-duplication id), `eventTimestamp` (RFC 3339), `eventSource: OTHER`,
`conversionValue` + `currency`, the click id in `adIdentifiers` (`gclid`, else `gbraid`,
else `wbraid`, from the event or the contact's touches) and/or `userData.userIdentifiers`
(hex SHA-256 of the e-mail — lowercased, without whitespace, Gmail dots and `+suffix` — and
of the E.164 phone, as for Customer Match). The answer is `{requestId}`.
The Data Manager API has no partial success: a request with an invalid event is refused
whole with a google.rpc.BadRequest whose field violations name `events[i]`; those events
fail, the rest are sent again once. 429 RESOURCE_EXHAUSTED and 5xx are retried with backoff
(integrations.google.classify). Google takes click conversions up to 90 days old.

Docs: https://developers.google.com/data-manager/api/reference/rest/v1/events/ingest and
https://developers.google.com/data-manager/api/devguides/events/google-ads/offline/upgrade/field-mappings
Settings: the audiences' NURTURE_GOOGLE_ACCESS_TOKEN and NURTURE_GOOGLE_BASE_URL.
conversions.yaml: `{destination: google, operating_account: "1234567890", conversion_action:
"987654321"}` (optional `account_type`, default GOOGLE_ADS; `login_account` for a manager
account; `validate_only: true`).
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Optional, Sequence

import httpx

from integrations.google import GoogleSettings, classify
from integrations.http_retry import ProviderClient, RetryPolicy, error_object
from nurture.conversions.destination import ConversionDestination, ConversionEvent, ConversionResult
from nurture.registry import IntegrationContext
from nurture.segments import identifiers

MAX_AGE = timedelta(days=90)
CLICK_IDS = ("gclid", "gbraid", "wbraid")  # one per event, in this order of preference
CONSENT = {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
_EVENT_INDEX = re.compile(r"events\[(\d+)\]")
_DIGITS = re.compile(r"^\d{1,20}$")
_ACCOUNT_TYPE = re.compile(r"^[A-Z][A-Z_]{1,40}$")


def violated_events(response: Optional[httpx.Response]) -> dict[int, str]:
    """`events` indexes named by a BadRequest's field violations."""
    if response is None or response.status_code != 400:
        return {}
    out: dict[int, str] = {}
    for detail in error_object(response).get("details") or []:
        for violation in (detail.get("fieldViolations") or []) if isinstance(detail, dict) else []:
            match = _EVENT_INDEX.search(str(violation.get("field", "")))
            if match:
                out[int(match.group(1))] = str(violation.get("description", "invalid event"))[:200]
    return out


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class GoogleConversionsDestination(ConversionDestination):
    name = "conversions.google"
    platform = "google"
    required_keys = ("operating_account", "conversion_action")
    optional_keys = ("account_type", "login_account", "validate_only")
    max_batch = 2000

    def __init__(self, access_token: str, base_url: str = "https://datamanager.googleapis.com",
                 policy: Optional[RetryPolicy] = None):
        self.client = ProviderClient(self.platform, base_url, policy=policy, classify=classify, timeout=120,
                                     headers={"Authorization": f"Bearer {access_token}"}, secrets=[access_token])

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "GoogleConversionsDestination":
        settings = GoogleSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, RetryPolicy.from_env(context.env))

    @classmethod
    def check_target(cls, target: Mapping[str, Any]) -> dict[str, str]:
        problems = {}
        for key, what in (("operating_account", "the Google Ads customer id, digits only (no dashes)"),
                          ("login_account", "the manager account's customer id, digits only (no dashes)"),
                          ("conversion_action", "the conversion action's id, digits only")):
            value = target.get(key)
            if value is not None and not _DIGITS.match(str(value)):
                problems[key] = f"{key} is {what}"
        kind = target.get("account_type")
        if kind is not None and not _ACCOUNT_TYPE.match(str(kind)):
            problems["account_type"] = "account_type is an account type such as GOOGLE_ADS"
        dry = target.get("validate_only")
        if dry is not None and str(dry).lower() not in ("true", "false"):
            problems["validate_only"] = "validate_only is true or false"
        return problems

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def max_age(self, target: Mapping[str, Any]) -> Optional[timedelta]:
        return MAX_AGE

    @staticmethod
    def destination(target: Mapping[str, Any]) -> dict:
        kind = str(target.get("account_type") or "GOOGLE_ADS")
        account = {"accountType": kind, "accountId": str(target["operating_account"])}
        dest: dict[str, Any] = {"operatingAccount": account, "productDestinationId": str(target["conversion_action"])}
        if target.get("login_account"):
            dest["loginAccount"] = {"accountType": kind, "accountId": str(target["login_account"])}
        return dest

    @staticmethod
    def event(event: ConversionEvent) -> Optional[dict]:
        """The event as the Data Manager API takes it, or None without a click id or user data."""
        out: dict[str, Any] = {"transactionId": event.event_id, "eventTimestamp": rfc3339(event.occurred_at),
                               "eventSource": "OTHER"}
        click = next(((k, event.click_ids[k]) for k in CLICK_IDS if event.click_ids.get(k)), None)
        if click:
            out["adIdentifiers"] = {click[0]: click[1]}
        ids = []
        address = identifiers.hashed(identifiers.google_email(event.email))
        phone = identifiers.hashed(identifiers.e164(event.phone, event.country))
        if address:
            ids.append({"emailAddress": address})
        if phone:
            ids.append({"phoneNumber": phone})
        if ids:
            out["userData"] = {"userIdentifiers": ids}
        if not click and not ids:
            return None
        if event.value is not None:
            out.update(conversionValue=event.value, currency=event.currency)
        return out

    def send(self, target: Mapping[str, Any], events: Sequence[ConversionEvent], now: datetime
             ) -> list[ConversionResult]:
        assert len(events) <= self.max_batch
        results: list[ConversionResult] = []
        rows: list[tuple[ConversionEvent, dict]] = []
        for event in events:
            payload = self.event(event)
            if payload is None:
                results.append(ConversionResult(event.event_pk, "skipped", "no_identifier"))
            else:
                rows.append((event, payload))
        dry = str(target.get("validate_only", "false")).lower() == "true"
        for _ in range(2):  # the second pass only after dropping the events Google named as invalid
            if not rows:
                return results
            body = {"destinations": [self.destination(target)], "events": [p for _, p in rows], "encoding": "HEX",
                    "consent": CONSENT, "validateOnly": dry}
            answer = self.client.call("POST", "/v1/events:ingest", json=body)
            if answer.ok:
                data = answer.json()
                request_id = data.get("requestId") if isinstance(data, dict) else None
                status = "validated" if dry else "sent"
                return results + [ConversionResult(e.event_pk, status, "validated (dry run)" if dry else None,
                                                   request_id) for e, _ in rows]
            bad = violated_events(answer.response)
            if not bad:
                return results + [ConversionResult(e.event_pk, "failed", answer.reason) for e, _ in rows]
            results += [ConversionResult(rows[i][0].event_pk, "failed", f"Google rejected it: {why}")
                        for i, why in bad.items() if i < len(rows)]
            rows = [row for i, row in enumerate(rows) if i not in bad]
        return results + [ConversionResult(e.event_pk, "failed", "rejected twice by Google") for e, _ in rows]

    def close(self) -> None:
        self.client.close()

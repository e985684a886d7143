"""LinkedIn Conversions API as a conversions destination (`linkedin`).

`POST /rest/conversionEvents` with `X-RestLi-Method: BATCH_CREATE`,
`X-Restli-Protocol-Version: 2.0.0` and a `LinkedIn-Version` (YYYYMM) header; the body's
`elements` (at most 5,000) are `{conversion: <conversion rule URN>, conversionHappenedAt:
<epoch ms>, eventId, user: {userIds: [...]}, conversionValue: {currencyCode, amount}}` where
`userIds` holds `SHA256_EMAIL` (the trimmed, lowercased e-mail, hashed) and
`LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID` (the `li_fat_id` click id) when known — LinkedIn
requires `userIds` on every event. The answer has one `{status}` per element, in order
(201 = created); an element with another status fails alone. LinkedIn de-duplicates on
`eventId`, takes events up to 90 days old; 429 and 5xx are retried with backoff.

Docs: https://learn.microsoft.com/en-us/linkedin/marketing/integrations/ads-reporting/conversions-api
Settings: the audiences' NURTURE_LINKEDIN_ACCESS_TOKEN (it needs the rw_conversions scope for
this), NURTURE_LINKEDIN_BASE_URL and NURTURE_LINKEDIN_VERSION.
conversions.yaml: `{destination: linkedin, conversion_rule: "urn:lla:llaPartnerConversion:123"}`.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional, Sequence

from integrations.http_retry import ProviderClient, RetryPolicy
from integrations.linkedin import LinkedInSettings
from nurture.conversions.destination import ConversionDestination, ConversionEvent, ConversionResult
from nurture.registry import IntegrationContext
from nurture.segments import identifiers

MAX_AGE = timedelta(days=90)
RULE = re.compile(r"^urn:lla:llaPartnerConversion:\d{1,20}$")


class LinkedInConversionsDestination(ConversionDestination):
    name = "conversions.linkedin"
    platform = "linkedin"
    required_keys = ("conversion_rule",)
    max_batch = 5000

    def __init__(self, access_token: str, base_url: str = "https://api.linkedin.com", version: str = "202610",
                 policy: Optional[RetryPolicy] = None):
        self.client = ProviderClient(self.platform, base_url, policy=policy, timeout=120, secrets=[access_token],
                                     headers={"Authorization": f"Bearer {access_token}", "LinkedIn-Version": version,
                                              "X-Restli-Protocol-Version": "2.0.0",
                                              "X-RestLi-Method": "BATCH_CREATE"})

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "LinkedInConversionsDestination":
        settings = LinkedInSettings.from_env(context)
        return cls(settings.access_token.get_secret_value(), settings.base_url, settings.version,
                   RetryPolicy.from_env(context.env))

    @classmethod
    def check_target(cls, target: Mapping[str, Any]) -> dict[str, str]:
        rule = target.get("conversion_rule")
        if rule is not None and not RULE.match(str(rule)):
            return {"conversion_rule": "conversion_rule is the rule's URN, e.g. urn:lla:llaPartnerConversion:123"}
        return {}

    @property
    def requests_sent(self) -> int:  # type: ignore[override]
        return self.client.requests

    def max_age(self, target: Mapping[str, Any]) -> Optional[timedelta]:
        return MAX_AGE

    @staticmethod
    def element(target: Mapping[str, Any], event: ConversionEvent) -> Optional[dict]:
        """The event as LinkedIn takes it, or None without an e-mail or an li_fat_id."""
        ids = []
        address = identifiers.hashed(identifiers.email(event.email))
        if address:
            ids.append({"idType": "SHA256_EMAIL", "idValue": address})
        if event.click_ids.get("li_fat_id"):
            ids.append({"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": event.click_ids["li_fat_id"]})
        if not ids:
            return None
        out: dict[str, Any] = {"conversion": str(target["conversion_rule"]),
                               "conversionHappenedAt": int(event.occurred_at.timestamp() * 1000),
                               "eventId": event.event_id, "user": {"userIds": ids}}
        if event.value is not None:
            out["conversionValue"] = {"currencyCode": event.currency, "amount": f"{event.value:.2f}"}
        return out

    def send(self, target: Mapping[str, Any], events: Sequence[ConversionEvent], now: datetime
             ) -> list[ConversionResult]:
        assert len(events) <= self.max_batch
        results: list[ConversionResult] = []
        rows: list[tuple[ConversionEvent, dict]] = []
        for event in events:
            element = self.element(target, event)
            if element is None:
                results.append(ConversionResult(event.event_pk, "skipped", "no_identifier"))
            else:
                rows.append((event, element))
        if not rows:
            return results
        answer = self.client.call("POST", "/rest/conversionEvents", json={"elements": [e for _, e in rows]})
        if not answer.ok:
            return results + [ConversionResult(e.event_pk, "failed", answer.reason) for e, _ in rows]
        request_id = answer.response.headers.get("x-li-uuid") if answer.response is not None else None
        body = answer.json()
        statuses = body.get("elements") if isinstance(body, dict) else None
        statuses = statuses if isinstance(statuses, list) else []  # (a dict has no element i)
        for i, (event, _) in enumerate(rows):
            item = statuses[i] if i < len(statuses) and isinstance(statuses[i], dict) else {}
            status = item.get("status")
            if isinstance(status, int) and 200 <= status < 300:
                results.append(ConversionResult(event.event_pk, "sent", request_id=request_id))
            else:
                error = item.get("error") if isinstance(item.get("error"), dict) else {}
                message = str(error.get("message", "") if item else "missing")[:200]
                results.append(ConversionResult(event.event_pk, "failed",
                                                f"LinkedIn element status {status}: {message}"))
        return results

    def close(self) -> None:
        self.client.close()

"""Fake Google Data Manager API: POST /v1/audienceMembers:ingest and :remove with
destinations, audienceMembers (≤10,000) of userData.userIdentifiers (hex SHA-256),
encoding HEX, bearer auth; 429 RESOURCE_EXHAUSTED; a request with invalid members is
rejected whole with a google.rpc.BadRequest naming each `audienceMembers[i]`.

And events: POST /v1/events:ingest, as documented at
https://developers.google.com/data-manager/api/reference/rest/v1/events/ingest (destinations,
≤2,000 events, consent, validateOnly, encoding) and
https://developers.google.com/data-manager/api/devguides/events/google-ads/offline/upgrade/field-mappings
("The Data Manager API doesn't support partial failure. If any field of an
IngestEventsRequest fails validation, the Data Manager API rejects the entire request"): each
event's transactionId, RFC 3339 eventTimestamp (at most 90 days old for click conversions),
eventSource, one of gclid/gbraid/wbraid in adIdentifiers and/or hex SHA-256 userIdentifiers,
conversionValue with an ISO 4217 currency. A validateOnly request is checked and stores
nothing; a stored event is de-duplicated on its transactionId.

Like Google, it knows its own clicks (`clicks`: gclid/gbraid/wbraid → when the ad was clicked,
filled by the test) and refuses an event whose click cannot have led to it, as the Google Ads
ConversionUploadError documents
(https://developers.google.com/google-ads/api/reference/rpc/latest/ConversionUploadErrorEnum.ConversionUploadError):
CONVERSION_PRECEDES_EVENT ("the imported event has a conversion_date_time that precedes the
click") and EXPIRED_EVENT ("its click occurred before this conversion's click-through window",
at most 90 days). Such an event is named `events[i]` in the BadRequest, and recorded as a
problem: the engine must never send one."""
from __future__ import annotations

import math
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from babel.numbers import is_currency

from tests.fakes.http_server import FakeProvider, Reply, Request

HEX64 = re.compile(r"^[0-9a-f]{64}$")
EVENT_MAX_AGE = timedelta(days=90)
CLICK_WINDOW = timedelta(days=90)  # the longest click-through window a conversion action can have
EVENT_SOURCES = {"WEB", "APP", "IN_STORE", "PHONE", "MESSAGE", "OTHER"}
CONSENT_VALUES = {"CONSENT_GRANTED", "CONSENT_DENIED"}
EVENT_KEYS = {"destinationReferences", "transactionId", "eventTimestamp", "lastUpdatedTimestamp", "userData",
              "consent", "adIdentifiers", "currency", "conversionValue", "eventSource", "eventDeviceInfo",
              "cartData", "customVariables", "experimentalFields", "userProperties"}


class FakeGoogle(FakeProvider):
    max_members = 10_000

    max_events = 2000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.audiences: dict[str, set[str]] = {}  # productDestinationId -> emailAddress (or phone) hashes
        self.actions: dict[str, dict[str, dict]] = {}  # conversion action -> transactionId -> first event
        self.received_events: list[tuple[str, dict]] = []  # every stored event, duplicates included
        self.validated: list[dict] = []  # the events of validateOnly requests (never stored)
        self.clock: Optional[datetime] = None  # "now" for the age check (None: the wall clock)
        self.clicks: dict[str, datetime] = {}  # gclid / gbraid / wbraid -> when the ad was clicked

    @staticmethod
    def exhausted() -> Reply:
        return Reply(429, {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                                     "status": "RESOURCE_EXHAUSTED"}})

    def members(self, audience_id: str) -> set[str]:
        return set(self.audiences.get(audience_id, set()))

    @staticmethod
    def _identity(member: dict) -> str:
        ids = {k: v for i in member["userData"]["userIdentifiers"] for k, v in i.items()}
        return ids.get("emailAddress") or ids.get("phoneNumber") or ""

    def sent(self, request: Request) -> list[tuple[str, str]]:
        action = "add" if request.path.endswith(":ingest") else "remove"
        return [(action, self._identity(m)) for m in request.json().get("audienceMembers", [])]

    def conversions(self, conversion_action: str) -> dict[str, dict]:
        """transactionId → event, de-duplicated as Google counts them."""
        return dict(self.actions.get(conversion_action, {}))

    @staticmethod
    def _event_identity(event: dict) -> str:
        ids = {k: v for i in (event.get("userData") or {}).get("userIdentifiers", []) for k, v in i.items()}
        clicks = list((event.get("adIdentifiers") or {}).values())
        return ids.get("emailAddress") or ids.get("phoneNumber") or (clicks[0] if clicks else "")

    def _event_problem(self, i: int, event: Any, now: datetime) -> Optional[str]:
        if not isinstance(event, dict) or not set(event) <= EVENT_KEYS:
            return f"events[{i}]: unknown fields"
        if not isinstance(event.get("transactionId"), str) or not event["transactionId"]:
            return f"events[{i}].transactionId is needed to de-duplicate"
        try:
            at = datetime.fromisoformat(str(event.get("eventTimestamp")).replace("Z", "+00:00"))
        except ValueError:
            return f"events[{i}].eventTimestamp must be RFC 3339"
        if at.tzinfo is None or at < now - EVENT_MAX_AGE:
            return f"events[{i}].eventTimestamp is older than 90 days (or has no zone)"
        if event.get("eventSource", "OTHER") not in EVENT_SOURCES:
            return f"events[{i}].eventSource is not an EventSource"
        ads = event.get("adIdentifiers", {})
        if not isinstance(ads, dict) or not set(ads) <= {"gclid", "gbraid", "wbraid"} or len(ads) > 1 \
                or not all(isinstance(v, str) and v for v in ads.values()):
            return f"events[{i}].adIdentifiers: one of gclid, gbraid, wbraid"
        idents = (event.get("userData") or {}).get("userIdentifiers", [])
        for ident in idents:
            if not isinstance(ident, dict) or len(ident) != 1:
                return f"events[{i}]: a user identifier holds one value"
            (key, value), = ident.items()
            if key not in ("emailAddress", "phoneNumber") or not HEX64.match(str(value)):
                return f"events[{i}]: {key} must be a lowercase hex SHA-256"
        if not ads and not idents:
            return f"events[{i}] has neither a click id nor user data to match on"
        if "conversionValue" in event:
            value = event["conversionValue"]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not is_currency(str(event.get("currency", ""))):
                return f"events[{i}]: conversionValue needs a number and a currency"
        return None

    def _click_problem(self, i: int, event: dict) -> Optional[str]:
        """The ConversionUploadError of an event whose known click cannot have led to it."""
        at = datetime.fromisoformat(event["eventTimestamp"].replace("Z", "+00:00"))
        for click in (event.get("adIdentifiers") or {}).values():
            clicked = self.clicks.get(click)
            if clicked is None:
                continue
            if clicked > at:
                return f"CONVERSION_PRECEDES_EVENT: events[{i}] at {at} precedes its click {click} at {clicked}"
            if at - clicked > CLICK_WINDOW:
                return f"EXPIRED_EVENT: events[{i}]'s click {click} at {clicked} is before the click-through window"
        return None

    def _events(self, request: Request) -> Reply:
        body = request.json()
        dests = body.get("destinations") or []
        if len(dests) != 1 or not re.fullmatch(r"\d+", str(dests[0].get("productDestinationId", ""))) or \
                (dests[0].get("operatingAccount") or {}).get("accountType") != "GOOGLE_ADS" or \
                not re.fullmatch(r"\d+", str((dests[0].get("operatingAccount") or {}).get("accountId", ""))):
            return self.problem(f"bad destinations {dests}")
        events = body.get("events") or []
        if not 1 <= len(events) <= self.max_events:
            return self.problem(f"1..{self.max_events} events, got {len(events)}")
        if any(e.get("userData") for e in events if isinstance(e, dict)) and body.get("encoding") != "HEX":
            return self.problem("encoding must be HEX for hex hashes")
        consent = body.get("consent") or {}
        if set(consent) - {"adUserData", "adPersonalization"} or not set(consent.values()) <= CONSENT_VALUES:
            return self.problem(f"bad consent {consent}")
        if not isinstance(body.get("validateOnly", False), bool):
            return self.problem("validateOnly is a boolean")
        now = self.clock or datetime.now(timezone.utc)
        for i, event in enumerate(events):
            problem = self._event_problem(i, event, now)
            if problem:
                return self.problem(problem)
        violations = [{"field": f"events[{i}].user_data.user_identifiers", "description": "Invalid hashed value."}
                      for i, event in enumerate(events) if self._event_identity(event) in self.rejected]
        for i, event in enumerate(events):
            click_problem = self._click_problem(i, event)
            if click_problem:
                self.problems.append(click_problem)
                violations.append({"field": f"events[{i}].ad_identifiers", "description": click_problem})
        if violations:
            return Reply(400, {"error": {"code": 400, "message": "Request contains an invalid argument.",
                                         "status": "INVALID_ARGUMENT",
                                         "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                                      "fieldViolations": violations}]}})
        if body.get("validateOnly"):
            self.validated.extend(events)
            return Reply(200, {"requestId": str(uuid.uuid4())})
        held = self.actions.setdefault(dests[0]["productDestinationId"], {})
        for event in events:
            self.received_events.append((dests[0]["productDestinationId"], event))
            held.setdefault(event["transactionId"], event)
        return Reply(200, {"requestId": str(uuid.uuid4())})

    def handle(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            self.problems.append("bad auth")
            return Reply(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                         "status": "UNAUTHENTICATED"}})
        if request.method == "POST" and request.path == "/v1/events:ingest":
            return self._events(request)
        if request.method != "POST" or request.path not in ("/v1/audienceMembers:ingest", "/v1/audienceMembers:remove"):
            return self.problem(f"unexpected {request.method} {request.path}")
        body = request.json()
        dests = body.get("destinations") or []
        if len(dests) != 1 or not dests[0].get("productDestinationId") or \
                not (dests[0].get("operatingAccount") or {}).get("accountId"):
            return self.problem(f"bad destinations {dests}")
        if body.get("encoding") != "HEX":
            return self.problem("encoding must be HEX for hex hashes")
        members = body.get("audienceMembers") or []
        if not members or len(members) > self.max_members:
            return self.problem(f"1..{self.max_members} audienceMembers, got {len(members)}")
        violations = []
        for i, member in enumerate(members):
            idents = (member.get("userData") or {}).get("userIdentifiers") or []
            if not idents:
                return self.problem(f"member {i} without userIdentifiers")
            for ident in idents:
                (key, value), = ident.items()
                if key not in ("emailAddress", "phoneNumber") or not HEX64.match(value):
                    return self.problem(f"member {i}: {key} must be a lowercase hex SHA-256")
            if self._identity(member) in self.rejected:
                violations.append({"field": f"audience_members[{i}].user_data.user_identifiers",
                                   "description": "Invalid hashed value."})
        if violations:
            return Reply(400, {"error": {"code": 400, "message": "Request contains an invalid argument.",
                                         "status": "INVALID_ARGUMENT",
                                         "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                                      "fieldViolations": violations}]}})
        audience = self.audiences.setdefault(dests[0]["productDestinationId"], set())
        for member in members:
            if request.path.endswith(":ingest"):
                audience.add(self._identity(member))
            else:
                audience.discard(self._identity(member))
        return Reply(200, {"requestId": str(uuid.uuid4())})

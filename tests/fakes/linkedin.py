"""Fake LinkedIn DMP segment users: POST /rest/dmpSegments/{id}/users with
X-RestLi-Method: BATCH_CREATE, X-Restli-Protocol-Version 2.0.0, a LinkedIn-Version
(YYYYMM) and elements {action: ADD|REMOVE, userIds: [{idType: SHA256_EMAIL, idValue}]};
answers one {status} per element (400 for a rejected one).

And the Conversions API: POST /rest/conversionEvents with the same versioned Rest.li headers
(BATCH_CREATE), as documented at
https://learn.microsoft.com/en-us/linkedin/marketing/integrations/ads-reporting/conversions-api
— elements {conversion: urn:lla:llaPartnerConversion:<id>, conversionHappenedAt in epoch
MILLISECONDS, eventId, user.userIds (required; SHA256_EMAIL hex or
LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID), conversionValue {currencyCode, amount as text}},
events at most 90 days old; one {status: 201} per element, 400 for a rejected one; stored
events de-duplicated on eventId."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from tests.fakes.http_server import FakeProvider, Reply, Request

PATH = re.compile(r"^/rest/dmpSegments/(\d+)/users$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
RULE = re.compile(r"^urn:lla:llaPartnerConversion:\d+$")
ID_TYPES = {"SHA256_EMAIL", "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "ACXIOM_ID", "ORACLE_MOAT_ID"}
EVENT_MAX_AGE = timedelta(days=90)


class FakeLinkedIn(FakeProvider):
    max_elements = 5_000

    max_events = 5_000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.segments: dict[str, set[str]] = {}
        self.rules: dict[str, dict[str, dict]] = {}  # conversion rule URN -> eventId -> first element
        self.received_events: list[tuple[str, dict]] = []  # every stored element, duplicates included
        self.clock: Optional[datetime] = None  # "now" for the age check (None: the wall clock)

    def conversions(self, rule: str) -> dict[str, dict]:
        """eventId → element, de-duplicated as LinkedIn counts them."""
        return dict(self.rules.get(rule, {}))

    def _element_problem(self, e: Any, now: datetime) -> Optional[str]:
        if not isinstance(e, dict) or not RULE.match(str(e.get("conversion", ""))):
            return f"conversion must be a conversion rule URN: {e}"
        at = e.get("conversionHappenedAt")
        if not isinstance(at, int) or isinstance(at, bool) or not 10 ** 12 <= at < 10 ** 13:
            return f"conversionHappenedAt must be epoch milliseconds: {at!r}"
        if datetime.fromtimestamp(at / 1000, timezone.utc) < now - EVENT_MAX_AGE:
            return "conversionHappenedAt is older than 90 days"
        if not isinstance(e.get("eventId"), str) or not e["eventId"]:
            return "eventId is needed to de-duplicate"
        ids = (e.get("user") or {}).get("userIds")
        if not isinstance(ids, list) or not ids:
            return "user.userIds is required on every event"
        for ident in ids:
            kind, value = ident.get("idType"), ident.get("idValue")
            if kind not in ID_TYPES or not isinstance(value, str) or not value:
                return f"bad userId {ident}"
            if kind == "SHA256_EMAIL" and not HEX64.match(value):
                return "SHA256_EMAIL must be a lowercase hex SHA-256"
        if "conversionValue" in e:
            value = e["conversionValue"]
            amount = value.get("amount")
            if not re.fullmatch(r"[A-Z]{3}", str(value.get("currencyCode", ""))) or not isinstance(amount, str) \
                    or not re.fullmatch(r"\d+(\.\d+)?", amount):
                return f"conversionValue is {{currencyCode, amount as decimal text}}: {value}"
        return None

    def _conversion_events(self, request: Request) -> Reply:
        elements = request.json().get("elements") or []
        if not elements or len(elements) > self.max_events:
            return self.problem(f"1..{self.max_events} elements, got {len(elements)}")
        now = self.clock or datetime.now(timezone.utc)
        for e in elements:
            problem = self._element_problem(e, now)
            if problem:
                return self.problem(problem)
        out = []
        for e in elements:
            email = next((i["idValue"] for i in e["user"]["userIds"] if i["idType"] == "SHA256_EMAIL"), None)
            if email in self.rejected:
                out.append({"status": 400, "error": {"message": "Invalid user identifier", "status": 400}})
                continue
            self.received_events.append((e["conversion"], e))
            self.rules.setdefault(e["conversion"], {}).setdefault(e["eventId"], e)
            out.append({"status": 201})
        return Reply(200, {"elements": out}, {"x-li-uuid": "li-request-1"})

    @staticmethod
    def too_many() -> Reply:
        return Reply(429, {"status": 429, "serviceErrorCode": 101, "code": "QUOTA_EXCEEDED",
                           "message": "Resource level throttle limit for calls to this resource is reached."},
                     {"Retry-After": "3"})

    def members(self, segment_id: str) -> set[str]:
        return set(self.segments.get(segment_id, set()))

    def sent(self, request: Request) -> list[tuple[str, str]]:
        return [(e["action"].lower(), e["userIds"][0]["idValue"]) for e in request.json().get("elements", [])]

    def handle(self, request: Request) -> Reply:
        h = request.headers
        if h.get("authorization") != f"Bearer {self.token}":
            self.problems.append("bad auth")
            return Reply(401, {"status": 401, "serviceErrorCode": 65600, "code": "INVALID_ACCESS_TOKEN",
                               "message": "Invalid access token"})
        match = PATH.match(request.path)
        events = request.path == "/rest/conversionEvents"
        if request.method != "POST" or not (match or events):
            return self.problem(f"unexpected {request.method} {request.path}")
        if h.get("x-restli-method") != "BATCH_CREATE" or h.get("x-restli-protocol-version") != "2.0.0" \
                or not re.fullmatch(r"\d{6}", h.get("linkedin-version", "")):
            return self.problem("headers: X-RestLi-Method BATCH_CREATE, X-Restli-Protocol-Version 2.0.0, "
                                "LinkedIn-Version YYYYMM")
        if events:
            return self._conversion_events(request)
        elements = request.json().get("elements") or []
        if not elements or len(elements) > self.max_elements:
            return self.problem(f"1..{self.max_elements} elements, got {len(elements)}")
        segment = self.segments.setdefault(match.group(1), set())
        out = []
        for e in elements:
            ids = e.get("userIds") or []
            if e.get("action") not in ("ADD", "REMOVE") or len(ids) != 1 or ids[0].get("idType") != "SHA256_EMAIL" \
                    or not HEX64.match(ids[0].get("idValue", "")):
                return self.problem(f"bad element {e}")
            value = ids[0]["idValue"]
            if value in self.rejected:
                out.append({"status": 400, "error": {"message": "Invalid idValue", "status": 400}})
                continue
            (segment.add if e["action"] == "ADD" else segment.discard)(value)
            out.append({"status": 201})
        return Reply(200, {"elements": out})

"""Fake Meta Graph API Custom Audience users edge: POST (add) and DELETE (remove)
/{version}/{audience_id}/users with form fields payload={schema, data}, session and
access_token; ≤10,000 rows; every value empty or a lowercase SHA-256 hex; session
batch_seq consecutive per session_id; throttling errors as Graph error objects.

And the Conversions API: POST /{version}/{dataset_id}/events with the form fields `data` (a
JSON array of ≤1,000 server events) and `access_token`, as documented at
https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event/
(event_name, event_time in SECONDS, event_id, action_source, user_data, custom_data; "if any
event_time in data is greater than 7 days in the past, we return an error for the entire
request" — 62 days for physical_store) and, for Conversion Leads CRM events,
https://developers.facebook.com/documentation/ads-commerce/conversions-api/conversion-leads-integration/payload-specification
(user_data.lead_id unhashed, custom_data.event_source "crm" and lead_event_source). It
checks every event and refuses the whole request on any invalid one (error code 100), as Meta
does; it de-duplicates on event_id, as Meta does, and keeps every event it received.
`user_data.fbc` is `fb.1.<creationTime>.<fbclid>`, creationTime in milliseconds: when the
fbclid was first seen, as documented at
https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/fbp-and-fbc/ —
a click can only lead to a later event, and the _fbc cookie it stands for lives 90 days
(Meta's cookie settings for the pixel). Meta would take such an fbc and attribute the event
to a click that did not lead to it; the fake records an fbc created after event_time, or
more than 90 days before it, as a problem. `custom_data.currency` must be an ISO 4217 code.

And Lead Ads retrieval: GET /{version}/{lead_id} (the id a `leadgen` webhook names) answers
`{id, created_time, ad_id, form_id, field_data: [{name, values: [...]}], ...}`, as documented at
https://developers.facebook.com/docs/marketing-api/guides/lead-ads/retrieving/ (the webhook payload
`{object: "page", entry: [{id, time, changes: [{field: "leadgen", value: {leadgen_id, page_id,
form_id, adgroup_id, ad_id, created_time}}]}]}` is described on the same page and at
https://developers.facebook.com/docs/graph-api/webhooks/getting-started/webhooks-for-leadgen/).
The access token is taken from `Authorization: Bearer` (or, flagged as a problem, the URL); an
unknown lead is Graph's 400 GraphMethodException (code 100, subcode 33); 5xx and 429 are played
with `fail_next` like every fault."""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from babel.numbers import is_currency

from tests.fakes.http_server import FakeProvider, Reply, Request

PATH = re.compile(r"^/(v\d+\.\d+)/(\d+)/users$")
LEAD_PATH = re.compile(r"^/(v\d+\.\d+)/(\d+)$")
EVENTS_PATH = re.compile(r"^/(v\d+\.\d+)/(\d+)/events$")
EVENT_MAX_AGE = {"system_generated": timedelta(days=7), "physical_store": timedelta(days=62)}
FBC_LIFETIME = timedelta(days=90)  # how long the _fbc cookie an fbc stands for lives
ACTION_SOURCES = {"email", "website", "app", "phone_call", "chat", "physical_store", "system_generated",
                  "business_messaging", "other"}
EVENT_KEYS = {"event_name", "event_time", "event_id", "action_source", "user_data", "custom_data",
              "event_source_url", "opt_out", "data_processing_options", "data_processing_options_country",
              "data_processing_options_state", "referrer_url"}
HASHED_USER_KEYS = {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"}
FBC = re.compile(r"^fb\.1\.(\d{13})\.\S+$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
KNOWN_KEYS = {"EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST",
              "ZIP", "MADID", "COUNTRY"}


class FakeMeta(FakeProvider):
    max_rows = 10_000

    max_events = 1000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.audiences: dict[str, set[str]] = {}  # audience -> EMAIL hashes (or PHONE when no e-mail)
        self.sessions: dict[str, list[tuple[int, bool]]] = {}
        self.datasets: dict[str, dict[str, dict]] = {}  # dataset -> event_id -> the first event with it
        self.received_events: list[tuple[str, dict]] = []  # every event received, duplicates included
        self.clock: Optional[datetime] = None  # "now" for the age check (None: the wall clock)
        self.leads: dict[str, dict] = {}  # lead id -> the Lead object Graph answers GET /{lead_id} with

    def add_lead(self, lead_id: str, form_id: str, fields: dict[str, Any], *, ad_id: Optional[str] = "23800000000001",
                 created_time: str = "2026-03-02T11:59:00+0000", platform: Optional[str] = None) -> dict:
        """A lead as Graph holds it: `fields` name -> value (a list for several answers)."""
        lead = {"id": lead_id, "created_time": created_time, "form_id": form_id,
                "field_data": [{"name": k, "values": v if isinstance(v, list) else [v]} for k, v in fields.items()]}
        if ad_id:
            lead["ad_id"] = ad_id
        if platform:
            lead["platform"] = platform
        self.leads[lead_id] = lead
        return lead

    def _lead(self, request: Request, lead_id: str) -> Reply:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if "access_token" in request.query:
            self.problems.append("access token sent in the URL")
            given, scheme = request.query["access_token"][-1], "Bearer"
        if scheme.lower() != "bearer" or given != self.token:
            self.problems.append("bad access_token")
            return Reply(400, {"error": {"message": "Invalid OAuth access token - Cannot parse access token",
                                         "type": "OAuthException", "code": 190, "fbtrace_id": "x"}})
        lead = self.leads.get(lead_id)
        if lead is None:
            return Reply(400, {"error": {"message": f"Unsupported get request. Object with ID '{lead_id}' does not "
                                                    "exist, cannot be loaded due to missing permissions, or does not "
                                                    "support this operation.", "type": "GraphMethodException",
                                         "code": 100, "error_subcode": 33, "fbtrace_id": "x"}})
        wanted = (request.query.get("fields") or [""])[-1].split(",")
        return Reply(200, {k: v for k, v in lead.items() if k == "id" or k in wanted or wanted == [""]})

    @staticmethod
    def throttled(code: int = 80003) -> Reply:
        return Reply(400, {"error": {"message": "(#80003) There have been too many calls to this ad-account. "
                                                "Wait a bit and try again.", "type": "OAuthException",
                                     "code": code, "error_subcode": 2446079, "fbtrace_id": "AbCdEf"}})

    def members(self, audience_id: str) -> set[str]:
        return set(self.audiences.get(audience_id, set()))

    @staticmethod
    def _identity(schema: list[str], row: list[str]) -> str:
        values = dict(zip(schema, row))
        return values.get("EMAIL") or values.get("PHONE") or ""

    def sent(self, request: Request) -> list[tuple[str, str]]:
        form = request.form()
        payload = json.loads(form.get("payload", "{}"))
        action = "add" if request.method == "POST" else "remove"
        return [(action, self._identity(payload["schema"], row)) for row in payload.get("data", [])]

    def conversions(self, dataset_id: str) -> dict[str, dict]:
        """event_id → event, de-duplicated as Meta counts them."""
        return dict(self.datasets.get(dataset_id, {}))

    @staticmethod
    def invalid_parameter(message: str, subcode: int = 2804019) -> Reply:
        """Graph's answer to an invalid server event: the whole request is refused."""
        return Reply(400, {"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100,
                                     "error_subcode": subcode, "error_user_msg": message, "fbtrace_id": "x"}})

    @staticmethod
    def unknown_object(dataset_id: str) -> Reply:
        """Graph's answer to a dataset id that does not exist (or the token cannot see)."""
        return Reply(400, {"error": {"message": f"Unsupported post request. Object with ID '{dataset_id}' does not "
                                                "exist, cannot be loaded due to missing permissions, or does not "
                                                "support this operation.", "type": "GraphMethodException",
                                     "code": 100, "error_subcode": 33, "fbtrace_id": "x"}})

    def _event_problem(self, event: Any, now: datetime) -> Optional[str]:
        if not isinstance(event, dict) or not set(event) <= EVENT_KEYS:
            return f"unknown server event keys {sorted(set(event) - EVENT_KEYS) if isinstance(event, dict) else event}"
        if not isinstance(event.get("event_name"), str) or not event["event_name"].strip():
            return "event_name is required"
        t = event.get("event_time")
        if not isinstance(t, int) or isinstance(t, bool) or not 10 ** 9 <= t < 10 ** 11:
            return f"event_time must be a Unix time in seconds, got {t!r}"
        if not isinstance(event.get("event_id"), str) or not event["event_id"]:
            return "event_id is required for de-duplication"
        source = event.get("action_source")
        if source not in ACTION_SOURCES:
            return f"bad action_source {source!r}"
        if source in EVENT_MAX_AGE and datetime.fromtimestamp(t, timezone.utc) < now - EVENT_MAX_AGE[source]:
            return f"event_time {t} is older than Meta allows for {source}"
        user = event.get("user_data")
        if not isinstance(user, dict) or not user:
            return "user_data is required"
        for key, value in user.items():
            if key in HASHED_USER_KEYS:
                values = value if isinstance(value, list) else [value]
                if not values or not all(isinstance(v, str) and HEX64.match(v) for v in values):
                    return f"user_data.{key} must be lowercase SHA-256 hex"
            elif key == "lead_id":
                if not isinstance(value, int) or isinstance(value, bool) or not 15 <= len(str(value)) <= 17:
                    return f"user_data.lead_id must be the 15-17 digit lead id, unhashed: {value!r}"
            elif key == "fbc":
                match = FBC.match(value) if isinstance(value, str) else None
                if not match:
                    return f"user_data.fbc must be fb.1.<ms>.<fbclid>: {value!r}"
                created = int(match.group(1)) // 1000  # event_time is in whole seconds
                if created > t or t - created > FBC_LIFETIME.total_seconds():
                    self.problems.append(f"user_data.fbc {value!r} was not clicked in the 90 days before "
                                         f"event_time {t}")
            else:
                return f"unexpected user_data.{key}"
        if not {"em", "ph", "lead_id", "fbc", "external_id"} & set(user):
            return "user_data has no customer information parameter to match on"
        custom = event.get("custom_data", {})
        if not isinstance(custom, dict):
            return "custom_data must be an object"
        if "value" in custom and (not isinstance(custom["value"], (int, float)) or isinstance(custom["value"], bool)
                                  or not is_currency(str(custom.get("currency", "")))):
            return f"custom_data value needs a number and an ISO 4217 currency: {custom}"
        crm = "lead_id" in user
        if crm and (custom.get("event_source") != "crm" or not custom.get("lead_event_source")
                    or source != "system_generated"):
            return "a Conversion Leads event needs action_source system_generated, custom_data.event_source crm " \
                   "and lead_event_source"
        if not crm and ("event_source" in custom or "lead_event_source" in custom):
            return "event_source / lead_event_source are only for Conversion Leads events (with a lead_id)"
        return None

    def _events(self, request: Request, dataset: str) -> Reply:
        form = request.form()
        if form.get("access_token") != self.token:
            self.problems.append("bad access_token")
            return Reply(400, {"error": {"message": "Invalid OAuth access token - Cannot parse access token",
                                         "type": "OAuthException", "code": 190, "fbtrace_id": "x"}})
        if "access_token" in request.query:
            self.problems.append("access token sent in the URL")
        try:
            data = json.loads(form["data"])
        except (KeyError, ValueError):
            return self.problem("the data form field must be a JSON array")
        if not isinstance(data, list) or not 1 <= len(data) <= self.max_events:
            got = len(data) if isinstance(data, list) else data
            return self.problem(f"1..{self.max_events} events per request, got {got}")
        now = self.clock or datetime.now(timezone.utc)
        for event in data:
            problem = self._event_problem(event, now)
            if problem:  # one bad event refuses the whole request
                self.problems.append(problem)
                return self.invalid_parameter(problem)
        if any(v in self.rejected for e in data for v in e["user_data"].get("em", [])):
            return self.invalid_parameter("The parameter em is invalid for one of the events")
        held = self.datasets.setdefault(dataset, {})
        for event in data:
            self.received_events.append((dataset, event))
            held.setdefault(event["event_id"], event)
        return Reply(200, {"events_received": len(data), "messages": [], "fbtrace_id": uuid.uuid4().hex[:11]})

    def handle(self, request: Request) -> Reply:
        events = EVENTS_PATH.match(request.path)
        if events and request.method == "POST":
            return self._events(request, events.group(2))
        lead = LEAD_PATH.match(request.path)
        if lead and request.method == "GET":
            return self._lead(request, lead.group(2))
        match = PATH.match(request.path)
        if not match or request.method not in ("POST", "DELETE"):
            return self.problem(f"unexpected {request.method} {request.path}")
        form = request.form()
        if form.get("access_token") != self.token:
            self.problems.append("bad access_token")
            return Reply(400, {"error": {"message": "Invalid OAuth access token - Cannot parse access token",
                                         "type": "OAuthException", "code": 190, "fbtrace_id": "x"}})
        if "access_token" in request.query:
            self.problems.append("access token sent in the URL")
        try:
            payload = json.loads(form["payload"])
            session = json.loads(form["session"])
        except (KeyError, ValueError):
            return self.problem("payload and session form fields must be JSON")
        schema, data = payload.get("schema"), payload.get("data")
        if not isinstance(schema, list) or not set(schema) <= KNOWN_KEYS or not isinstance(data, list):
            return self.problem(f"bad schema {schema}")
        if not data or len(data) > self.max_rows:
            return self.problem(f"1..{self.max_rows} rows per request, got {len(data)}")
        for row in data:
            if len(row) != len(schema) or not all(v == "" or HEX64.match(v) for v in row):
                return self.problem(f"row not hashed per schema: {row}")
        history = self.sessions.setdefault(f"{request.method}:{session.get('session_id')}", [])
        seq = session.get("batch_seq")
        if history and (history[-1][1] or seq != history[-1][0] + 1):
            return self.problem(f"session batch_seq {seq} after {history[-1]}")
        if not history and seq != 1:
            return self.problem(f"a session starts at batch_seq 1, got {seq}")
        history.append((seq, bool(session.get("last_batch_flag"))))
        audience = self.audiences.setdefault(match.group(2), set())
        invalid: dict[str, str] = {}
        received = 0
        for row in data:
            ident = self._identity(schema, row)
            if ident in self.rejected:
                invalid[ident] = "Invalid email format"
                continue
            received += 1
            if request.method == "POST":
                audience.add(ident)
            else:
                audience.discard(ident)
        return Reply(200, {"audience_id": match.group(2), "session_id": str(session.get("session_id")),
                           "num_received": received, "num_invalid_entries": len(invalid),
                           "invalid_entry_samples": invalid})

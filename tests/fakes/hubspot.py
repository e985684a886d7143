"""Fake HubSpot CRM v3: contacts batch upsert by e-mail (≤100 inputs, 207 multi-status for
rejected records) and static-list memberships add/remove by record id; bearer auth; 429s
carry the X-HubSpot-RateLimit-* headers. For the sales handover: contact properties are
checked against the portal's property list (`lifecyclestage` against its stage values, the
custom score property as a number) and kept; `POST /crm/v3/objects/tasks` checks the task
properties (required `hs_timestamp`, status, priority, a known `hubspot_owner_id`) and the
task→contact association (HUBSPOT_DEFINED 204 to an existing contact) and answers 201 with
the created object; `GET /crm/v3/owners?email=` lists the portal's owners; a contact's tasks
are read back through `POST /crm/v4/associations/contacts/tasks/batch/read` (207 with an error
for a contact without any) and `POST /crm/v3/objects/tasks/batch/read`. For erasures:
`POST /crm/v3/objects/contacts/gdpr-delete` checks its body (`{"objectId": "<e-mail>",
"idProperty": "email"}`, or `{"objectId": "<record id>"}`), deletes the contact with its list
memberships and tasks' association and answers 204; an unknown e-mail is blocklisted (204; HubSpot
refuses to re-create it), an unknown record id is 404. `gdpr_deleted` lists what was asked.

Deals (the CRM pull, nurture.crm), as documented:
- `POST /crm/v3/objects/deals/search` (https://developers.hubspot.com/docs/api/crm/search and
  https://developers.hubspot.com/docs/api-reference/latest/crm/objects/deals/search-deals):
  `filterGroups` (≤5, each ≤6 filters; EQ, NEQ, LT, LTE, GT, GTE on `hs_lastmodifieddate` and
  `hs_object_id`, values as strings, dates in milliseconds), one `sorts` entry, `limit` ≤ 200
  (more is a 400), `after` an offset; the search's limitations (guide, "Limitations"): at most
  10,000 results per query — an `after` at or past `search_cap` (default 10,000) is HubSpot's
  400 — and 5 requests per second per account: `rate_limit_searches = n` answers the next n
  searches 429 with `Retry-After` and the `policyName` body HubSpot sends. Answers `total`,
  `results` (requested properties plus hs_object_id, createdate, hs_lastmodifieddate) and
  `paging.next.after` while more are left.
- `POST /crm/v4/associations/deals/contacts/batch/read` (≤1,000 inputs; a deal without contacts
  is one of `errors`, answered 207:
  https://developers.hubspot.com/docs/api-reference/legacy/crm/associations/associate-records/batch/get-associations).
- `POST /crm/v3/objects/contacts/batch/read` (≤100 inputs, `properties`; an unknown id is one
  of `errors`, 207) and `GET /crm/v3/objects/deals/{dealId}?properties=…` (404 when unknown).
`put_deal` / `add_contact` set the portal up; `down_after_searches = n` answers every request
after the n-th search 503 (HubSpot gone mid-pull).

Fault switch: `quote_bad_token = True` makes the 401 for a wrong token quote the bearer token it
received (a provider that echoes a credential back). Two more, for answers that would page
forever: `search_ignores_filters = True` answers every deal search as if it had no filters, and
`task_paging_loops = True` gives every contact→tasks association row the same `paging.next.after`."""
from __future__ import annotations

import bisect
import re
from datetime import datetime, timedelta, timezone
from typing import Optional

from tests.fakes.http_server import FakeProvider, Reply, Request

LIST_PATH = re.compile(r"^/crm/v3/lists/([^/]+)/memberships/(add|remove)$")
CONTACT_PROPERTIES = {"email", "firstname", "lastname", "phone", "company", "lifecyclestage"}
LIFECYCLE_VALUES = {"subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                    "evangelist", "other"}
TASK_PROPERTIES = {"hs_timestamp", "hs_task_body", "hubspot_owner_id", "hs_task_subject", "hs_task_status",
                   "hs_task_priority", "hs_task_type", "hs_task_reminders"}
TASK_STATUSES = {"NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"}
TASK_PRIORITIES = {"LOW", "MEDIUM", "HIGH"}
TASK_TO_CONTACT = 204
CONTACT_TO_TASK = 203
DEAL_TO_CONTACT = 3  # HUBSPOT_DEFINED deal -> contact
DEAL_PATH = re.compile(r"^/crm/v3/objects/deals/(\d+)$")
SEARCH_OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE"}
SEARCH_PROPERTIES = {"hs_lastmodifieddate", "hs_object_id"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def hubspot_time(moment: datetime) -> str:
    """HubSpot's format of a datetime property: UTC, milliseconds, Z."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def millis(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


class FakeHubSpot(FakeProvider):
    max_inputs = 100

    def __init__(self, token: str, *, custom_properties: tuple[str, ...] = ("nurture_score",),
                 owners: dict[str, str] | None = None):
        super().__init__()
        self.token = token
        self.contacts: dict[str, str] = {}  # email -> record id
        self.properties: dict[str, dict[str, str]] = {}  # email -> contact properties as last written
        self.lists: dict[str, set[str]] = {}
        self.number_properties = set(custom_properties)  # custom contact properties (type number)
        self.owners = dict(owners or {})  # owner e-mail -> owner id
        self.tasks: list[dict] = []  # created tasks: {"id", "properties", "contact_ids"}
        self.rejected_tasks: set[str] = set()  # contact e-mails whose task creation fails (5xx)
        self.lose_task_answers = 0  # create the next N tasks, then drop the connection unanswered
        self.quote_bad_token = False  # the 401 for a wrong token quotes the token it received
        self.gdpr_deleted: list[str] = []  # objectIds of the GDPR deletes asked for, in order
        self.blocklist: set[str] = set()  # e-mails GDPR-deleted: an upsert of one is refused
        self.deals: dict[str, dict] = {}  # deal id -> {"properties": {...}, "contacts": [contact ids], "modified": ms}
        self.search_cap = 10_000  # the search's limit of results per query
        self.rate_limit_searches = 0  # answer the next N searches 429 (the 5 per second limit)
        self.down_after_searches: Optional[int] = None  # after N searches, answer everything 503
        self.search_ignores_filters = False  # every search answers every deal (module docstring)
        self.task_paging_loops = False  # every association row says "more after cursor 1"
        self.searches = 0
        self._index: Optional[list[tuple[int, int]]] = None  # (modified ms, deal id) sorted
        self._by_id: Optional[dict[str, str]] = None  # contact record id -> e-mail

    def tasks_for(self, email: str) -> list[dict]:
        rid = self.contacts.get(email)
        return [t for t in self.tasks if rid in t["contact_ids"]]

    @staticmethod
    def rate_limited() -> Reply:
        return Reply(429, {"status": "error", "message": "You have reached your secondly limit.",
                           "errorType": "RATE_LIMIT", "correlationId": "c0ffee", "policyName": "SECONDLY",
                           "groupName": "publicapi:private-app:burst:1"},
                     {"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "0",
                      "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
                      "X-HubSpot-RateLimit-Secondly": "10", "X-HubSpot-RateLimit-Secondly-Remaining": "0"})

    def members(self, list_id: str) -> set[str]:
        ids = self.lists.get(list_id, set())
        return {email for email, rid in self.contacts.items() if rid in ids}

    def sent(self, request: Request) -> list[tuple[str, str]]:
        """(action, identity) pairs a request carried: upserted e-mails, list ids moved."""
        if request.path.endswith("/batch/upsert"):
            return [("add", i["id"]) for i in request.json()["inputs"]]
        match = LIST_PATH.match(request.path)
        if match and match.group(2) == "remove":
            by_id = {v: k for k, v in self.contacts.items()}
            return [("remove", by_id.get(rid, rid)) for rid in request.json()]
        return []

    def start(self) -> "FakeHubSpot":
        super().start()
        handler = self._server.RequestHandlerClass  # type: ignore[union-attr]

        class NoDelay(handler):  # type: ignore[misc, valid-type]
            # Small answers go out at once: with Nagle's algorithm each would wait for the
            # client's delayed ACK (~40 ms), and the bench measures the pull, not that.
            disable_nagle_algorithm = True
        self._server.RequestHandlerClass = NoDelay  # type: ignore[union-attr]
        return self

    # -- deals: setting the portal up

    def add_contact(self, email: str, lifecyclestage: Optional[str] = None,
                    stage_date: Optional[datetime] = None) -> str:
        """A contact of the portal (its record id)."""
        rid = self.contacts.setdefault(email, str(1000 + len(self.contacts)))
        self._by_id = None
        props = self.properties.setdefault(email, {"email": email})
        if lifecyclestage:
            props["lifecyclestage"] = lifecyclestage
            if stage_date is not None:
                props[f"hs_lifecyclestage_{lifecyclestage}_date"] = hubspot_time(stage_date)
        return rid

    def put_deal(self, deal_id: str, *, stage: str, modified: datetime, contacts: tuple[str, ...] = (),
                 amount: Optional[str] = None, currency: Optional[str] = None, closed: Optional[datetime] = None,
                 created: Optional[datetime] = None, pipeline: str = "default", name: Optional[str] = None,
                 won: Optional[bool] = None, **extra: str) -> None:
        """Create or change a deal; `contacts`: e-mails (created as contacts when new), in order."""
        is_won = won if won is not None else stage == "closedwon"
        is_closed = is_won or stage in ("closedwon", "closedlost")
        props = {"dealname": name or f"Deal {deal_id}", "dealstage": stage, "pipeline": pipeline,
                 "amount": amount, "deal_currency_code": currency,
                 "closedate": hubspot_time(closed) if closed else None,
                 "createdate": hubspot_time(created or modified), "hs_lastmodifieddate": hubspot_time(modified),
                 "hs_is_closed_won": "true" if is_won else "false", "hs_is_closed": "true" if is_closed else "false",
                 "hs_object_id": deal_id, **extra}
        self.deals[str(deal_id)] = {"properties": props, "contacts": [self.add_contact(e) for e in contacts],
                                    "modified": millis(modified)}
        self._index = None

    def count(self, path: str) -> int:
        """Requests made to `path` (a prefix), e.g. "/crm/v3/objects/deals/search"."""
        return sum(1 for r in self.requests if r.path.startswith(path))

    def handle(self, request: Request) -> Reply:
        if self.down_after_searches is not None and self.searches >= self.down_after_searches:
            return Reply(503, {"status": "error", "message": "Service Unavailable", "category": "SERVICE_UNAVAILABLE"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            self.problems.append(f"bad auth on {request.path}")
            message = "Authentication credentials not found."
            if self.quote_bad_token:
                received = request.headers.get("authorization", "").removeprefix("Bearer ")
                message = f"The access token {received} is not valid for this portal."
            return Reply(401, {"status": "error", "message": message, "category": "INVALID_AUTHENTICATION"})
        if request.method == "POST" and request.path == "/crm/v3/objects/contacts/batch/upsert":
            return self._upsert(request)
        if request.method == "POST" and request.path == "/crm/v3/objects/tasks":
            return self._create_task(request)
        if request.method == "POST" and request.path == "/crm/v3/objects/contacts/gdpr-delete":
            return self._gdpr_delete(request)
        if request.method == "GET" and request.path in ("/crm/v3/owners", "/crm/v3/owners/"):
            return self._owners(request)
        if request.method == "POST" and request.path == "/crm/v4/associations/contacts/tasks/batch/read":
            return self._contact_tasks(request)
        if request.method == "POST" and request.path == "/crm/v3/objects/tasks/batch/read":
            return self._read_tasks(request)
        if request.method == "POST" and request.path == "/crm/v3/objects/deals/search":
            return self._search_deals(request)
        if request.method == "POST" and request.path == "/crm/v4/associations/deals/contacts/batch/read":
            return self._deal_contacts(request)
        if request.method == "POST" and request.path == "/crm/v3/objects/contacts/batch/read":
            return self._read_contacts(request)
        deal = DEAL_PATH.match(request.path)
        if request.method == "GET" and deal:
            return self._get_deal(deal.group(1), request)
        match = LIST_PATH.match(request.path)
        if request.method == "PUT" and match:
            return self._membership(match.group(1), match.group(2), request)
        return self.problem(f"unexpected {request.method} {request.path}")

    def _upsert(self, request: Request) -> Reply:
        inputs = request.json().get("inputs")
        if not isinstance(inputs, list) or not inputs or len(inputs) > self.max_inputs:
            return self.problem(f"upsert needs 1..{self.max_inputs} inputs, got {len(inputs or [])}")
        results, errors = [], []
        ids = [item.get("id") for item in inputs]
        if len(set(ids)) != len(ids):
            return self.problem(f"duplicate ids in one upsert batch: {ids}")
        for item in inputs:
            email = item.get("id")
            props = item.get("properties") or {}
            if item.get("idProperty") != "email" or not email or props.get("email") != email:
                return self.problem(f"upsert input must be idProperty=email with matching property: {item}")
            invalid = self._invalid_contact_properties(props)
            if invalid:  # HubSpot refuses the whole batch when a property is unknown or invalid
                return Reply(400, {"status": "error", "category": "VALIDATION_ERROR", "message": invalid,
                                   "correlationId": "c0ffee"})
            if email in self.blocklist:
                errors.append({"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"{email} was permanently deleted (GDPR) and cannot be re-created",
                               "context": {"ids": [email]}})
                continue
            if email in self.rejected:
                errors.append({"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"Property values were not valid: {email}", "context": {"ids": [email]}})
                continue
            new = email not in self.contacts
            rid = self.contacts.setdefault(email, str(1000 + len(self.contacts)))
            self._by_id = None
            self.properties.setdefault(email, {}).update({k: str(v) for k, v in props.items()})
            results.append({"id": rid, "properties": {"email": email, **props}, "new": new,
                            "createdAt": "2026-11-21T02:00:00Z", "updatedAt": "2026-11-21T02:00:00Z",
                            "archived": False})
        body = {"status": "COMPLETE", "results": results, "startedAt": "2026-11-21T02:00:00Z",
                "completedAt": "2026-11-21T02:00:01Z"}
        if errors:
            body.update(numErrors=len(errors), errors=errors)
            return Reply(207, body)
        return Reply(200, body)

    def _gdpr_delete(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return self.problem("gdpr-delete body is not JSON")
        if not isinstance(body, dict) or set(body) - {"objectId", "idProperty"}:
            return self.problem(f"gdpr-delete body must be {{objectId, idProperty}}: {body}")
        object_id, id_property = body.get("objectId"), body.get("idProperty")
        if not isinstance(object_id, str) or not object_id:
            return self.problem(f"gdpr-delete objectId must be a non-empty string: {object_id!r}")
        if id_property not in (None, "email"):
            return self.problem(f"gdpr-delete idProperty must be email (or absent for a record id): {id_property!r}")
        self.gdpr_deleted.append(object_id)
        if id_property == "email":
            if object_id != object_id.strip().lower():
                self.problems.append(f"gdpr-delete of a non-normalized e-mail {object_id!r}")
            email = object_id.strip().lower()
            if email not in self.contacts:
                self.blocklist.add(email)  # HubSpot blocklists an address it does not know
                return Reply(204)
        else:
            by_id = {v: k for k, v in self.contacts.items()}
            if object_id not in by_id:
                return Reply(404, {"status": "error", "category": "OBJECT_NOT_FOUND",
                                   "message": f"Object not found. objectId are usually numeric: {object_id}"})
            email = by_id[object_id]
        record = self.contacts.pop(email)
        self._by_id = None
        self.properties.pop(email, None)
        self.blocklist.add(email)
        for members in self.lists.values():
            members.discard(record)
        for task in self.tasks:
            task["contact_ids"] = [c for c in task["contact_ids"] if c != record]
        return Reply(204)

    def _membership(self, list_id: str, action: str, request: Request) -> Reply:
        ids = request.json()
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return self.problem("list membership body must be a JSON array of record id strings")
        known = set(self.contacts.values())
        members = self.lists.setdefault(list_id, set())
        missing = [i for i in ids if i not in known]
        present = [i for i in ids if i in known]
        if action == "add":
            added = [i for i in present if i not in members]
            members.update(present)
            return Reply(200, {"recordIdsAdded": added, "recordIdsMissing": missing})
        removed = [i for i in present if i in members]
        members.difference_update(present)
        return Reply(200, {"recordIdsRemoved": removed, "recordIdsMissing": missing})

    def _invalid_contact_properties(self, props: dict) -> str:
        for name, value in props.items():
            if name not in CONTACT_PROPERTIES | self.number_properties:
                return f'Property "{name}" does not exist'
            if not isinstance(value, str):
                self.problems.append(f"property {name} sent as {type(value).__name__}, HubSpot's values are strings")
            if name == "lifecyclestage" and value not in LIFECYCLE_VALUES:
                return f'Property values were not valid: {value} was not one of the allowed options for lifecyclestage'
            if name in self.number_properties:
                try:
                    float(value)
                except (TypeError, ValueError):
                    return f"Property values were not valid: {value} is not a number for {name}"
        return ""

    def _create_task(self, request: Request) -> Reply:
        body = request.json()
        props = body.get("properties") or {}
        unknown = sorted(set(props) - TASK_PROPERTIES)
        if unknown:
            return self.problem(f"unknown task properties {unknown}")
        try:
            due = datetime.fromisoformat(str(props.get("hs_timestamp", "")).replace("Z", "+00:00"))
        except ValueError:
            return self.problem(f"hs_timestamp is required, in UTC format: {props.get('hs_timestamp')!r}")
        if due.tzinfo is None:
            return self.problem(f"hs_timestamp without a time zone: {props['hs_timestamp']!r}")
        if props.get("hs_task_status") not in TASK_STATUSES or props.get("hs_task_priority") not in TASK_PRIORITIES:
            return self.problem(f"bad task status/priority: {props}")
        owner = props.get("hubspot_owner_id")
        if owner is not None and owner not in self.owners.values():
            return Reply(400, {"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"Property values were not valid: {owner} is not a valid owner id"})
        contact_ids = []
        for assoc in body.get("associations") or []:
            types = assoc.get("types") or []
            if (not isinstance(assoc.get("to"), dict) or types != [{"associationCategory": "HUBSPOT_DEFINED",
                                                                    "associationTypeId": TASK_TO_CONTACT}]):
                return self.problem(f"task association must be to a contact with HUBSPOT_DEFINED 204: {assoc}")
            contact_ids.append(str(assoc["to"].get("id")))
        if not contact_ids:
            return self.problem("a handover task must be associated with its contact")
        known = set(self.contacts.values())
        if any(cid not in known for cid in contact_ids):
            return Reply(400, {"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"association target(s) not found: {contact_ids}"})
        by_id = {v: k for k, v in self.contacts.items()}
        if any(by_id[cid] in self.rejected_tasks for cid in contact_ids):
            return Reply(502, {"status": "error", "message": "Bad gateway"})
        task = {"id": str(9000 + len(self.tasks)), "properties": dict(props), "contact_ids": contact_ids}
        self.tasks.append(task)
        if self.lose_task_answers:
            self.lose_task_answers -= 1
            return None  # type: ignore[return-value]  # the server's "no answer": connection dropped
        return Reply(201, {"id": task["id"], "properties": {**props, "hs_object_id": task["id"]},
                           "createdAt": "2026-11-21T02:00:00Z", "updatedAt": "2026-11-21T02:00:00Z",
                           "archived": False})

    def _owners(self, request: Request) -> Reply:
        wanted = (request.query.get("email") or [None])[-1]
        results = [{"id": oid, "email": email, "firstName": "", "lastName": "", "userId": int(oid) + 1,
                    "createdAt": "2019-10-30T03:30:17.883Z", "updatedAt": "2019-12-07T16:50:06.678Z",
                    "archived": False, "type": "PERSON"}
                   for email, oid in self.owners.items() if wanted is None or email == wanted.lower()]
        return Reply(200, {"results": results})

    def _contact_tasks(self, request: Request) -> Reply:
        inputs = request.json().get("inputs")
        if not isinstance(inputs, list) or not inputs or len(inputs) > 1000:
            return self.problem(f"association batch read needs 1..1000 inputs, got {len(inputs or [])}")
        results, missing = [], []
        for item in inputs:
            cid = str(item.get("id"))
            tasks = [t for t in self.tasks if cid in t["contact_ids"]]
            if not tasks:
                missing.append(cid)
                continue
            results.append({"from": {"id": cid}, "to": [
                {"toObjectId": int(t["id"]), "associationTypes": [
                    {"category": "HUBSPOT_DEFINED", "typeId": CONTACT_TO_TASK, "label": None}]} for t in tasks]})
            if self.task_paging_loops:
                results[-1]["paging"] = {"next": {"after": "1", "link": "?after=1"}}
        body = {"status": "COMPLETE", "results": results, "startedAt": "2026-11-21T02:00:00Z",
                "completedAt": "2026-11-21T02:00:01Z"}
        if missing:
            body.update(numErrors=len(missing), errors=[
                {"status": "error", "category": "OBJECT_NOT_FOUND", "message": f"No tasks are associated with {cid}",
                 "context": {"fromObjectId": [cid]}} for cid in missing])
            return Reply(207, body)
        return Reply(200, body)

    def _read_tasks(self, request: Request) -> Reply:
        body = request.json()
        inputs, wanted = body.get("inputs"), body.get("properties")
        if not isinstance(inputs, list) or not inputs or len(inputs) > self.max_inputs or not isinstance(wanted, list):
            return self.problem(f"tasks batch read needs 1..{self.max_inputs} inputs and a properties list")
        by_id = {t["id"]: t for t in self.tasks}
        results = [{"id": str(i["id"]), "properties": {k: by_id[str(i["id"])]["properties"].get(k) for k in wanted},
                    "createdAt": "2026-11-21T02:00:00Z", "updatedAt": "2026-11-21T02:00:00Z", "archived": False}
                   for i in inputs if str(i.get("id")) in by_id]
        return Reply(200, {"status": "COMPLETE", "results": results, "startedAt": "2026-11-21T02:00:00Z",
                           "completedAt": "2026-11-21T02:00:01Z"})

    # -- deals

    def _deal_object(self, deal_id: str, wanted: list[str]) -> dict:
        props = self.deals[deal_id]["properties"]
        shown = {k: props.get(k) for k in {*wanted, "hs_object_id", "createdate", "hs_lastmodifieddate"}}
        return {"id": deal_id, "properties": shown, "createdAt": props["createdate"],
                "updatedAt": props["hs_lastmodifieddate"], "archived": False}

    def _contacts_by_id(self) -> dict[str, str]:
        if self._by_id is None:
            self._by_id = {v: k for k, v in self.contacts.items()}
        return self._by_id

    def _ordered(self) -> list[tuple[int, int]]:
        if self._index is None:
            self._index = sorted((d["modified"], int(i)) for i, d in self.deals.items())
        return self._index

    def _search_deals(self, request: Request) -> Reply:
        self.searches += 1
        if self.rate_limit_searches:
            self.rate_limit_searches -= 1
            return Reply(429, {"status": "error", "message": "You have reached your secondly limit.",
                               "errorType": "RATE_LIMIT", "correlationId": "c0ffee", "policyName": "SECONDLY"},
                         {"Retry-After": "1"})
        try:
            body = request.json()
        except ValueError:
            return self.problem("search body is not JSON")
        groups, sorts, limit = body.get("filterGroups", []), body.get("sorts", []), body.get("limit", 10)
        if not isinstance(groups, list) or len(groups) > 5 or not isinstance(sorts, list) or len(sorts) > 1:
            return self.problem(f"search: at most 5 filterGroups and one sort: {body}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit:
            return self.problem(f"search limit must be a positive integer: {limit!r}")
        if limit > 200:
            return Reply(400, {"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"limit must be at most 200, got {limit}"})
        after = body.get("after", "0")
        if not isinstance(after, str) or not after.isdigit():
            return self.problem(f"search after must be a string offset: {after!r}")
        if int(after) >= self.search_cap:
            return Reply(400, {"status": "error", "category": "VALIDATION_ERROR", "correlationId": "c0ffee",
                               "message": f"Paging past {self.search_cap} results is not supported for search."})
        wanted = body.get("properties", [])
        if not isinstance(wanted, list):
            return self.problem("search properties must be a list")
        matched: list[tuple[int, int]] = []
        for group in groups or [{"filters": []}]:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list) or len(filters) > 6:
                return self.problem(f"a filterGroup needs a list of at most 6 filters: {group}")
            candidates = self._ordered() if self.search_ignores_filters else self._candidates(filters)
            if isinstance(candidates, Reply):
                return candidates
            matched.extend(candidates)
        if len(groups) > 1:  # OR of the groups: each deal once
            matched = sorted(set(matched))
        if sorts:
            sort = sorts[0]
            if not isinstance(sort, dict) or sort.get("propertyName") not in SEARCH_PROPERTIES \
                    or sort.get("direction") not in ("ASCENDING", "DESCENDING"):
                return self.problem(f"search sort must be {{propertyName, direction}} on a known property: {sort}")
            if sort["propertyName"] == "hs_object_id" or sort["direction"] == "DESCENDING":
                key = (lambda m: m[1]) if sort["propertyName"] == "hs_object_id" else (lambda m: m)
                matched = sorted(matched, key=key, reverse=sort["direction"] == "DESCENDING")
        start = int(after)
        page = matched[start:start + limit]
        answer: dict = {"total": len(matched), "results": [self._deal_object(str(i), wanted) for _, i in page]}
        if start + limit < len(matched):
            answer["paging"] = {"next": {"after": str(start + limit), "link": "?after=" + str(start + limit)}}
        return Reply(200, answer)

    def _candidates(self, filters: list) -> "list[tuple[int, int]] | Reply":
        """The (modified, id) keys matching every filter: a range of the sorted index for the
        date filters, the others checked one by one."""
        index = self._ordered()
        low, high = 0, len(index)
        others = []
        for f in filters:
            if not isinstance(f, dict) or f.get("operator") not in SEARCH_OPERATORS \
                    or f.get("propertyName") not in SEARCH_PROPERTIES:
                return self.problem(f"unsupported search filter: {f}")
            value = f.get("value")
            if not isinstance(value, str) or not value.lstrip("-").isdigit():
                return self.problem(f"filter values are strings (dates in milliseconds): {f}")
            number, operator = int(value), f["operator"]
            if f["propertyName"] == "hs_object_id" or operator == "NEQ":
                others.append((f["propertyName"], operator, number))
            elif operator in ("GTE", "EQ"):
                low = max(low, bisect.bisect_left(index, (number, -1)))
            elif operator == "GT":
                low = max(low, bisect.bisect_left(index, (number + 1, -1)))
            if f["propertyName"] == "hs_lastmodifieddate" and operator in ("LTE", "EQ"):
                high = min(high, bisect.bisect_left(index, (number + 1, -1)))
            elif f["propertyName"] == "hs_lastmodifieddate" and operator == "LT":
                high = min(high, bisect.bisect_left(index, (number, -1)))
        if not others:  # the usual case: a range of the index, no scan
            return index[low:high]
        compare = {"EQ": int.__eq__, "NEQ": int.__ne__, "LT": int.__lt__, "LTE": int.__le__, "GT": int.__gt__,
                   "GTE": int.__ge__}
        out = []
        for key in index[low:high]:
            if all(compare[op](key[1] if name == "hs_object_id" else key[0], number) for name, op, number in others):
                out.append(key)
        return out

    def _get_deal(self, deal_id: str, request: Request) -> Reply:
        if deal_id not in self.deals:
            return Reply(404, {"status": "error", "category": "OBJECT_NOT_FOUND", "correlationId": "c0ffee",
                               "message": "Object not found.  objectId are usually numeric."})
        wanted = ",".join(request.query.get("properties", [])).split(",")
        return Reply(200, self._deal_object(deal_id, [w for w in wanted if w]))

    def _deal_contacts(self, request: Request) -> Reply:
        inputs = request.json().get("inputs")
        if not isinstance(inputs, list) or not inputs or len(inputs) > 1000:
            return self.problem(f"association batch read needs 1..1000 inputs, got {len(inputs or [])}")
        results, missing = [], []
        for item in inputs:
            did = str(item.get("id"))
            contacts = self.deals.get(did, {}).get("contacts") or []
            if not contacts:
                missing.append(did)
                continue
            results.append({"from": {"id": did}, "to": [
                {"toObjectId": int(c), "associationTypes": [
                    {"category": "HUBSPOT_DEFINED", "typeId": DEAL_TO_CONTACT, "label": None}]} for c in contacts]})
        body = {"status": "COMPLETE", "results": results, "startedAt": "2026-11-21T02:00:00Z",
                "completedAt": "2026-11-21T02:00:01Z"}
        if missing:
            body.update(numErrors=len(missing), errors=[
                {"status": "error", "category": "OBJECT_NOT_FOUND", "message": f"No contacts are associated with {d}",
                 "context": {"fromObjectId": [d]}} for d in missing])
            return Reply(207, body)
        return Reply(200, body)

    def _read_contacts(self, request: Request) -> Reply:
        body = request.json()
        inputs, wanted = body.get("inputs"), body.get("properties")
        if not isinstance(inputs, list) or not inputs or len(inputs) > self.max_inputs or not isinstance(wanted, list):
            return self.problem(f"contacts batch read needs 1..{self.max_inputs} inputs and a properties list")
        by_id = self._contacts_by_id()
        results, missing = [], []
        for item in inputs:
            cid = str(item.get("id"))
            if cid not in by_id:
                missing.append(cid)
                continue
            props = self.properties.get(by_id[cid], {})
            results.append({"id": cid, "properties": {**{k: props.get(k) for k in wanted}, "hs_object_id": cid},
                            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
                            "archived": False})
        answer = {"status": "COMPLETE", "results": results, "startedAt": "2026-11-21T02:00:00Z",
                  "completedAt": "2026-11-21T02:00:01Z"}
        if missing:
            answer.update(numErrors=len(missing), errors=[
                {"status": "error", "category": "OBJECT_NOT_FOUND", "message": f"Object not found: {c}",
                 "context": {"ids": [c]}} for c in missing])
            return Reply(207, answer)
        return Reply(200, answer)

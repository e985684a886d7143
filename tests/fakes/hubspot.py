"""Fake HubSpot CRM v3: contacts batch upsert by e-mail (≤100 inputs, 207 multi-status for
rejected records) and static-list memberships add/remove by record id; bearer auth; 429s
carry the X-HubSpot-RateLimit-* headers."""
from __future__ import annotations

import re

from tests.fakes.http_server import FakeProvider, Reply, Request

LIST_PATH = re.compile(r"^/crm/v3/lists/([^/]+)/memberships/(add|remove)$")


class FakeHubSpot(FakeProvider):
    max_inputs = 100

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.contacts: dict[str, str] = {}  # email -> record id
        self.lists: dict[str, set[str]] = {}

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

    def handle(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            self.problems.append(f"bad auth on {request.path}")
            return Reply(401, {"status": "error", "message": "Authentication credentials not found.",
                               "category": "INVALID_AUTHENTICATION"})
        if request.method == "POST" and request.path == "/crm/v3/objects/contacts/batch/upsert":
            return self._upsert(request)
        match = LIST_PATH.match(request.path)
        if request.method == "PUT" and match:
            return self._membership(match.group(1), match.group(2), request)
        return self.problem(f"unexpected {request.method} {request.path}")

    def _upsert(self, request: Request) -> Reply:
        inputs = request.json().get("inputs")
        if not isinstance(inputs, list) or not inputs or len(inputs) > self.max_inputs:
            return self.problem(f"upsert needs 1..{self.max_inputs} inputs, got {len(inputs or [])}")
        results, errors = [], []
        for item in inputs:
            email = item.get("id")
            props = item.get("properties") or {}
            if item.get("idProperty") != "email" or not email or props.get("email") != email:
                return self.problem(f"upsert input must be idProperty=email with matching property: {item}")
            if email in self.rejected:
                errors.append({"status": "error", "category": "VALIDATION_ERROR",
                               "message": f"Property values were not valid: {email}", "context": {"ids": [email]}})
                continue
            new = email not in self.contacts
            rid = self.contacts.setdefault(email, str(1000 + len(self.contacts)))
            results.append({"id": rid, "properties": {"email": email, **props}, "new": new,
                            "createdAt": "2026-11-21T02:00:00Z", "updatedAt": "2026-11-21T02:00:00Z",
                            "archived": False})
        body = {"status": "COMPLETE", "results": results, "startedAt": "2026-11-21T02:00:00Z",
                "completedAt": "2026-11-21T02:00:01Z"}
        if errors:
            body.update(numErrors=len(errors), errors=errors)
            return Reply(207, body)
        return Reply(200, body)

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

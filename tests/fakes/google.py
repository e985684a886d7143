"""Fake Google Data Manager API: POST /v1/audienceMembers:ingest and :remove with
destinations, audienceMembers (≤10,000) of userData.userIdentifiers (hex SHA-256),
encoding HEX, bearer auth; 429 RESOURCE_EXHAUSTED; a request with invalid members is
rejected whole with a google.rpc.BadRequest naming each `audienceMembers[i]`."""
from __future__ import annotations

import re
import uuid

from tests.fakes.http_server import FakeProvider, Reply, Request

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class FakeGoogle(FakeProvider):
    max_members = 10_000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.audiences: dict[str, set[str]] = {}  # productDestinationId -> emailAddress (or phone) hashes

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

    def handle(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            self.problems.append("bad auth")
            return Reply(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.",
                                         "status": "UNAUTHENTICATED"}})
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

"""Fake LinkedIn DMP segment users: POST /rest/dmpSegments/{id}/users with
X-RestLi-Method: BATCH_CREATE, X-Restli-Protocol-Version 2.0.0, a LinkedIn-Version
(YYYYMM) and elements {action: ADD|REMOVE, userIds: [{idType: SHA256_EMAIL, idValue}]};
answers one {status} per element (400 for a rejected one)."""
from __future__ import annotations

import re

from tests.fakes.http_server import FakeProvider, Reply, Request

PATH = re.compile(r"^/rest/dmpSegments/(\d+)/users$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class FakeLinkedIn(FakeProvider):
    max_elements = 5_000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.segments: dict[str, set[str]] = {}

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
        if request.method != "POST" or not match:
            return self.problem(f"unexpected {request.method} {request.path}")
        if h.get("x-restli-method") != "BATCH_CREATE" or h.get("x-restli-protocol-version") != "2.0.0" \
                or not re.fullmatch(r"\d{6}", h.get("linkedin-version", "")):
            return self.problem("headers: X-RestLi-Method BATCH_CREATE, X-Restli-Protocol-Version 2.0.0, "
                                "LinkedIn-Version YYYYMM")
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

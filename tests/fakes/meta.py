"""Fake Meta Graph API Custom Audience users edge: POST (add) and DELETE (remove)
/{version}/{audience_id}/users with form fields payload={schema, data}, session and
access_token; ≤10,000 rows; every value empty or a lowercase SHA-256 hex; session
batch_seq consecutive per session_id; throttling errors as Graph error objects."""
from __future__ import annotations

import json
import re

from tests.fakes.http_server import FakeProvider, Reply, Request

PATH = re.compile(r"^/(v\d+\.\d+)/(\d+)/users$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
KNOWN_KEYS = {"EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST",
              "ZIP", "MADID", "COUNTRY"}


class FakeMeta(FakeProvider):
    max_rows = 10_000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.audiences: dict[str, set[str]] = {}  # audience -> EMAIL hashes (or PHONE when no e-mail)
        self.sessions: dict[str, list[tuple[int, bool]]] = {}

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

    def handle(self, request: Request) -> Reply:
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

"""Fake TikTok Audience Segment API: `POST /open_api/v1.3/segment/mapping/` (trailing slash
included) with the `Access-Token` header and a JSON body `{advertiser_ids, action: add | delete,
id_schema, batch_data}`; every answer is HTTP 200 with TikTok's `{code, message, request_id,
data}` envelope, errors included.

What it checks, and where TikTok documents it:
- the endpoint and body: advertiser_ids (one numeric id), action add | delete, id_schema of the
  SHA-256 id types (EMAIL_SHA256, PHONE_SHA256; also IDFA/AAID), batch_data = one list per
  person with its entries in id_schema's order, each `{id, audience_ids}` or `{}` for a missing
  identifier — "Add or delete audience mappings",
  https://business-api.tiktok.com/portal/docs?id=1739940506015746 (the Audience Segment API:
  https://business-api.tiktok.com/portal/docs?id=1739940504185857; the body's shape as TikTok's
  partner integrations send it: segmentio/action-destinations `tiktok-audiences`,
  rudderlabs/rudder-transformer `tiktok_audience`). Ids are lowercase SHA-256 hex.
- at most `max_rows` (1,000) people per request: TikTok's page does not state a limit we could
  read; 1,000 is what partners batch on this endpoint (Tealium's TikTok Audiences connector:
  https://docs.tealium.com/server-side-connectors/tiktok-audiences-connector-setup-guide/).
- the Access-Token header: a missing one is answered code 40104, a wrong one 40105 (return
  codes: https://business-api.tiktok.com/portal/docs?id=1737172488964097).
- errors come as HTTP 200 with a non-zero code (same page: the return code, not the HTTP
  status, says what happened); rate limits as code 40100 without any Retry-After or
  X-RateLimit header (https://business-api.tiktok.com/portal/docs/rate-limits/v1.3).
- TikTok reports no per-person result for this endpoint: a person it refuses (`rejected`)
  fails the whole request with a parameter error, code 40002, and nothing of it is applied.
"""
from __future__ import annotations

import re
from itertools import count

from tests.fakes.http_server import FakeProvider, Reply, Request

PATH = "/open_api/v1.3/segment/mapping/"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGITS = re.compile(r"^\d+$")
ID_TYPES = {"EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "AAID_SHA256"}
_REQUEST_IDS = count(202611210100000001)


def envelope(code: int, message: str, data: object = None) -> Reply:
    return Reply(200, {"code": code, "message": message, "request_id": str(next(_REQUEST_IDS)),
                       "data": {} if data is None else data})


class FakeTikTok(FakeProvider):
    max_rows = 1_000

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.audiences: dict[str, set[str]] = {}  # audience id -> EMAIL hashes (PHONE when no e-mail)
        self.advertisers: dict[str, str] = {}  # audience id -> the advertiser it was first used with

    @staticmethod
    def throttled() -> Reply:
        return envelope(40100, "Too many requests. Please retry in some time.")

    @staticmethod
    def error(code: int, message: str) -> Reply:
        return envelope(code, message)

    def members(self, audience_id: str) -> set[str]:
        return set(self.audiences.get(audience_id, set()))

    @staticmethod
    def _identity(schema: list[str], row: list[dict]) -> str:
        values = {kind: entry.get("id") for kind, entry in zip(schema, row) if entry}
        return values.get("EMAIL_SHA256") or values.get("PHONE_SHA256") or ""

    def sent(self, request: Request) -> list[tuple[str, str]]:
        body = request.json()
        action = "add" if body.get("action") == "add" else "remove"
        return [(action, self._identity(body["id_schema"], row)) for row in body.get("batch_data", [])]

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != PATH:
            self.problems.append(f"unexpected {request.method} {request.path}")
            return Reply(404, {"message": "page not found"})
        token = request.headers.get("access-token")
        if not token:
            self.problems.append("no Access-Token header")
            return envelope(40104, "Access token is null, you should set it in http header with key Access-Token.")
        if token != self.token:
            self.problems.append("bad Access-Token")
            return envelope(40105, "Access token is incorrect or has been revoked.")
        if "authorization" in request.headers or "access_token" in request.query:
            self.problems.append("the token travels in the Access-Token header only")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return self.problem("the body must be JSON")
        body = request.json()
        advertisers, action, schema, data = (body.get("advertiser_ids"), body.get("action"), body.get("id_schema"),
                                             body.get("batch_data"))
        if not isinstance(advertisers, list) or len(advertisers) != 1 or not DIGITS.match(str(advertisers[0])):
            return self.problem(f"advertiser_ids must be one numeric id: {advertisers}")
        if action not in ("add", "delete"):
            return self.problem(f"action must be add or delete: {action}")
        if not isinstance(schema, list) or not schema or len(set(schema)) != len(schema) or not set(schema) <= ID_TYPES:
            return self.problem(f"bad id_schema {schema}")
        if not isinstance(data, list) or not data or len(data) > self.max_rows:
            return self.problem(f"1..{self.max_rows} people per request, got {len(data or [])}")
        audience = None
        for row in data:
            if not isinstance(row, list) or len(row) != len(schema) or not any(row):
                return self.problem(f"a person is a list of {len(schema)} entries in id_schema order: {row}")
            for entry in row:
                if not entry:
                    continue
                if set(entry) != {"id", "audience_ids"} or not HEX64.match(str(entry["id"])) \
                        or not isinstance(entry["audience_ids"], list) or len(entry["audience_ids"]) != 1 \
                        or not DIGITS.match(str(entry["audience_ids"][0])):
                    return self.problem(f"entry must be {{id: sha256 hex, audience_ids: [one id]}}: {entry}")
                if audience not in (None, entry["audience_ids"][0]):
                    return self.problem("one audience per request")
                audience = entry["audience_ids"][0]
        owner = self.advertisers.setdefault(audience, advertisers[0])
        if owner != advertisers[0]:
            return envelope(40001, f"No permission to operate audience {audience} of advertiser {advertisers[0]}.")
        refused = [self._identity(schema, row) for row in data if self._identity(schema, row) in self.rejected]
        if refused:
            return envelope(40002, "Parameter error: batch_data contains an invalid id.")
        members = self.audiences.setdefault(audience, set())
        for row in data:
            (members.add if action == "add" else members.discard)(self._identity(schema, row))
        return envelope(0, "OK")

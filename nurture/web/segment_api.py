"""The Segment-compatible tracking API of `nurture web`, so analytics.js, RudderStack and
Segment sources can send to Nurture unchanged (docs/ingest-segment.md):

- `POST /v1/track`     one track call: `event`, `properties`, `userId` / `anonymousId`;
- `POST /v1/identify`  one identify call: `traits` fill the contact's fields and attributes;
- `POST /v1/page`      one page call, stored as the event `page_viewed`;
- `POST /v1/alias`     `previousId` (an anonymous id) → `userId`: the visitor merged as by identify;
- `POST /v1/group`, `/v1/screen`: accepted and ignored;
- `POST /v1/batch`     `{"batch": [...]}` of those calls, each within the 32 KB of one call;
- `/v1/t`, `/v1/i`, `/v1/p`, `/v1/a`, `/v1/g`, `/v1/s`, `/v1/b`: the same, by the short paths
  analytics.js posts to; every `/v1/*` answers CORS preflights (`OPTIONS`) and allows any
  origin, for browser SDKs.

Authenticated by HTTP Basic with NURTURE_WRITE_KEY as user name and an empty password (or the
body's `writeKey`, as analytics.js may send it): 401 without or with a wrong key. Answers
`200 {"success": true}` as Segment does; a bad body is a 400 naming the field
(`batch[3].properties.price`), never a 500. In a batch the good messages are kept and the bad
ones named (Segment drops only the bad messages too). A trait that is well-formed but not valid
(a phone that is no number, an unknown time zone) is left out as `import contacts` leaves it
out, the rest of the message kept, and named in the answer's `warnings`. `messageId` is the
event's `event_id`: a re-sent message adds nothing. Events are written by nurture.ingest.write_events, the one
event writer; contacts are found, created and merged by nurture.identities.
"""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any, Callable, Optional

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import Response
from sqlalchemy import select, update

from nurture.double_opt_in import opt_ins_from_events
from nurture.event_schema import reserved_problem
from nurture.identities import Who, find_by_identity, known_contact, linked_owners, resolve
from nurture.ingest import (TrackResult, _identifier_problem, _show, _triage_core, parse_timestamp, text_problem,
                            value_problem, write_events)
from nurture.privacy.tombstones import erased_among, erased_phones
from nurture.settings import WebSettings
from nurture.store.tables import contact_t
from nurture.tokens import same_secret
from nurture.web.answers import JSONResponse

MAX_BATCH_BYTES = 500 * 1024  # Segment's limit for one batch
MAX_MESSAGE_BYTES = 32 * 1024  # Segment's limit for one call
MAX_ID_LENGTH = 200
SOURCE = "segment"
PAGE_EVENT = "page_viewed"
TYPES = ("track", "identify", "page", "alias")
IGNORED_TYPES = ("screen", "group")
# What a warning about a left-out trait adds to the trait's own problem (as `import contacts`).
LEFT_OUT = "left out, the rest of the message is kept"
# context.campaign key -> the UTM property it fills (Segment names utm_campaign `name`)
CAMPAIGN = {"source": "utm_source", "medium": "utm_medium", "name": "utm_campaign", "content": "utm_content",
            "term": "utm_term"}
# reserved traits -> the contact's own fields (the rest go to attributes)
TRAIT_FIELDS = {"firstName": "first_name", "first_name": "first_name", "lastName": "last_name",
                "last_name": "last_name", "timezone": "timezone", "language": "locale", "locale": "locale"}
IDENTIFIER_TRAITS = ("email", "phone")


class Bad(Exception):
    """A message the API refuses: [(field, message)]."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__(problems)
        self.problems = problems


def _fail(status: int, error: str, errors: Optional[list[dict]] = None, warnings: Optional[list[dict]] = None,
          **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": error}
    if errors is not None:
        body["errors"] = errors
    if warnings:
        body["warnings"] = warnings[:50]
    return JSONResponse(body, status_code=status, headers=headers or None)


def _success(warnings: list[dict]) -> JSONResponse:
    """Segment's answer; `warnings` names the traits left out (the SDKs read only the status)."""
    return JSONResponse({"success": True, "warnings": warnings[:50]} if warnings else {"success": True})


def _basic_user(request: Request) -> Optional[str]:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0]


def _authorized(request: Request, payload: Any, env: dict) -> bool:
    configured = WebSettings.from_env(env).write_key
    expected = configured.get_secret_value() if configured is not None else ""
    given = _basic_user(request)
    if given is None and isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        given = payload["writeKey"]
    return bool(expected) and given is not None and same_secret(given, expected)


# ---------------------------------------------------------------- reading one message


def _identifier(message: dict, key: str, problems: list) -> Optional[str]:
    value = message.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.append((key, f"must be a string, not {_show(value)}"))
        return None
    text = str(value).strip()
    problem = text_problem(text) or (f"longer than {MAX_ID_LENGTH} characters" if len(text) > MAX_ID_LENGTH else None)
    if problem:
        problems.append((key, problem))
        return None
    return text or None


def _object(message: dict, key: str, problems: list, where: str = "") -> dict:
    value = message.get(key)
    if value is None:
        return {}
    name = f"{where}{key}"
    if not isinstance(value, dict):
        problems.append((name, "must be a JSON object"))
        return {}
    problem = value_problem(value, tuple(name.split(".")))
    if problem:
        problems.append(problem)
        return {}
    return value


def _time(message: dict, key: str, problems: list) -> Optional[datetime]:
    if message.get(key) in (None, ""):
        return None
    try:
        return parse_timestamp(message[key])
    except ValueError as exc:
        problems.append((key, str(exc)))
        return None


def occurred_at(*, timestamp: Optional[datetime] = None, original_timestamp: Optional[datetime] = None,
                sent_at: Optional[datetime] = None, relay_received_at: Optional[datetime] = None,
                received_at: datetime) -> datetime:
    """When the event happened, by Segment's clock-skew rule (segment.com/docs/connections/spec/common/,
    "Timestamps"): `timestamp` is "calculated by Segment to correct client-device clock skew using
    the following formula: receivedAt - (sentAt - originalTimestamp)", and it is "the timestamp
    that is passed to downstream destinations"; "the sentAt and receivedAt timestamps are assumed
    to occur at the same time", so their difference is the device's skew.

    A message relayed by a Segment or RudderStack "Webhook / HTTP" destination carries all four:
    its `timestamp` is already corrected, and its `receivedAt` (`relay_received_at`) is when the
    relay received it — the moment the device sent it. Nurture's own `received_at` is later by
    the relay's delay (retries, queues), so it must not stand in for receivedAt there.

    - originalTimestamp and sentAt: the formula, with the message's receivedAt, else Nurture's;
    - else timestamp and sentAt, no receivedAt (analytics.js posting to Nurture directly sends
      `timestamp`): the formula on timestamp with Nurture's receipt;
    - else timestamp, else originalTimestamp, as sent (a receivedAt: corrected upstream already);
    - neither: the message's receivedAt, else Nurture's receipt.
    A corrected time outside the years 1900–2999 falls back to timestamp, else originalTimestamp."""
    receipt = relay_received_at or received_at
    if original_timestamp is not None and sent_at is not None:
        device_time = original_timestamp
    elif timestamp is not None and sent_at is not None and relay_received_at is None:
        device_time = timestamp
    else:
        return timestamp or original_timestamp or receipt
    try:
        corrected = receipt - (sent_at - device_time)
    except OverflowError:
        corrected = None
    return corrected if corrected is not None and 1900 <= corrected.year <= 2999 else timestamp or device_time


def read_message(message: Any, kind: Optional[str], received_at: datetime,
                 batch_sent_at: Optional[datetime] = None) -> Optional[dict]:
    """One Segment call as {type, who, event?, traits fields/attributes, warnings, …}; Bad naming
    its fields. `kind` None: the message's own `type` (a batch element). None for a type Nurture
    ignores. `warnings`: [(field, problem)] of the optional fields left out (import's rule)."""
    if not isinstance(message, dict):
        raise Bad([("message", "must be a JSON object")])
    problems: list[tuple[str, str]] = []
    if kind is None:
        kind = message.get("type")
        if kind not in TYPES + IGNORED_TYPES:
            raise Bad([("type", f"must be one of {', '.join(TYPES + IGNORED_TYPES)}, not {_show(kind)}")])
    if kind in IGNORED_TYPES:
        return None
    user_id = _identifier(message, "userId", problems)
    anonymous_id = _identifier(message, "previousId" if kind == "alias" else "anonymousId", problems)
    message_id = _identifier(message, "messageId", problems)
    context = _object(message, "context", problems)
    traits = _object(message, "traits", problems)
    context_traits = context.get("traits") if isinstance(context.get("traits"), dict) else {}
    properties = _object(message, "properties", problems)
    times = {key: _time(message, key, problems) for key in ("timestamp", "originalTimestamp", "sentAt", "receivedAt")}
    fields, attributes, sent_as = _trait_fields(kind, traits, context_traits) if kind != "alias" else ({}, {}, {})
    refused, left_out = _triage_core(fields, named=True)
    problems += [(sent_as.get(f, f"traits.{f}"), m) for f, m in refused]
    warnings = [(sent_as.get(f, f"traits.{f}"), f"{m} — {LEFT_OUT}") for f, m in left_out]
    email = fields.pop("email", None)
    if kind != "identify":  # a track's traits only name the person (the country read the phone)
        fields = {"phone": fields["phone"]} if "phone" in fields else {}
    if kind == "alias" and not (user_id and anonymous_id) and not problems:
        problems.append(("userId" if not user_id else "previousId", "required (an alias links previousId to userId)"))
    if not (user_id or anonymous_id) and not problems:
        problems.append(("userId", "userId or anonymousId is required"))
    read: dict[str, Any] = {"type": kind, "fields": fields, "attributes": attributes, "warnings": warnings,
                            "who": Who(external_id=user_id, anonymous_id=anonymous_id, email=email,
                                       phone=fields.get("phone"))}
    if kind in ("track", "page"):
        name = message.get("event") if kind == "track" else PAGE_EVENT
        if kind == "track":
            if name in (None, ""):
                problems.append(("event", "required"))
            else:
                problem = _identifier_problem(name) or reserved_problem(name)
                if problem:
                    problems.append(("event", problem))
        properties = dict(properties)
        # what the message adds to its properties, checked as the properties were: property -> (field, value)
        added: dict[str, tuple[str, Any]] = {}
        if kind == "page" and message.get("name") not in (None, "") and isinstance(message.get("name"), str):
            added["name"] = ("name", message["name"])
        campaign = context.get("campaign") if isinstance(context.get("campaign"), dict) else {}
        for key, utm in CAMPAIGN.items():
            if isinstance(campaign.get(key), str) and campaign[key].strip() and utm not in properties:
                added[utm] = (f"context.campaign.{key}", campaign[key])
        page = context.get("page") if isinstance(context.get("page"), dict) else {}
        if isinstance(page.get("url"), str) and "url" not in properties:
            added["url"] = ("context.page.url", page["url"])
        for key, (field, value) in added.items():
            problem = text_problem(value)
            if problem:
                problems.append((field, problem))
            elif key == "name":  # the page's own name: a `name` property names something else
                properties = {"name": value, **properties}
            else:
                properties[key] = value
        read.update(event_id=message_id or f"segment-{uuid.uuid4()}", name=str(name) if name else None,
                    properties=properties, occurred_at=occurred_at(
                        timestamp=times["timestamp"], original_timestamp=times["originalTimestamp"],
                        sent_at=times["sentAt"] or batch_sent_at, relay_received_at=times["receivedAt"],
                        received_at=received_at))
    if problems:
        raise Bad(problems)
    return read


def _trait_fields(kind: str, traits: dict, context_traits: dict) -> tuple[dict, dict, dict]:
    """(contact fields, attributes, field -> where it was sent) of a message's traits, not yet
    checked. Every message names the person by `email` and `phone` (in `traits`, else in
    `context.traits`, where analytics.js puts them on a track); an identify's own traits also
    fill the contact's fields (TRAIT_FIELDS, address.country) and attributes (the rest)."""
    fields: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    attributes: dict[str, Any] = {}
    for key in IDENTIFIER_TRAITS:
        for where, source in (("traits", traits), ("context.traits", context_traits)):
            if source.get(key) not in (None, ""):
                fields[key], sent_as[key] = source[key], f"{where}.{key}"
                break
    if kind == "identify":
        for key, value in traits.items():
            if value in (None, "") or key in IDENTIFIER_TRAITS:
                continue
            if key in TRAIT_FIELDS:
                fields[TRAIT_FIELDS[key]], sent_as[TRAIT_FIELDS[key]] = value, f"traits.{key}"
            elif key == "address" and isinstance(value, dict):
                if value.get("country") not in (None, ""):
                    fields["country"], sent_as["country"] = value["country"], "traits.address.country"
                rest = {k: v for k, v in value.items() if k != "country"}
                if rest:
                    attributes["address"] = rest
            else:
                attributes[key] = value
    elif "phone" in fields:  # a national number is read with the country of its address
        source = traits if sent_as["phone"] == "traits.phone" else context_traits
        address = source.get("address")
        if isinstance(address, dict) and address.get("country") not in (None, ""):
            where = sent_as["phone"].rpartition(".")[0]
            fields["country"], sent_as["country"] = address["country"], f"{where}.address.country"
    return fields, attributes, sent_as


def _size_problem(message: Any) -> Optional[str]:
    """Why a batch's message is over Segment's limit for one call ("32KB per event in the
    batch"), or None. Measured as its JSON without whitespace, in UTF-8: the parsed message
    re-serialized, as json.loads does not say where in the body each message began (4–6 ms for
    a full 500 KB batch of 500 messages, about twice its json.loads; `many` skips it for a body
    within 32 KB, which holds no message over it)."""
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:  # json.loads read it, but the encoder's stack is deeper: absurd anyway
        return "nested far too deep"
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        return f"over {MAX_MESSAGE_BYTES} bytes, Segment's limit for one message (in a batch too)"
    return None


# ---------------------------------------------------------------- writing


def apply_messages(conn: Any, messages: list[tuple[int, dict]], now: datetime) -> TrackResult:
    """Store read messages in the caller's transaction: contacts resolved (and merged) in order,
    identify traits written, track/page events written by write_events. Messages of erased
    people are dropped (counted in `erased`), as every ingest refuses them."""
    erased = erased_among(conn, {m["who"].email for _, m in messages if m["who"].email})
    # a message without an e-mail that would give a contact an erased person's number: refused too
    erased_numbers = erased_phones(conn, {m["who"].phone for _, m in messages
                                          if m["who"].phone and not m["who"].email})
    result = TrackResult()
    merged_into: dict[int, int] = {}  # anonymous contacts merged away by this request
    events = []
    # Repeat visitors: every identifier of the message already linked to one contact, which
    # `resolve` would return without writing anything — found for the whole request in one read.
    owners = linked_owners(conn, [m["who"] for _, m in messages])
    for line, m in messages:
        who = m["who"]
        if who.email in erased or (not who.email and who.phone in erased_numbers
                                   and known_contact(conn, who) is None):
            result.erased += 1
            continue
        if m["type"] == "alias" and find_by_identity(conn, "external_id", who.anonymous_id) is not None:
            continue  # previousId is a former userId: two known people are never merged (docs)
        pairs = who.identities()
        known = {owners.get(pair) for pair in pairs}
        if len(known) == 1 and None not in known:
            contact_id, merged = known.pop(), None
        else:
            contact_id, merged = resolve(conn, who, now)
            if contact_id is None:  # an erased person, known by another identifier
                result.erased += 1
                continue
            for pair in pairs:  # later messages of this request see what resolve linked
                owners[pair] = contact_id
        if merged is not None:
            merged_into = {old: (contact_id if new == merged else new) for old, new in merged_into.items()}
            merged_into[merged] = contact_id
            owners = {pair: (contact_id if owner == merged else owner) for pair, owner in owners.items()}
        if m["type"] == "identify":  # (a track's or page's traits only name the person)
            _write_traits(conn, contact_id, m["fields"], m["attributes"], now)
        if m["type"] in ("track", "page"):
            events.append({"event_id": m["event_id"], "email": None, "contact_id": contact_id, "name": m["name"],
                           "properties": m["properties"], "occurred_at": m["occurred_at"], "line": line})
    for e in events:  # an event of an anonymous contact a later message of this request merged away
        e["contact_id"] = merged_into.get(e["contact_id"], e["contact_id"])
    return write_events(conn, events, source=SOURCE, now=now, result=result)


def _write_traits(conn: Any, contact_id: int, fields: dict, attributes: dict, now: datetime) -> None:
    """An identify's traits: names, time zone, locale, country, attributes. Never the e-mail or
    the phone — resolve fills them only where the contact has none: a stranger holding the
    public write key must not move a contact's messages (and its SMS consent) to their number."""
    values: dict[str, Any] = {k: v for k, v in fields.items() if k not in ("email", "phone")}
    if attributes:
        current = conn.execute(select(contact_t.c.attributes).where(contact_t.c.id == contact_id)).scalar() or {}
        values["attributes"] = {**current, **attributes}
    if values:
        conn.execute(update(contact_t).where(contact_t.c.id == contact_id).values(**values, updated_at=now))


# ---------------------------------------------------------------- the routes


def _cors(response: Response) -> Response:
    """Browser SDKs post from the shop's own origin: any origin may send (the write key is
    public in every page anyway, as with Segment); no cookies are read or set."""
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, AnonymousId"
    response.headers["Access-Control-Max-Age"] = "86400"
    return response


def segment_routes(rt: Any, clock: Callable[[], datetime]) -> APIRouter:
    router = APIRouter()
    env = rt.env

    async def body_of(request: Request, limit: int) -> tuple[Any, int, Optional[Response]]:
        """(the parsed body, its size in bytes, the answer refusing it or None)."""
        raw = await request.body()
        if len(raw) > limit:
            return None, len(raw), _fail(413, f"request body over {limit} bytes")
        try:
            return json.loads(raw or b"null"), len(raw), None
        except RecursionError:
            return None, len(raw), _fail(400, "body is not valid JSON (nested far too deep)")
        except ValueError as exc:
            return None, len(raw), _fail(400, f"body is not valid JSON ({str(exc)[:200]})")

    def deliver_system_mail() -> None:
        from nurture.send.deliver import deliver
        from nurture.send.system_mail import SYSTEM_JOURNEY
        deliver(rt, clock(), SYSTEM_JOURNEY)

    def store_messages(request: Request, messages: list[tuple[int, dict]], now: datetime,
                       background: BackgroundTasks) -> TrackResult:
        with rt.store.engine.begin() as conn:
            result = apply_messages(conn, messages, now)
            opt_ins = opt_ins_from_events(conn, rt.project.policies, result.inserted_ids, now=now, source="web:/v1")
        if opt_ins.get("pending"):
            background.add_task(deliver_system_mail)
        instant = getattr(request.app.state, "instant", None)  # instant triggers (nurture.runtime.instant)
        if instant is not None and result.inserted_ids:
            instant.notify_events(result.inserted_ids)
        return result

    async def one(request: Request, background: BackgroundTasks, kind: str) -> Response:
        payload, _, refused = await body_of(request, MAX_MESSAGE_BYTES)
        if not _authorized(request, payload, env):
            return _fail(401, "missing or wrong write key (HTTP Basic: the write key as user name, empty password)",
                         **{"WWW-Authenticate": 'Basic realm="nurture"'})
        if refused is not None:
            return refused
        now = clock()
        try:
            message = read_message(payload, kind, now)
        except Bad as bad:
            errors = [{"field": f, "message": m} for f, m in bad.problems]
            return _fail(400, f"{errors[0]['field']}: {errors[0]['message']}", errors)
        if message is None:  # a group or screen call: accepted and ignored, as in a batch
            return JSONResponse({"success": True})
        store_messages(request, [(1, message)], now, background)
        return _success([{"field": f, "message": m} for f, m in message["warnings"]])

    # analytics.js posts to /v1/ + the type's first letter: /v1/t, /v1/i, /v1/p, /v1/a, /v1/g, /v1/s
    def single(kind: str) -> Callable[..., Any]:
        async def answer(request: Request, background: BackgroundTasks) -> Response:
            return _cors(await one(request, background, kind))
        answer.__name__ = kind
        return answer

    for kind in ("track", "identify", "page", "alias", "group", "screen"):
        for path in (f"/v1/{kind}", f"/v1/{kind[0]}"):
            router.add_api_route(path, single(kind), methods=["POST"])

    @router.options("/v1/{path:path}")
    def preflight(path: str) -> Response:
        return _cors(Response(status_code=204))

    @router.post("/v1/batch")
    @router.post("/v1/b")
    async def batch(request: Request, background: BackgroundTasks) -> Response:
        return _cors(await many(request, background))

    async def many(request: Request, background: BackgroundTasks) -> Response:
        payload, size, refused = await body_of(request, MAX_BATCH_BYTES)
        if not _authorized(request, payload, env):
            return _fail(401, "missing or wrong write key (HTTP Basic: the write key as user name, empty password)",
                         **{"WWW-Authenticate": 'Basic realm="nurture"'})
        if refused is not None:
            return refused
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            return _fail(400, "batch: required, a list of messages ({\"batch\": [...]})",
                         [{"field": "batch", "message": "required, a list of messages"}])
        now = clock()
        errors, warnings, messages = [], [], []
        batch_problems: list = []
        batch_sent_at = _time(payload, "sentAt", batch_problems)
        errors += [{"field": f, "message": m} for f, m in batch_problems]
        for i, element in enumerate(payload["batch"]):
            # Segment's limit for one call holds in a batch too (refused alone, as any bad message)
            problem = _size_problem(element) if size > MAX_MESSAGE_BYTES else None
            if problem:
                errors.append({"field": f"batch[{i}]", "message": problem})
                continue
            try:
                message = read_message(element, None, now, batch_sent_at)
            except Bad as bad:
                errors += [{"field": f"batch[{i}].{f}", "message": m} for f, m in bad.problems]
                continue
            if message is not None:
                messages.append((i + 1, message))
                warnings += [{"field": f"batch[{i}].{f}", "message": m} for f, m in message["warnings"]]
        if messages:
            store_messages(request, messages, now, background)
        if errors:
            return _fail(400, f"{errors[0]['field']}: {errors[0]['message']}", errors[:50], warnings)
        return _success(warnings)

    return router

"""The privacy endpoints of `nurture web` (included by nurture.web.app with one line):

- `POST /privacy/erase` — erase people (GDPR Art. 17) by e-mail or phone number:
  `Authorization: Bearer <NURTURE_PRIVACY_TOKEN>`, body `{"emails": ["…", …], "phones":
  ["+49…", …], "reason": "request"}` (one of `emails` / `phones` at least; `phones`: E.164, or
  national in NURTURE_DEFAULT_COUNTRY — a person Nurture knows only by phone; `reason`
  optional, a short label). The answer: `{"results": [{"request", "outcome", "erasure_id",
  "removed", "destinations", "pending", "erased_at", "error"}]}` in the order of `emails`, then
  `phones`, outcome `erased` | `already_erased` | `not_found` | `invalid` (a number several
  contacts share: `error` says so, nothing is erased for it). A missing or wrong token is 401,
  no token configured on the server 403; a body that is not JSON 400; a body of the wrong shape
  — not an object, neither list given, a list empty or over MAX_EMAILS entries together, an
  entry that is not an e-mail address (a phone number), an unknown key, a bad `reason` — 422
  `{"error", "field"}` naming the field (`emails[2]`, `phones[0]`), and nothing is erased.
  Never a 500 for bad input.
- `POST /webhooks/hubspot` — HubSpot's `contact.privacyDeletion` webhook: the contact HubSpot
  deleted is erased here too (actor `webhook:hubspot`). HubSpot's signature v3 is verified with
  the app's client secret (NURTURE_HUBSPOT_CLIENT_SECRET): base64 of the HMAC-SHA256 of
  method + URI + body + `X-HubSpot-Request-Timestamp`, compared with `X-HubSpot-Signature-v3`;
  the URI is the one HubSpot called — NURTURE_PUBLIC_URL + path + query (behind a proxy the
  server sees another one), with the URL-encoded characters HubSpot decodes decoded; a
  timestamp more than 5 minutes off is refused (a replay). HubSpot names the deleted contact by
  its record id (`objectId`): Nurture finds it among the records its HubSpot lists acknowledged
  and its handovers to HubSpot. The same endpoint takes HubSpot's deal subscriptions
  (`deal.creation`, `deal.propertyChange`): the deals named are pulled at once, through the
  same engine as `nurture crm pull` (nurture.crm.pull.pull_named: their contacts, events and
  lifecycle moves; the pull's cursor is not touched, so the hourly pull reads them again and
  adds nothing). Other subscription types are ignored. Answer 200
  `{"erased", "already_erased", "unknown", "ignored"}`, plus `"deals": {"named", "read",
  "events", "won", "failure"}` when the body named deals (`failure`: why they could not be
  pulled now — HubSpot unreachable, NURTURE_HUBSPOT_TOKEN unset — the hourly pull catches up);
  401 for a missing, stale or wrong signature, 403 when no client secret is configured,
  400/422 for a body that is not a list of events or an `objectId` that is not a record id.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections import Counter
from datetime import datetime
from typing import Any, Callable, Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from nurture.crm.pull import PullResult, pull_named
from nurture.crm.source import deal_source
from nurture.ingest import normalize_email
from nurture.ingest import normalize_phone
from nurture.privacy.erase import ErasureResult, check_reason, contacts_for_crm_record, erase_contacts, erase_people
from nurture.registry import IntegrationContext, IntegrationError
from nurture.settings import Settings, WebSettings
from nurture.tokens import same_secret
from nurture.web.answers import JSONResponse

# Read through WebSettings from the env mapping the app was created with (docs/settings.md).
PRIVACY_TOKEN_SETTING = "NURTURE_PRIVACY_TOKEN"
HUBSPOT_SECRET_SETTING = "NURTURE_HUBSPOT_CLIENT_SECRET"
MAX_EMAILS = 1000
MAX_SKEW_MS = 5 * 60 * 1000
PRIVACY_DELETION = "contact.privacyDeletion"
DEAL_CHANGES = ("deal.creation", "deal.propertyChange")
HUBSPOT = "hubspot"
# The URL-encoded characters HubSpot decodes in the request URI before it signs it (v3).
_HUBSPOT_DECODED = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
                    "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}
_ENCODED = re.compile("|".join(_HUBSPOT_DECODED), re.IGNORECASE)


def hubspot_request_uri(url: str) -> str:
    """The URI as HubSpot signs it: the listed percent-escapes decoded, any case."""
    return _ENCODED.sub(lambda m: _HUBSPOT_DECODED[m.group().upper()], url)


def hubspot_signature_v3(client_secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """base64(HMAC-SHA256(client secret, method + URI + body + timestamp)), UTF-8."""
    message = method.upper().encode() + hubspot_request_uri(uri).encode("utf-8") + body + timestamp.encode()
    return base64.b64encode(hmac.new(client_secret.encode("utf-8"), message, hashlib.sha256).digest()).decode()


def _problem(status: int, error: str, field: Optional[str] = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers or None)


def _parse_json(body: bytes) -> tuple[Any, Optional[JSONResponse]]:
    try:
        return json.loads(body or b"null"), None
    except RecursionError:
        return None, _problem(400, "body is not valid JSON (nested far too deep)", "body")
    except ValueError as exc:
        return None, _problem(400, f"body is not valid JSON ({str(exc)[:200]})", "body")


def _erase_request(payload: Any, default_country: Optional[str] = None
                   ) -> tuple[list[str], str, Optional[JSONResponse]]:
    """The addresses and numbers (e-mails first) and reason of a /privacy/erase body, or the 422
    that names what is wrong."""
    if not isinstance(payload, dict):
        return [], "", _problem(422, 'body must be a JSON object: {"emails": ["…"]} or {"phones": ["+…"]}', "body")
    unknown = sorted(set(payload) - {"emails", "phones", "reason"})
    if unknown:
        return [], "", _problem(422, f"unknown field '{unknown[0][:60]}' (known: emails, phones, reason)",
                                unknown[0][:60])
    if "emails" not in payload and "phones" not in payload:
        return [], "", _problem(422, "must be a non-empty list of e-mail addresses (or give phones)", "emails")
    named: list[str] = []
    for key, many, one in (("emails", "e-mail addresses", "an e-mail address"),
                           ("phones", "phone numbers", "a phone number")):
        if key not in payload:
            continue
        values = payload[key]
        if not isinstance(values, list) or not values:
            return [], "", _problem(422, f"must be a non-empty list of {many}", key)
        for i, value in enumerate(values):
            if not isinstance(value, str):
                return [], "", _problem(422, f"must be a string ({one})", f"{key}[{i}]")
            if "\x00" in value:
                return [], "", _problem(422, "contains a NUL character", f"{key}[{i}]")
            if key == "phones" and "@" in value:
                return [], "", _problem(422, "an e-mail address: give it in emails", f"{key}[{i}]")
            try:
                normalize_email(value) if key == "emails" else normalize_phone(value, default_country)
            except ValueError as exc:
                return [], "", _problem(422, f"not {one}: {exc}", f"{key}[{i}]")
        named += values
    if len(named) > MAX_EMAILS:
        return [], "", _problem(422, f"at most {MAX_EMAILS} addresses and numbers per request, got {len(named)}",
                                "phones" if "phones" in payload else "emails")
    reason = payload.get("reason", "request")
    if not isinstance(reason, str):
        return [], "", _problem(422, "must be a string", "reason")
    try:
        check_reason(reason)
    except ValueError as exc:
        return [], "", _problem(422, str(exc), "reason")
    return named, reason, None


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _authorized(request: Request, expected: str) -> Optional[JSONResponse]:
    if not expected:
        return _problem(403, f"this endpoint is disabled: {PRIVACY_TOKEN_SETTING} is not set on the server")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _problem(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
    if not same_secret(given.strip(), expected):
        return _problem(401, "wrong token", **{"WWW-Authenticate": "Bearer"})
    return None


def privacy_routes(rt: Any, clock: Callable[[], datetime]) -> APIRouter:
    """The router over the app's runtime (store, project, env, data directory) and clock."""
    router = APIRouter()
    env = rt.env

    def context() -> IntegrationContext:
        return IntegrationContext(rt.project.root, rt.data_dir, dict(env))

    @router.post("/privacy/erase")
    async def privacy_erase(request: Request) -> Response:
        refused = _authorized(request, _secret(WebSettings.from_env(env).privacy_token))
        if refused is not None:
            return refused
        payload, problem = _parse_json(await request.body())
        if problem is not None:
            return problem
        country = Settings.from_env(env).default_country
        named, reason, problem = _erase_request(payload, country)
        if problem is not None:
            return problem
        results: list[ErasureResult] = await run_in_threadpool(
            erase_people, rt.store, rt.project, named, context=context(), actor="web", reason=reason, now=clock(),
            default_country=country)
        return JSONResponse({"results": [r.as_dict() for r in results]})

    @router.post("/webhooks/hubspot")
    async def hubspot_webhook(request: Request) -> Response:
        secret = _secret(WebSettings.from_env(env).hubspot_client_secret)
        if not secret:
            return _problem(403, f"this endpoint is disabled: {HUBSPOT_SECRET_SETTING} is not set on the server")
        signature = request.headers.get("x-hubspot-signature-v3")
        timestamp = request.headers.get("x-hubspot-request-timestamp", "").strip()
        if not signature or not timestamp:
            return _problem(401, "missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp")
        # ASCII digits, and few of them: "²" is a digit to str.isdigit and no number to int(),
        # and int() refuses 4,300 digits or more (both were a 500, before the signature check)
        if (not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16
                or abs(clock().timestamp() * 1000 - int(timestamp)) > MAX_SKEW_MS):
            return _problem(401, "X-HubSpot-Request-Timestamp is more than 5 minutes off (a replayed request?)")
        body = await request.body()
        uri = rt.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not same_secret(signature.strip(), hubspot_signature_v3(secret, request.method, uri, body, timestamp)):
            return _problem(401, "X-HubSpot-Signature-v3 does not match")
        payload, problem = _parse_json(body)
        if problem is not None:
            return problem
        events = [payload] if isinstance(payload, dict) else payload
        if not isinstance(events, list):
            return _problem(422, "body must be a JSON array of events", "body")
        counts: Counter = Counter()
        requests: list[tuple[str, int]] = []
        deals: list[str] = []
        for i, event in enumerate(events):
            kind = event.get("subscriptionType") if isinstance(event, dict) else None
            if kind not in (PRIVACY_DELETION, *DEAL_CHANGES):
                counts["ignored"] += 1
                continue
            record = event.get("objectId")
            text = str(record).strip() if isinstance(record, (int, str)) and not isinstance(record, bool) else ""
            if not (text.isascii() and text.isdigit()) or len(text) > 20:
                return _problem(422, "objectId must be a HubSpot record id", f"[{i}].objectId")
            if kind in DEAL_CHANGES:
                deals.append(text)
                continue
            found = await run_in_threadpool(contacts_for_crm_record, rt.store, HUBSPOT, text)
            if not found:
                counts["unknown"] += 1
            requests.extend((f"{HUBSPOT} record {text}", cid) for cid in found)
        if requests:
            results = await run_in_threadpool(
                erase_contacts, rt.store, rt.project, requests, context=context(), actor=f"webhook:{HUBSPOT}",
                reason="hubspot_privacy_deletion", now=clock(), gone_from={HUBSPOT})
            for result in {id(r): r for r in results}.values():
                counts[result.outcome] += 1
        answer: dict[str, Any] = {key: counts[key] for key in ("erased", "already_erased", "unknown", "ignored")}
        if deals:
            answer["deals"] = await run_in_threadpool(pull_now, list(dict.fromkeys(deals)))
        return JSONResponse(answer)

    def pull_now(deal_ids: list[str]) -> dict:
        """Pull the deals a webhook named; a failure is reported, never raised (the hourly pull
        reads them anyway)."""
        try:
            source = deal_source(HUBSPOT, context())
        except IntegrationError as exc:
            return {"named": len(deal_ids), "read": 0, "events": 0, "won": 0, "failure": str(exc)}
        try:
            result: PullResult = pull_named(rt.store, source, deal_ids, now=clock(),
                                            currency=rt.project.policies.currency)
        finally:
            source.close()
        return {"named": len(deal_ids), "read": result.deals.read, "events": result.deals.events,
                "won": result.deals.won, "failure": result.failure}

    return router

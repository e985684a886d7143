"""The recipient pages and webhooks as a FastAPI app (served by `nurture web`).

Routes:
- `GET  /u/{token}`              preference center (+ an unsubscribe button), no JavaScript;
- `POST /u/{token}`              RFC 8058 one-click unsubscribe: 200, no redirect, no cookie;
- `POST /u/{token}/preferences`  save the preference-center form;
- `GET  /confirm/{token}`        double opt-in: the confirmation page (changes nothing);
- `POST /confirm/{token}`        double opt-in confirmation (the page's button);
- `POST /events`                 tracking webhook (Bearer NURTURE_INGEST_TOKEN), as `nurture track`:
                                 an event object, a list of them or `{"events": [...]}`; answers
                                 `{"inserted", "duplicates", "opt_ins", "errors"}`, each error
                                 `{"record": 1-based position, "field", "message"}` — 200 when at
                                 least one event was stored or already known (the bad ones are
                                 listed and skipped), 422 when none was;
- `POST /webhooks/twilio`        inbound STOP/START and status callbacks (X-Twilio-Signature);
- `POST /webhooks/bounces`       generic bounce/complaint JSON (Bearer NURTURE_WEBHOOK_TOKEN,
                                 or NURTURE_INGEST_TOKEN when that is unset); answers
                                 `{"applied", "errors"}` (+ `"duplicates"` when a replay stored
                                 nothing new) — 200 when at least one event was good, 422 when none;
- `POST /privacy/erase`, `POST /webhooks/hubspot`   erasure (GDPR Art. 17): see nurture.web.privacy;
- `POST /v1/track`, `/v1/identify`, `/v1/page`, `/v1/batch`  Segment-compatible tracking API (HTTP
                                 Basic, NURTURE_WRITE_KEY): see nurture.web.segment_api;
- `GET  /healthz`.

Instant triggers: the journeys an ingested event triggers run within a second in a background
thread (nurture.runtime.instant; NURTURE_INSTANT=0 turns it off) — the answer does not wait.

The project's files are followed, not read once (nurture.spec.live_project): an edited journey,
template, policies or segments file is loaded again before the next request or instant run
that comes after the change. Files with errors are logged (`path:line:col: message`); the
journeys they concern do not run here, and the pages and event endpoints keep the last valid
policies — an event is stored whatever the files say.

Tokens are verified with NURTURE_SECRET_KEY; a tampered or expired one gets a 400 page and
changes nothing. Bodies over NURTURE_WEB_MAX_BODY bytes (default 1 MiB) get 413, bodies that
are not JSON (or nest absurdly deep) 400. Missing credentials get 401, wrong ones 403. Secrets
are never echoed. Bad input is a 4xx naming the event and field, never a 500.
"""
from __future__ import annotations

import email.policy
import json
import logging
import threading
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from email.parser import BytesParser
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl

import anyio
from fastapi import BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import SecretStr
from starlette.requests import ClientDisconnect

from nurture.consent_ledger import Proof, proof_of
from nurture.double_opt_in import confirm_opt_in, opt_ins_from_events
from nurture.ingest import track_records
from nurture.runtime.context import Runtime
from nurture.runtime.instant import InstantTriggers
from nurture.send.system_mail import SYSTEM_JOURNEY
from nurture.settings import Settings, WebSettings
from nurture.spec.live_project import LiveProject
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.tokens import same_secret, verify_token
from nurture.web import pages
from nurture.web.answers import JSONResponse
from nurture.web.preferences import (CONFIRMATION_SENT, TEXT_SENT, apply_preferences, contact_locale,
                                     load_preferences, unsubscribe)
from nurture.web.meta_leads import meta_leads_routes
from nurture.web.privacy import privacy_routes
from nurture.web.segment_api import segment_routes
from nurture.web.webhooks import (apply_bounces, bounce_events, twilio_inbound, twilio_signature_valid,
                                  twilio_status)

log = logging.getLogger("nurture.web")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, by Content-Length
    up front and by counting when the body is streamed without one."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and (len(value) > 18 or int(value) > self.limit):
                await JSONResponse({"error": f"request body over {self.limit} bytes"}, status_code=413)(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


class FollowProject:
    """ASGI middleware: before a request, follow the project's files (`follow`: a fingerprint
    check, a load only after a change), off the event loop. A failure is logged and the request
    served with the project as it was: an event must never be refused for a file's sake."""

    def __init__(self, app: Any, follow: Callable[[], None]):
        self.app = app
        self.follow = follow

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("path") != "/healthz":
            try:
                await anyio.to_thread.run_sync(self.follow)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not read the project's files again (%s: %s); going on with them as they were",
                            type(exc).__name__, exc)
        await self.app(scope, receive, send)


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """A form body's fields: application/x-www-form-urlencoded, or multipart/form-data — RFC
    8058 §3.1 says a one-click unsubscribe POST SHOULD be multipart (urlencoded is the MAY).
    Multipart is read with the standard library's MIME parser (the body is already bounded by
    NURTURE_WEB_MAX_BODY); file parts are ignored."""
    if not content_type.lower().startswith("multipart/form-data"):
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True) or b""
            try:
                fields[name] = payload.decode(part.get_content_charset() or "utf-8", "replace")
            except LookupError:  # a charset no codec has: as UTF-8 (a one-click unsubscribe still counts)
                fields[name] = payload.decode("utf-8", "replace")
    return fields

def _bearer(request: Request, token: Optional[SecretStr]) -> None:
    expected = token.get_secret_value() if token is not None else ""
    if not expected:
        raise HTTPException(403, "this endpoint is disabled: no token is configured on the server")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not same_secret(given.strip(), expected):
        raise HTTPException(403, "wrong token")


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body or b"null")
    except RecursionError:  # [[[[… 50,000 deep: the parser gives up, the request is simply bad
        raise HTTPException(400, "body is not valid JSON (nested far too deep)") from None
    except ValueError as exc:
        raise HTTPException(400, f"body is not valid JSON ({str(exc)[:200]})") from None


def _event_list(payload: Any) -> list:
    """The events of a /events body; an element that is not an object is reported by track_records
    as that record's error, so the good events next to it are kept."""
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        payload = payload["events"]
    records = payload if isinstance(payload, list) else [payload] if isinstance(payload, dict) else []
    if not records:
        raise HTTPException(400, "body must be an event object, a list of them, or {\"events\": [...]}")
    return records


def _form_problem(params: list[tuple[str, str]]) -> Optional[str]:
    """PostgreSQL refuses NUL in text: a form value holding one would be a 500 further down."""
    return next((f"parameter {name!r} contains a NUL character" for name, value in params
                 if "\x00" in name or "\x00" in value), None)


def create_app(store: Store, project: ProjectSpec, env: dict[str, str],
               clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> FastAPI:
    rt = Runtime(store, project, env=env)
    secret = rt.secret_key
    public_url = rt.public_url
    # The project's files are followed (nurture.spec.live_project): the routes read `rt.project`
    # at each request, the last one whose policies.yaml is valid; the instant worker runs the
    # files as they are. `FollowProject` checks them before each request.
    live = LiveProject(project)
    swapping = threading.Lock()

    def follow_files() -> None:
        live.refresh()
        with swapping:
            if rt.project is not live.usable:
                rt.use_project(live.usable)

    # Instant triggers (nurture.runtime.instant): every ingest endpoint hands what it stored to
    # `app.state.instant.notify_events(event_ids)` (or `.notify(event_names)`) after its commit;
    # the worker thread runs with the app's lifespan, when NURTURE_INSTANT is on.
    instant = InstantTriggers(Runtime(store, project, env=env), clock, live=live)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if WebSettings.from_env(env).instant:
            instant.start()
        try:
            yield
        finally:
            instant.stop()

    app = FastAPI(title="Nurture recipient pages", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.runtime = rt
    app.state.instant = instant

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """A client that went away in the middle of its body (a phone losing its connection, a
        tab closed during a sendBeacon): nothing was read, so nothing was stored, and nobody is
        there to answer — not an error of the server (it logged a 60-line traceback each time)."""
        log.debug("%s %s: the client went away before its body was read", request.method, request.url.path)
        return Response(status_code=400)

    def proof_from(request: Request) -> Proof:
        """The proof of a consent given here: the client's address and browser."""
        return proof_of(request.client.host if request.client else None, request.headers.get("user-agent"))

    def language(locale: Optional[str] = None) -> pages.PageLanguage:
        """A page's language: its contact's message locale (None: the policies', else English)."""
        return pages.page_language(rt.templates.localizer, locale)

    def bad_link(text: str, locale: Optional[str] = None) -> HTMLResponse:
        return HTMLResponse(pages.message_page("This link does not work", text, problem=True,
                                               language=language(locale)), status_code=400)

    def claims_or_none(token: str, action: str):
        return verify_token(secret, token, action)

    def deliver_system_mail() -> None:
        from nurture.send.deliver import deliver
        deliver(rt, clock(), SYSTEM_JOURNEY)

    # ------------------------------------------------------------ unsubscribe + preferences
    @app.get("/u/{token}", response_class=HTMLResponse)
    def preference_center(token: str) -> Response:
        claims = claims_or_none(token, "unsubscribe")
        if claims is None:
            return bad_link("The link is damaged or has expired. Use the link in a newer e-mail from us.")
        with store.reading() as conn:
            prefs = load_preferences(conn, rt.project, claims.contact_id)
        if prefs is None:
            return bad_link("We have no record of this address any more.")
        return HTMLResponse(pages.preferences_page(prefs, base_url=public_url, token=token, channel=claims.channel,
                                                   language=language(prefs.locale)))

    @app.post("/u/{token}", response_class=HTMLResponse)
    async def one_click_unsubscribe(token: str, request: Request) -> Response:
        claims = claims_or_none(token, "unsubscribe")
        if claims is None:
            return bad_link("The link is damaged or has expired; nothing was changed.")
        form = form_fields(request.headers.get("content-type", ""), await request.body())
        source = "list-unsubscribe:one-click" if form.get("List-Unsubscribe") == "One-Click" else "web:unsubscribe"
        with store.engine.begin() as conn:
            unsubscribe(conn, claims.contact_id, claims.channel, source=source, now=clock(), policy_version=rt.project.policies.version,
                        proof=proof_from(request))
            prefs = load_preferences(conn, rt.project, claims.contact_id)
        if prefs is None:
            return bad_link("We have no record of this address any more.")
        notice = pages.UNSUBSCRIBED.get(claims.channel, pages.UNSUBSCRIBED["email"])
        return HTMLResponse(pages.preferences_page(prefs, base_url=public_url, token=token, channel=claims.channel,
                                                   notices=[notice], language=language(prefs.locale)))

    @app.post("/u/{token}/preferences", response_class=HTMLResponse)
    async def save_preferences(token: str, request: Request, background: BackgroundTasks) -> Response:
        claims = claims_or_none(token, "unsubscribe")
        if claims is None:
            return bad_link("The link is damaged or has expired; nothing was changed.")
        pairs = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        channels = {v for k, v in pairs if k == "channel"}
        topics = {v for k, v in pairs if k == "topic"}
        with store.engine.begin() as conn:
            changes = apply_preferences(conn, rt.project, claims.contact_id, channels, topics,
                                        source="web:preference_center", now=clock(), proof=proof_from(request),
                                        link_channel=claims.channel)
            prefs = load_preferences(conn, rt.project, claims.contact_id)
        if prefs is None:
            return bad_link("We have no record of this address any more.")
        notices = ["Your preferences are saved." if changes else "Nothing changed; your preferences are as before."]
        if CONFIRMATION_SENT in changes or TEXT_SENT in changes:  # asked for on a link sent elsewhere
            background.add_task(deliver_system_mail)
        if CONFIRMATION_SENT in changes:
            notices.append("To subscribe your e-mail address, follow the link in the e-mail we are sending to it.")
        if TEXT_SENT in changes:
            notices.append("To get our texts, reply START to the text we are sending to your phone.")
        return HTMLResponse(pages.preferences_page(prefs, base_url=public_url, token=token, channel=claims.channel,
                                                   notices=notices, language=language(prefs.locale)))

    # ------------------------------------------------------------ double opt-in
    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm_page(token: str) -> Response:
        """Opening the link changes nothing (mail scanners open links, and their address and
        browser are no proof of anyone's consent): the page's button confirms, by POST."""
        claims = claims_or_none(token, "confirm")
        if claims is None:
            return bad_link("The confirmation link is damaged or has expired. Sign up again to get a new one.")
        with store.reading() as conn:
            locale = contact_locale(conn, claims.contact_id)
        return HTMLResponse(pages.confirm_page(base_url=public_url, token=token, channel=claims.channel,
                                               language=language(locale)))

    @app.post("/confirm/{token}", response_class=HTMLResponse)
    def confirm(token: str, request: Request) -> Response:
        claims = claims_or_none(token, "confirm")
        if claims is None:
            return bad_link("The confirmation link is damaged or has expired. Sign up again to get a new one.")
        with store.engine.begin() as conn:
            outcome = confirm_opt_in(conn, rt.project.policies, claims, now=clock(), proof=proof_from(request))
            locale = contact_locale(conn, claims.contact_id)
        if outcome == "confirmed":
            return HTMLResponse(pages.message_page("Subscription confirmed", "Thank you: your subscription is confirmed.",
                                                   language=language(locale)))
        if outcome == "already_confirmed":
            return HTMLResponse(pages.message_page("Already confirmed", "Your subscription was already confirmed.",
                                                   language=language(locale)))
        if outcome == "expired":
            return bad_link("This confirmation request has expired. Sign up again to get a new link.", locale)
        return bad_link("There is no subscription waiting for confirmation for this address; nothing was changed.",
                        locale)

    # ------------------------------------------------------------ tracking webhook
    @app.post("/events")
    async def events(request: Request, background: BackgroundTasks) -> Response:
        _bearer(request, WebSettings.from_env(env).ingest_token)
        records = _event_list(await _json(request))
        now = clock()
        result = track_records(store, list(enumerate(records, 1)), source="request", now=now)
        with store.engine.begin() as conn:
            opt_ins = opt_ins_from_events(conn, rt.project.policies, result.inserted_ids, now=now)
        # after the consent the events carry; the answer does not wait for the send
        instant.notify_events(result.inserted_ids)
        if opt_ins.get("pending"):
            background.add_task(deliver_system_mail)
        body = {"inserted": result.inserted, "duplicates": result.duplicates, "opt_ins": dict(opt_ins),
                "errors": [{"record": e.line, "field": e.field, "message": e.message} for e in result.errors]}
        status = 422 if result.errors and not (result.inserted or result.duplicates) else 200
        return JSONResponse(body, status_code=status)

    # ------------------------------------------------------------ provider webhooks
    @app.post("/webhooks/twilio")
    async def twilio(request: Request) -> Response:
        configured = Settings.from_env(env).twilio_auth_token
        auth_token = configured.get_secret_value() if configured is not None else ""
        if not auth_token:
            raise HTTPException(403, "this endpoint is disabled: NURTURE_TWILIO_AUTH_TOKEN is not set")
        signature = request.headers.get("x-twilio-signature")
        if not signature:
            raise HTTPException(401, "missing X-Twilio-Signature")
        params = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        url = public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not twilio_signature_valid(auth_token, url, params, signature):
            raise HTTPException(403, "X-Twilio-Signature does not match")
        problem = _form_problem(params)
        if problem:
            raise HTTPException(400, problem)
        fields = dict(params)
        with store.engine.begin() as conn:
            if "Body" in fields and (fields.get("SmsStatus") or fields.get("MessageStatus") or "received") == "received":
                twilio_inbound(conn, fields, now=clock(), policy_version=rt.project.policies.version,
                               pending_expires=rt.project.policies.pending_consent_expires)
            else:
                twilio_status(conn, fields, now=clock())
        return Response(EMPTY_TWIML, media_type="text/xml")

    @app.post("/webhooks/bounces")
    async def bounces(request: Request) -> Response:
        _bearer(request, WebSettings.from_env(env).bounce_token)
        events_, errors = bounce_events(await _json(request))
        with store.engine.begin() as conn:
            outcome = apply_bounces(conn, events_, now=clock(), policy_version=rt.project.policies.version)
        body: dict[str, Any] = {"applied": dict(outcome.applied), "errors": errors}
        if outcome.duplicates:
            body["duplicates"] = dict(outcome.duplicates)
        return JSONResponse(body, status_code=422 if errors and not events_ else 200)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    app.include_router(privacy_routes(rt, clock))  # POST /privacy/erase, POST /webhooks/hubspot
    app.include_router(meta_leads_routes(rt, clock))  # GET|POST /webhooks/meta/leads (Meta Lead Ads)
    app.include_router(segment_routes(rt, clock))  # POST /v1/track, /v1/identify, /v1/page, /v1/batch
    app.add_middleware(BodyLimit, limit=WebSettings.from_env(env).web_max_body)
    app.add_middleware(FollowProject, follow=follow_files)
    return app

"""Meta Lead Ads webhooks of `nurture web` (included by nurture.web.app with one line):

- `GET /webhooks/meta/leads` — Meta's subscription check
  (https://developers.facebook.com/docs/graph-api/webhooks/getting-started/): `hub.mode=subscribe`,
  `hub.verify_token` (compared in constant time with NURTURE_META_VERIFY_TOKEN) and
  `hub.challenge`, echoed as plain text. A wrong token or mode is 403, no token configured 403,
  a missing or unprintable challenge 400.
- `POST /webhooks/meta/leads` — `leadgen` notifications
  (https://developers.facebook.com/docs/marketing-api/guides/lead-ads/retrieving/), body
  `{"object": "page", "entry": [{"id", "time", "changes": [{"field": "leadgen", "value":
  {"leadgen_id", "page_id", "form_id", "adgroup_id", "ad_id", "created_time"}}]}]}`, signed
  `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the app secret>`
  (NURTURE_META_APP_SECRET; compared in constant time). No secret configured: 403; no signature
  401; a wrong one 403 — and nothing is read or stored. A body that is not JSON or not of that
  shape is 400 `{"error", "field"}` naming the field (`entry[0].changes[1].value.leadgen_id`);
  never a 500. Other objects and fields are counted as `ignored`.

Each lead named is read from the Graph API (NURTURE_META_ACCESS_TOKEN, retried on throttling, 5xx
and network errors) by the reader of the registered `meta` integration (integrations.meta:
`MetaDestination.lead_reader`; the engine imports no integration) — except one already stored (its event id is
known: a redelivery costs no Graph call) — and stored in one transaction (`store_lead`):

- the contact, by e-mail (`email`, else `work_email`), else — a phone-only lead — by its phone number
  (`phone_number`, E.164: the contact known by it, or a new phone-only one that SMS and WhatsApp
  reach; a lead with neither is `skipped`): `first_name`
  / `last_name` (or `full_name` split at its last space), `phone_number` (E.164; one that does not
  parse is kept as an attribute), `country` (a two-letter code) on the contact; every other answer
  an attribute under its question's name (policies.yaml `keep_attributes` applies), plus
  `meta_lead_id` (always: the offline conversions send it back as Meta's lead id);
- the consent questions policies.yaml maps (`lead_forms: {consent: {email: [email_opt_in], sms:
  [sms_opt_in]}}`): a yes / true / checked answer asks for that channel's marketing consent with
  source `meta_lead_ads:<form_id>` and the policies' version, through
  nurture.double_opt_in.request_opt_in — granted, or pending with its confirmation request (an
  e-mail; a "Reply START" text to the lead's number) when `double_opt_in` covers the channel
  (Meta's form is no confirmation of the address); asked for already and still pending: nothing
  more; any other answer, or none, records nothing (an unticked box revokes nothing);
- a `form_submit` event `{form_id, form (the form's name from policies.yaml `lead_forms: {forms:
  {"<form_id>": whitepaper}}`; none for a form not named there), ad_id, lead_id, source:
  meta_lead_ads, utm_source: facebook | instagram, utm_medium: paid_social (social for an organic
  lead), utm_campaign: the campaign's name or the form id, utm_content: the ad's name or id}`
  through the one ingest path (nurture.ingest.track_in), with event id `meta_lead:<leadgen_id>` —
  a redelivered webhook adds nothing — so the lead source is recorded, and the instant triggers
  (`app.state.instant`) run the journeys it starts at once.

An erased person's lead is refused (`erased`, nothing stored) — by its e-mail address, and a
phone-only lead by its number (erasure tombstones the person's numbers too) unless a contact
not erased is known by it. The answer is `{"leads", "stored",
"duplicates", "erased", "ignored", "skipped": [{"lead_id", "reason"}], "failed": [...]}`: 200 —
unless a lead could not be read from Meta (Graph down after the retries, the access token unset
or refused): then 503 after the others are stored, so that Meta delivers the notification again
(it retries failed deliveries for up to 36 hours) and the redelivery adds only what is missing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from nurture.consent_ledger import record_consent
from nurture.double_opt_in import request_opt_in
from nurture.identities import Who, find_by_identity, resolve
from nurture.ingest import (TrackResult, clean_name, normalize_email, normalize_phone, parse_timestamp,
                            refuse_erased, text_problem, track_in, value_problem, write_events)
from nurture.privacy.tombstones import erased_phones
from nurture.registry import IntegrationContext, IntegrationError, lookup
from nurture.settings import WebSettings
from nurture.spec.models import Policies
from nurture.store.tables import contact_t, event_t
from nurture.tokens import same_secret
from nurture.web.answers import JSONResponse

PATH = "/webhooks/meta/leads"
SOURCE = "meta_lead_ads"
EVENT = "form_submit"
VERIFY_SETTING = "NURTURE_META_VERIFY_TOKEN"
SECRET_SETTING = "NURTURE_META_APP_SECRET"
YES = {"yes", "true", "1", "y", "checked", "on", "agree", "agreed", "i agree", "accept", "accepted"}
# Meta's standard questions that are contact fields; every other answer is an attribute.
EMAIL_FIELDS = ("email", "work_email")
PHONE_FIELDS = ("phone_number", "work_phone_number", "phone")
NAME_FIELDS = ("full_name", "first_name", "last_name")
MAX_CHALLENGE = 256
MAX_ID = 20
MAX_VALUE = 1000
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


def meta_signature(app_secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends: `sha256=` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _problem(status: int, error: str, field_: Optional[str] = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if field_ is not None:
        body["field"] = field_
    return JSONResponse(body, status_code=status)


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _graph_id(value: Any) -> Optional[str]:
    """A Graph object id (digits, as a string or a number), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    text = str(value).strip()
    return text if text.isascii() and text.isdigit() and len(text) <= MAX_ID else None


@dataclass
class Notification:
    lead_id: str
    form_id: Optional[str] = None
    ad_id: Optional[str] = None
    created_time: Any = None


def notifications(payload: Any) -> tuple[list[Notification], int, Optional[JSONResponse]]:
    """The leads a webhook body names, how many changes it ignored, or the 400 naming the field."""
    if not isinstance(payload, dict):
        return [], 0, _problem(400, 'body must be a JSON object: {"object": "page", "entry": [...]}', "body")
    entries = payload.get("entry")
    if not isinstance(entries, list):
        return [], 0, _problem(400, "must be a list of entries", "entry")
    if payload.get("object") != "page":
        return [], len(entries), None
    found: list[Notification] = []
    ignored = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return [], 0, _problem(400, "must be an object", f"entry[{i}]")
        changes = entry.get("changes", [])
        if not isinstance(changes, list):
            return [], 0, _problem(400, "must be a list of changes", f"entry[{i}].changes")
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            if not isinstance(change, dict):
                return [], 0, _problem(400, "must be an object", where)
            if change.get("field") != "leadgen":
                ignored += 1
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                return [], 0, _problem(400, "must be an object", f"{where}.value")
            lead_id = _graph_id(value.get("leadgen_id"))
            if lead_id is None:
                return [], 0, _problem(400, "must be a lead id (digits)", f"{where}.value.leadgen_id")
            hints = {}
            for key in ("form_id", "ad_id"):
                if value.get(key) not in (None, ""):
                    hints[key] = _graph_id(value[key])
                    if hints[key] is None:
                        return [], 0, _problem(400, "must be a Graph id (digits)", f"{where}.value.{key}")
            found.append(Notification(lead_id, created_time=value.get("created_time"), **hints))
    return list({n.lead_id: n for n in found}.values()), ignored, None


# ---------------------------------------------------------------- a lead → contact, consent, event


@dataclass
class LeadOutcome:
    status: str  # stored | duplicate | erased | skipped
    reason: str = ""
    event_ids: list[str] = field(default_factory=list)
    opt_ins: dict[str, str] = field(default_factory=dict)  # channel -> request_opt_in's outcome


def _answers(lead: dict) -> dict[str, list[str]]:
    """field_data as name -> its values (text), names lower-cased."""
    out: dict[str, list[str]] = {}
    for item in lead.get("field_data") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        values = item.get("values")
        values = values if isinstance(values, list) else [values]
        texts = [" ".join(str(v).split())[:MAX_VALUE] for v in values if isinstance(v, (str, int, float))
                 and not isinstance(v, bool)]
        name = item["name"].strip().lower()[:100]
        if name and not text_problem(name) and not any(text_problem(t) for t in texts):
            out[name] = [t for t in texts if t]
    return out


def _first(answers: dict[str, list[str]], names: tuple[str, ...]) -> Optional[str]:
    return next((answers[n][0] for n in names if answers.get(n)), None)


def _contact_fields(answers: dict[str, list[str]], consent_questions: set[str],
                    default_country: Optional[str] = None) -> tuple[dict, dict]:
    """(core fields without email, attributes) of a lead's answers; a phone number without a
    country code is read in the form's `country`, else in `default_country`."""
    fields: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    first, last = clean_name(_first(answers, ("first_name",))), clean_name(_first(answers, ("last_name",)))
    full = clean_name(_first(answers, ("full_name",)))
    if full and not (first or last):
        first, _, last = full.rpartition(" ") if " " in full else (full, "", "")
        first, last = clean_name(first), clean_name(last)
    fields.update({k: v for k, v in (("first_name", first), ("last_name", last)) if v})
    country = _first(answers, ("country",))
    if country and re.fullmatch(r"[A-Za-z]{2}", country.strip()):
        fields["country"] = country.strip().upper()
    elif country:
        attributes["country"] = country
    phone = _first(answers, PHONE_FIELDS)
    if phone:
        try:
            fields["phone"] = normalize_phone(phone, fields.get("country") or default_country)
        except ValueError:
            attributes["phone_number"] = phone  # kept as given: a person reads it, no channel uses it
    taken = set(EMAIL_FIELDS[:1]) | set(PHONE_FIELDS) | set(NAME_FIELDS) | {"country"} | consent_questions
    for name, values in answers.items():
        if name not in taken and values:
            attributes[name] = values[0] if len(values) == 1 else values
    return fields, attributes


def _utm(lead: dict, form_id: str) -> dict[str, str]:
    platform = str(lead.get("platform") or "").lower()
    organic = lead.get("is_organic") in (True, "true", 1, "1")
    utm = {"utm_source": "instagram" if platform in ("ig", "instagram") else "facebook",
           "utm_medium": "social" if organic else "paid_social",
           "utm_campaign": str(lead.get("campaign_name") or form_id or "meta_lead_ads")}
    content = lead.get("ad_name") or lead.get("ad_id")
    if content:
        utm["utm_content"] = str(content)
    return {k: v for k, v in utm.items() if not text_problem(v)}


def store_lead(conn: Any, policies: Policies, lead: dict, hint: Notification, *, now: datetime,
               default_country: Optional[str] = None) -> LeadOutcome:
    """One lead read from Graph, in the caller's transaction (see the module's docstring);
    `default_country`: NURTURE_DEFAULT_COUNTRY, for a phone number typed without its code."""
    lead_id = hint.lead_id
    answers = _answers(lead)
    consent = policies.lead_forms.consent
    fields, attributes = _contact_fields(answers, {q.lower() for qs in consent.values() for q in qs}, default_country)
    raw_email = _first(answers, EMAIL_FIELDS)
    email = None
    if raw_email:
        try:
            email = normalize_email(raw_email)
        except ValueError as exc:
            return LeadOutcome("skipped", f"email: {exc}")
    elif not fields.get("phone"):
        return LeadOutcome("skipped", "the lead has neither an e-mail address nor a valid phone number")
    check = TrackResult()
    if email and refuse_erased(conn, [(email, 1)], SOURCE, check):
        return LeadOutcome("erased", "an erased person's lead: nothing stored")
    form_id = _graph_id(lead.get("form_id")) or hint.form_id or ""
    ad_id = _graph_id(lead.get("ad_id")) or hint.ad_id
    at = now
    for created in (lead.get("created_time"), hint.created_time):
        if created not in (None, ""):
            try:
                at = min(parse_timestamp(created), now)
                break
            except ValueError:
                continue
    properties = {"form_id": form_id, "form": policies.lead_forms.forms.get(form_id), "ad_id": ad_id,
                  "lead_id": lead_id, "source": SOURCE, **_utm(lead, form_id)}
    properties = {k: v for k, v in properties.items() if v not in (None, "")}
    if email:
        event = {"event_id": f"meta_lead:{lead_id}", "email": email, "event": EVENT, "timestamp": at.isoformat(),
                 "properties": properties}
        tracked = track_in(conn, [(1, event)], source=SOURCE, now=now)
    else:  # a phone-only lead: the contact known by that number, or a new one (nurture.identities) —
        # never a new one with an erased person's number (its tombstone: nurture.privacy.tombstones)
        phone = fields["phone"]
        if erased_phones(conn, [phone]) and find_by_identity(conn, "phone", phone) is None:
            return LeadOutcome("erased", "an erased person's lead: nothing stored")
        contact_id, _ = resolve(conn, Who(phone=phone), now)
        if contact_id is None:
            return LeadOutcome("erased", "an erased person's lead: nothing stored")
        tracked = write_events(conn, [{"event_id": f"meta_lead:{lead_id}", "email": None, "contact_id": contact_id,
                                       "name": EVENT, "properties": properties, "occurred_at": at, "line": 1}],
                               source=SOURCE, now=now)
    if tracked.errors:
        first = tracked.errors[0]
        return LeadOutcome("erased" if tracked.erased else "skipped", f"{first.field}: {first.message}")
    if not tracked.inserted:
        return LeadOutcome("duplicate")
    if policies.keep_attributes is not None:
        attributes = {k: v for k, v in attributes.items() if k in policies.keep_attributes}
    if value_problem(attributes, ("attributes",)):
        attributes = {}
    attributes["meta_lead_id"] = lead_id
    # (phone-only: the contact `resolve` found — maybe by a phone identity, not by the column)
    who = contact_t.c.email == email if email else contact_t.c.id == contact_id
    row = conn.execute(select(contact_t.c.id, contact_t.c.attributes).where(who).order_by(contact_t.c.id).limit(1)).one()
    if not email:  # the phone is the contact's already; another contact may hold it in no column
        fields = {k: v for k, v in fields.items() if k != "phone"}
    conn.execute(contact_t.update().where(contact_t.c.id == row.id).values(
        **fields, attributes={**(row.attributes or {}), **attributes}, updated_at=now))
    outcome = LeadOutcome("stored", event_ids=list(tracked.inserted_ids))
    source = f"{SOURCE}:{form_id}" if form_id else SOURCE
    for channel, questions in consent.items():
        given = [v.strip().lower() for q in questions for v in answers.get(q.lower(), [])]
        if not any(v in YES for v in given):
            continue
        if channel == "ads":  # no confirmation: nothing is sent to the person on the strength of it
            record_consent(conn, row.id, channel, "granted", purpose="marketing", source=source, at=at,
                           policy_version=policies.version)
            outcome.opt_ins[channel] = "granted"
        elif channel != "email" or email:  # (a phone-only lead has no e-mail address to confirm)
            # granted, or pending with its request (e-mail, SMS) where double opt-in covers the channel
            outcome.opt_ins[channel] = request_opt_in(conn, policies, row.id, source=source, now=at, channel=channel)
    return outcome


def known_leads(conn: Any, lead_ids: list[str]) -> set[str]:
    ids = [f"meta_lead:{i}" for i in lead_ids]
    if not ids:
        return set()
    return {r[0].partition(":")[2] for r in conn.execute(select(event_t.c.event_id).where(event_t.c.event_id.in_(ids)))}


# ---------------------------------------------------------------- the routes


def meta_leads_routes(rt: Any, clock: Callable[[], datetime]) -> APIRouter:
    """The router over the app's runtime (store, project, env) and clock."""
    router = APIRouter()
    env = rt.env

    @router.get(PATH)
    def verify(request: Request) -> Response:
        expected = _secret(WebSettings.from_env(env).meta_verify_token)
        if not expected:
            return _problem(403, f"this endpoint is disabled: {VERIFY_SETTING} is not set on the server")
        params = request.query_params
        given = params.get("hub.verify_token") or ""
        if params.get("hub.mode") != "subscribe" or not same_secret(given, expected):
            return _problem(403, "hub.mode must be subscribe and hub.verify_token must match")
        challenge = params.get("hub.challenge") or ""
        if not challenge or len(challenge) > MAX_CHALLENGE or not challenge.isprintable():
            return _problem(400, "hub.challenge is missing or not printable text", "hub.challenge")
        return PlainTextResponse(challenge, headers={"X-Content-Type-Options": "nosniff"})

    @router.post(PATH)
    async def leadgen(request: Request, background: BackgroundTasks) -> Response:
        secret = _secret(WebSettings.from_env(env).meta_app_secret)
        if not secret:
            return _problem(403, f"this endpoint is disabled: {SECRET_SETTING} is not set on the server")
        signature = request.headers.get("x-hub-signature-256", "").strip()
        if not signature:
            return _problem(401, "missing X-Hub-Signature-256")
        body = await request.body()
        if not _SIGNATURE.match(signature) or not hmac.compare_digest(
                meta_signature(secret, body).encode(), signature.lower().encode()):
            return _problem(403, "X-Hub-Signature-256 does not match")
        try:
            payload = json.loads(body or b"null")
        except RecursionError:
            return _problem(400, "body is not valid JSON (nested far too deep)", "body")
        except ValueError as exc:
            return _problem(400, f"body is not valid JSON ({str(exc)[:200]})", "body")
        found, ignored, problem = notifications(payload)
        if problem is not None:
            return problem
        answer = await run_in_threadpool(process, found)
        answer["ignored"] = ignored
        if answer.pop("_pending_mail"):
            background.add_task(deliver_system_mail)
        inserted = answer.pop("_event_ids")
        instant = getattr(request.app.state, "instant", None)
        if inserted and instant is not None:
            instant.notify_events(inserted)
        return JSONResponse(answer, status_code=503 if answer["failed"] else 200)

    def process(found: list[Notification]) -> dict:
        now = clock()
        answer: dict[str, Any] = {"leads": len(found), "stored": 0, "duplicates": 0, "erased": 0, "skipped": [],
                                  "failed": [], "_event_ids": [], "_pending_mail": False}
        with rt.store.engine.connect() as conn:
            known = known_leads(conn, [n.lead_id for n in found])
        answer["duplicates"] = len(known)
        todo = [n for n in found if n.lead_id not in known]
        if not todo:
            return answer
        reader, why = lead_reader()
        if reader is None:
            answer["failed"] = [{"lead_id": n.lead_id, "reason": why} for n in todo]
            return answer
        default_country = rt.settings.default_country
        try:
            for hint in todo:
                fetched = reader.fetch(hint.lead_id)
                if not fetched.ok:
                    answer["failed"].append({"lead_id": hint.lead_id, "reason": fetched.reason})
                    continue
                with rt.store.engine.begin() as conn:
                    outcome = store_lead(conn, rt.project.policies, fetched.lead, hint, now=now,
                                         default_country=default_country)
                if outcome.status == "stored":
                    answer["stored"] += 1
                    answer["_event_ids"] += outcome.event_ids
                    answer["_pending_mail"] |= "pending" in outcome.opt_ins.values()
                elif outcome.status == "duplicate":
                    answer["duplicates"] += 1
                elif outcome.status == "erased":
                    answer["erased"] += 1
                else:
                    answer["skipped"].append({"lead_id": hint.lead_id, "reason": outcome.reason})
        finally:
            reader.close()
        return answer

    def lead_reader() -> tuple[Any, str]:
        """The Meta integration's lead reader (`fetch(lead_id)` → ok, lead, reason; `close()`),
        or None and why not."""
        try:
            factory = getattr(lookup("meta"), "lead_reader", None)
        except IntegrationError as exc:
            return None, str(exc)
        if factory is None:
            return None, "the registered meta integration cannot read leads"
        reader = factory(IntegrationContext(rt.project.root, rt.data_dir, dict(env)))
        return reader, "" if reader is not None else "NURTURE_META_ACCESS_TOKEN is not set"

    def deliver_system_mail() -> None:
        from nurture.send.deliver import deliver
        from nurture.send.system_mail import SYSTEM_JOURNEY
        deliver(rt, clock(), SYSTEM_JOURNEY)

    return router

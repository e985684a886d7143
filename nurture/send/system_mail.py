"""Nurture's own transactional messages: the double opt-in confirmation e-mail and its
reminder, and the SMS confirmation request ("Reply START to confirm").

They are outbox rows like any journey's (queued by nurture.double_opt_in), with no
enrollment and no journey plan: journey `double_opt_in`, step `confirm` or `reminder`,
purpose `transactional`, on the channel of the consent they ask about. Subject and templates
are fixed here; the wording lives in templates/email/system/ and templates/sms/system/.
Rendered with the one template context (nurture.send.context), plus the confirm link (e-mail),
`expires_days` and `sender`.

Their send checks are a transactional message's — no marketing consent (they ask for it) and
no frequency cap, but suppression and reachability — plus, for a text, the channel's quiet
hours (`request_rules`): an e-mail waits silently in the mailbox, a text at 3 am wakes its
reader, and a lead may reach Nurture hours after the form was sent (Meta redelivers for 36 h).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select

from nurture.consent_ledger import latest_of_rows, revocations_until
from nurture.registry import OutgoingMessage
from nurture.runtime.context import Runtime
from nurture.send.context import imprint_of, recipient_links, template_context
from nurture.send.guards.pipeline import SendRules
from nurture.spec.models import DOUBLE_OPT_IN_TEMPLATES, SMS_DOUBLE_OPT_IN_TEMPLATES
from nurture.store.tables import message_t
from nurture.tokens import make_token

SYSTEM_JOURNEY = "double_opt_in"
SYSTEM_JOURNEYS = frozenset({SYSTEM_JOURNEY})
TEMPLATES = DOUBLE_OPT_IN_TEMPLATES  # step -> template (validate warns when one is missing)
# channel -> step -> template: the channels whose double opt-in sends a request on that channel.
# (WhatsApp is not one: a business-initiated WhatsApp message needs an approved template and
# the person's opt-in before it may go — a pending WhatsApp consent is confirmed by START.)
REQUEST_TEMPLATES = {"email": DOUBLE_OPT_IN_TEMPLATES, "sms": SMS_DOUBLE_OPT_IN_TEMPLATES}
# Requests that wait for the end of their channel's quiet hours (policies.yaml `quiet_hours`).
QUIET_HOURS_CHANNELS = frozenset({"sms"})
# Jinja, so the subject is in the contact's language (translations/<locale>.po, nurture.rendering.i18n).
SUBJECTS = {"confirm": "{{ _('Please confirm your subscription') }}",
            "reminder": "{{ _('Reminder: please confirm your subscription') }}"}


def outdated_requests(conn: Any, message_ids: list[int], now: datetime) -> dict[int, str]:
    """Message id → refusal reason, for the confirmations and reminders among `message_ids`
    whose pending consent (the ledger row of their `consent:<id>` attempt key) is no longer the
    latest row of its contact's (channel, purpose) — revoked (`consent_revoked`), confirmed or
    asked for again (`not_pending`). Read with the send checks' wall-clock rule: what was
    recorded up to the later of `now` and the wall clock, so a revocation made after a late
    run's logical time still stops the mail."""
    keys = dict(conn.execute(select(message_t.c.id, message_t.c.attempt_key)
                             .where(message_t.c.id.in_(message_ids))).all()) if message_ids else {}
    asked = {message_id: int(key.removeprefix("consent:")) for message_id, key in keys.items()
             if (key or "").startswith("consent:") and key.removeprefix("consent:").isdigit()}
    latest = latest_of_rows(conn, set(asked.values()), revocations_until(now))
    refused: dict[int, str] = {}
    for message_id, row_id in asked.items():
        if row_id in latest and latest[row_id][0] != row_id:
            refused[message_id] = "consent_revoked" if latest[row_id][1] == "revoked" else "not_pending"
    return refused


def confirm_link(rt: Runtime, contact_id: int, purpose: str = "marketing", channel: str = "email") -> str:
    """The signed link that confirms a pending consent; valid as long as the consent may stay pending."""
    ttl = int(rt.project.policies.pending_consent_expires.total_seconds())
    settings = rt.settings
    token = make_token(settings.signing_secret, "confirm", contact_id, purpose, channel, ttl=ttl)
    return f"{settings.links_url}/confirm/{token}"


def request_rules(rt: Runtime, channel: str) -> SendRules:
    """The send checks of a confirmation request on `channel`: a transactional message's, plus
    the channel's quiet hours for a text (deferred to the window's end in the contact's zone)."""
    rules = rt.send_rules(None, channel, "transactional")
    return replace(rules, window=rt.quiet_window(None, channel)) if channel in QUIET_HOURS_CHANNELS else rules


def _sender(rt: Runtime) -> Optional[str]:
    """Who asks, in the request's words: NURTURE_FROM_NAME, else policies.yaml `sender.company`
    (None: neither is set — the e-mail says "us", the text has words of its own)."""
    company = rt.project.policies.sender.company if rt.project.policies.sender is not None else None
    return rt.settings.from_name or company or None


def render_system_message(rt: Runtime, row: Any, message_id: str) -> OutgoingMessage:
    """Render a claimed confirmation request (delivery's loaded message row): an e-mail
    (confirmation or reminder) or a text."""
    if row.channel != "email":
        context = template_context(row, {"name": row.journey, "description": ""},
                                   recipient_links(rt.settings.links_url, rt.settings.signing_secret, row.contact_id,
                                                   "marketing", row.channel),
                                   imprint_of(rt.project.policies.sender),
                                   expires_days=rt.project.policies.pending_consent_expires.days, sender=_sender(rt))
        text = rt.templates.text(row.channel, row.template).render(context).strip()
        return OutgoingMessage(message_pk=row.id, rfc_message_id=message_id, contact_id=row.contact_id,
                               channel=row.channel, journey=row.journey, step_id=row.step_id, purpose="transactional",
                               to=row.address or "", text=text, created_at=row.created_at, locale=row.locale)
    return render_system_email(rt, row, message_id)


def render_system_email(rt: Runtime, row: Any, message_id: str) -> OutgoingMessage:
    """Render a claimed confirmation or reminder row (delivery's loaded message row)."""
    settings = rt.settings
    links = {**recipient_links(settings.links_url, settings.signing_secret, row.contact_id, "marketing", "email"),
             "confirm": confirm_link(rt, row.contact_id)}
    context = template_context(row, {"name": row.journey, "description": ""}, links,
                               imprint_of(rt.project.policies.sender),
                               expires_days=rt.project.policies.pending_consent_expires.days,
                               sender=_sender(rt) or "us")
    rendered = rt.templates.render_email(row.template, SUBJECTS.get(row.step_id, SUBJECTS["confirm"]), context)
    to_name = " ".join(p for p in (row.first_name, row.last_name) if p)
    return OutgoingMessage(message_pk=row.id, rfc_message_id=message_id, contact_id=row.contact_id,
                           channel="email", journey=row.journey, step_id=row.step_id, purpose="transactional",
                           to=row.address or "", to_name=to_name, subject=rendered.subject, html=rendered.html,
                           text=rendered.text, created_at=row.created_at, locale=row.locale)

"""Nurture's own transactional mail: the double opt-in confirmation and its reminder.

They are outbox rows like any journey's (queued by nurture.double_opt_in), with no
enrollment and no journey plan: journey `double_opt_in`, step `confirm` or `reminder`,
purpose `transactional`. Subject and template are fixed here; the wording lives in
templates/email/system/. Rendered with the one template context (nurture.send.context), plus
the confirm link, `expires_days` and `sender`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from nurture.consent_ledger import latest_of_rows, revocations_until
from nurture.registry import OutgoingMessage
from nurture.runtime.context import Runtime
from nurture.send.context import imprint_of, recipient_links, template_context
from nurture.spec.models import DOUBLE_OPT_IN_TEMPLATES
from nurture.store.tables import message_t
from nurture.tokens import make_token

SYSTEM_JOURNEY = "double_opt_in"
SYSTEM_JOURNEYS = frozenset({SYSTEM_JOURNEY})
TEMPLATES = DOUBLE_OPT_IN_TEMPLATES  # step -> template (validate warns when one is missing)
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


def render_system_email(rt: Runtime, row: Any, message_id: str) -> OutgoingMessage:
    """Render a claimed confirmation or reminder row (delivery's loaded message row)."""
    settings = rt.settings
    links = {**recipient_links(settings.links_url, settings.signing_secret, row.contact_id, "marketing", "email"),
             "confirm": confirm_link(rt, row.contact_id)}
    context = template_context(row, {"name": row.journey, "description": ""}, links,
                               imprint_of(rt.project.policies.sender),
                               expires_days=rt.project.policies.pending_consent_expires.days,
                               sender=settings.from_name or "us")
    rendered = rt.templates.render_email(row.template, SUBJECTS.get(row.step_id, SUBJECTS["confirm"]), context)
    to_name = " ".join(p for p in (row.first_name, row.last_name) if p)
    return OutgoingMessage(message_pk=row.id, rfc_message_id=message_id, contact_id=row.contact_id,
                           channel="email", journey=row.journey, step_id=row.step_id, purpose="transactional",
                           to=row.address or "", to_name=to_name, subject=rendered.subject, html=rendered.html,
                           text=rendered.text, created_at=row.created_at, locale=row.locale)

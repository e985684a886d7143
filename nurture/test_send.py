"""Test sends (`nurture test-send`): one send step of a journey, rendered exactly as for a
contact — by the one renderer delivery uses (nurture.send.render.render_message, over the one
template context of nurture.send.context) — and handed to the channel integration the project
has configured for the step's channel (`rt.channel`: SMTP when NURTURE_EMAIL_BACKEND=smtp, the
.eml file channel by default; the SMS file channel or Twilio), addressed to a seed address.

A test send is marked as one: e-mail gets the subject prefix "[TEST] " and the header
`X-Nurture-Test: 1`; SMS (and any other text channel) the text prefix "[TEST] ".

What a test send never does, so that nothing that counts or reconciles can see it:
- write a row: no message (so no frequency cap, report, funnel, attribution, conversion,
  reconcile or retention of the message log ever counts it), no suppression (a seed address
  the server refuses is reported, not recorded), no enrollment, no event;
- run the send checks (consent, suppression, quiet hours, caps): they are about the contact,
  and the contact receives nothing;
- hand out working recipient links: the unsubscribe and preference links are signed with a
  throwaway key, so they have their real shape but do nothing on the site — a tester who
  clicks "unsubscribe" in a test mail must not unsubscribe the contact it was rendered for.

Whom it renders for: `contact_email` → that contact as delivery would load it (its columns,
and the trigger event of its latest enrollment in the journey, else its latest event of the
trigger's name); none → the sample persona `nurture preview` uses (nurture.send.preview's
SAMPLE_CONTACT, "Alex Example"), so no real person's data goes to a seed inbox unless asked.

The message key: channels name and reconcile messages by their row id (`message_pk`). A test
send uses TEST_MESSAGE_PK = 0, an id no row ever has (ids start at 1 on SQLite and
PostgreSQL), so reconcile never asks a channel about it and no row's file is overwritten. The
file channels write it as `outbox/email/<journey>/000000000.eml` (each test send of a journey
replaces the previous one; `nurture purge` with a `message_bodies` retention removes it with the
files no row owns) and as a `sms.jsonl` line with `"message_id": 0`. Its Message-ID is unique per test send
(`<nurture.test-<hex>.<journey>@<domain>>`): mailboxes drop a message whose Message-ID they have
seen, which would swallow the second test send of a step.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from pydantic import SecretStr

from nurture.ingest import normalize_email, normalize_phone
from nurture.redaction import redact, secrets_in
from nurture.registry import OutgoingMessage
from nurture.rendering.templates import RenderError
from nurture.runtime.context import Runtime
from nurture.send.context import ContextRow
from nurture.send.deliver import LoadedMessage
from nurture.send.preview import SAMPLE_CONTACT, recipient, sample_recipient
from nurture.send.render import render_message

TEST_MESSAGE_PK = 0  # no message row has id 0: see the module docstring
TEST_PREFIX = "[TEST] "
TEST_HEADER = "X-Nurture-Test"


class SeedSendError(Exception):
    """A test send that cannot be made as asked (unknown journey, step or contact, not a send
    step, an address the channel cannot use, a template that does not render, a channel that
    is not configured). The message says what to do."""


@dataclass(frozen=True)
class SeedSend:
    """What a test send did. `status`: the channel's answer (sent | retry | failed |
    unavailable), `reason` its words when not sent (secrets redacted)."""
    journey: str
    step_id: str
    channel: str  # the step's channel (email, sms …)
    integration: str  # the configured integration that carried it (email.smtp, sms.file …)
    to: str
    subject: str  # e-mail: the marked subject as sent; "" for text channels
    text: str  # the text body as sent (SMS: the whole message)
    contact: str  # whom it was rendered for: an e-mail, or "sample contact (…)"
    status: str
    reason: Optional[str] = None
    provider_id: Optional[str] = None

    @property
    def sent(self) -> bool:
        return self.status == "sent"


def seed_address(channel: str, address: str) -> str:
    """The seed address in the form its channel uses: an e-mail address for e-mail, an E.164
    phone number (with its +country code) for the phone channels (sms, whatsapp)."""
    try:
        if channel == "email":
            return normalize_email(address)
        return normalize_phone(address.strip(), None)
    except ValueError as exc:
        kind = "an e-mail address" if channel == "email" else "a phone number in E.164 form (+4915…)"
        raise SeedSendError(f"--to '{address}' is not {kind}, as the {channel} step needs: {exc}") from None


def send_test(rt: Runtime, journey: str, step_id: str, to: str, *, contact_email: Optional[str] = None,
              now: Optional[datetime] = None, channel: Optional[str] = None) -> SeedSend:
    """Render send step `step_id` of `journey` for the contact (or the sample persona), mark it
    as a test and hand it to the step's configured channel, addressed to `to`. Writes nothing
    to the store. Raises SeedSendError for what cannot be sent as asked; a channel's refusal
    is the result's status."""
    if journey not in rt.project.journeys:
        raise SeedSendError(f"no journey named '{journey}'")
    plan = rt.plan(journey)
    node = plan.nodes.get(step_id)
    if node is None:
        sends = [sid for sid in plan.order if plan.nodes[sid].kind == "send"]
        raise SeedSendError(f"journey '{journey}' has no step '{step_id}'"
                            + (f" (its send steps: {', '.join(sends)})" if sends else " (and no send step)"))
    if node.kind != "send":
        raise SeedSendError(f"step '{step_id}' of journey '{journey}' is a {node.kind} step, not a send")
    send = node.step.send
    if channel is None:
        channel = send.channel  # a fallback step (`channels:`): its first channel unless asked
    elif channel not in send.options:
        raise SeedSendError(f"step '{step_id}' does not send on {channel}: its channels are {', '.join(send.options)}")
    address = seed_address(channel, to)
    now = now or datetime.now(timezone.utc)
    trigger = plan.journey.trigger.event
    if contact_email:
        with rt.store.reading() as conn:
            person = _contact(conn, contact_email, journey, trigger)
        who = person.email or contact_email
    else:
        person = sample_recipient(trigger)
        who = f"sample contact ({SAMPLE_CONTACT.first_name} {SAMPLE_CONTACT.last_name}, {SAMPLE_CONTACT.email})"
    message = _render(rt, person, journey, step_id, channel, send.purpose, send.template, address, now)
    integration = _integration(rt, channel)
    try:
        results = integration.send_batch([message])
    except Exception as exc:  # a channel's bug: results are its contract
        return _outcome(rt, message, integration, who, "failed", f"{type(exc).__name__}: {exc}")
    result = next((r for r in results if r.message_pk == TEST_MESSAGE_PK), None)
    if result is None:
        return _outcome(rt, message, integration, who, "failed", "the channel returned no result")
    return _outcome(rt, message, integration, who, result.status, result.reason, result.provider_id)


def _render(rt: Runtime, person: Any, journey: str, step_id: str, channel: str, purpose: str, template: str,
            address: str, now: datetime) -> OutgoingMessage:
    """The message delivery would hand over for this contact, addressed to the seed and marked."""
    values = dict(person._asdict(), id=TEST_MESSAGE_PK, journey=journey, step_id=step_id, channel=channel,
                  purpose=purpose, template=template, address=address, created_at=now, attempts=0)
    # Fields delivery's row may gain later are None here, as for a contact without them.
    row = LoadedMessage(**{name: values.get(name) for name in LoadedMessage._fields})
    settings = rt.settings
    # Links with the real shape that verify nowhere: clicking them must not act on the contact.
    throwaway = settings.model_copy(update={"secret_key": SecretStr(secrets.token_hex(24))})
    try:
        message = render_message(rt, row, throwaway)
    except RenderError as exc:
        raise SeedSendError(f"template error in step '{step_id}': {exc}") from None
    domain = settings.from_email.rpartition("@")[2] or "nurture.local"
    message.rfc_message_id = f"<nurture.test-{secrets.token_hex(8)}.{journey.replace('_', '-')}@{domain}>"
    message.to = address
    if channel == "email":
        message.subject = TEST_PREFIX + message.subject
        message.headers = {**message.headers, TEST_HEADER: "1"}
    else:
        message.text = TEST_PREFIX + message.text
    return message


def _integration(rt: Runtime, channel: str) -> Any:
    try:
        return rt.channel(channel)
    except Exception as exc:  # not configured, or refused to send (no secret / public URL)
        raise SeedSendError(f"the {channel} channel cannot send: {redact(str(exc), secrets_in(rt.env))}") from None


def _outcome(rt: Runtime, message: OutgoingMessage, integration: Any, who: str, status: str,
             reason: Optional[str], provider_id: Optional[str] = None) -> SeedSend:
    return SeedSend(journey=message.journey, step_id=message.step_id, channel=message.channel,
                    integration=getattr(integration, "name", type(integration).__name__), to=message.to,
                    subject=message.subject if message.channel == "email" else "", text=message.text,
                    contact=who, status=status, reason=redact(reason, secrets_in(rt.env)) if reason else None,
                    provider_id=provider_id)


def _contact(conn: Any, email: str, journey: str, trigger: Optional[str]) -> ContextRow:
    """The contact with `email`, with the trigger event delivery would render with."""
    person = recipient(conn, email, journey, trigger)
    if person is None:
        raise SeedSendError(f"no contact with e-mail {email.strip()}")
    return person

"""What a contact would receive: renders a journey's send steps without sending anything.

Each message is built by the one renderer delivery uses (nurture.send.render.render_message:
the template context of nurture.send.context, UTM tags, the legal footer, the preheader, the
configured NURTURE_PUBLIC_URL), from the same facts: the contact's row (or a sample contact)
and the trigger event of its latest enrollment in the journey, else its latest event of the
trigger's name (or the properties given). So the text and the SMS segments shown are those
delivery sends. Links are signed with a throwaway secret unless one is given, so a preview's
unsubscribe link does not work on the real site.
"""
from __future__ import annotations

import os
import secrets

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from pydantic import SecretStr
from sqlalchemy import select

from nurture.contact_lookup import contact_by_email
from nurture.event_schema import SAMPLES
from nurture.runtime.context import Runtime
from nurture.send.context import ContextRow, imprint_of, recipient_links, template_context
from nurture.send.deliver import LoadedMessage
from nurture.send.render import render_message
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.tables import contact_t, enrollment_t, event_t

PREVIEW_PK = 0  # no message row has id 0


class PreviewError(Exception):
    pass


@dataclass
class Preview:
    step_id: str
    channel: str
    to: str
    subject: str
    text: str
    html: str
    context: dict[str, Any] = field(default_factory=dict, repr=False)  # what the templates saw
    preheader: str = ""  # an e-mail's: also hidden at the start of `html`, as delivered


SAMPLE_CONTACT = ContextRow(contact_id=0, email="alex@example.com", phone="+4915112345678", first_name="Alex",
                            last_name="Example", country="DE", locale=None, timezone="Europe/Berlin",
                            lifecycle_stage="lead", score=0.0, attributes={}, step_id="")


def sample_recipient(trigger_event: Optional[str]) -> ContextRow:
    """The sample contact with the journey's trigger event, holding a sample value for each
    documented property of it (nurture.event_schema.SAMPLES): `preview` and `test-send`
    without a contact render for it."""
    return SAMPLE_CONTACT._replace(event_name=trigger_event, event_properties=dict(SAMPLES.get(trigger_event or "", {})))


_CONTACT_COLUMNS = (contact_t.c.id.label("contact_id"), contact_t.c.email, contact_t.c.phone, contact_t.c.first_name,
                    contact_t.c.last_name, contact_t.c.country, contact_t.c.locale, contact_t.c.timezone,
                    contact_t.c.lifecycle_stage, contact_t.c.score, contact_t.c.attributes)


def recipient(conn: Any, email: str, journey: str, trigger: Optional[str]) -> Optional[ContextRow]:
    """The contact with `email` (None: there is none), with the trigger event delivery renders
    with: that of its latest enrollment in `journey`, else its latest event named like the
    journey's trigger. `nurture preview --contact` and `nurture test-send` show the same."""
    cid = contact_by_email(conn, email)
    contact = conn.execute(select(*_CONTACT_COLUMNS).where(contact_t.c.id == cid)).first() if cid is not None else None
    if contact is None:
        return None
    columns = (event_t.c.name, event_t.c.properties, event_t.c.occurred_at)
    event = conn.execute(select(*columns).select_from(
        enrollment_t.join(event_t, event_t.c.id == enrollment_t.c.trigger_event_pk))
        .where(enrollment_t.c.contact_id == contact.contact_id, enrollment_t.c.journey == journey)
        .order_by(enrollment_t.c.entered_at.desc(), enrollment_t.c.id.desc()).limit(1)).first()
    if event is None and trigger:
        event = conn.execute(select(*columns).where(event_t.c.contact_id == contact.contact_id,
                                                    event_t.c.name == trigger)
                             .order_by(event_t.c.occurred_at.desc(), event_t.c.id.desc()).limit(1)).first()
    return ContextRow(*contact, step_id="", event_name=event.name if event else trigger,
                      event_properties=event.properties if event else None,
                      event_at=event.occurred_at if event else None)


def preview_journey(spec: ProjectSpec, store: Store, journey: str, *, step_id: Optional[str] = None,
                    email: Optional[str] = None, event_properties: Optional[dict] = None,
                    public_url: Optional[str] = None, secret_key: Optional[str] = None,
                    env: Optional[Mapping[str, str]] = None) -> list[Preview]:
    """One Preview per send step (and channel of a fallback step) of `journey`, as delivery
    would build it now. `env`: the settings (default: this process's environment; its
    NURTURE_PUBLIC_URL is the links' address unless `public_url` is given); `secret_key`
    signs the links (default: a throwaway one). Raises PreviewError, or a RenderError."""
    if journey not in spec.journeys:
        raise PreviewError(f"no journey named '{journey}'")
    values = dict(os.environ if env is None else env)
    if public_url:
        values["NURTURE_PUBLIC_URL"] = public_url
    rt = Runtime(store, spec, env=values)
    settings = rt.settings.model_copy(update={"secret_key": SecretStr(secret_key or secrets.token_hex(24))})
    plan = rt.plan(journey)
    trigger_event = plan.journey.trigger.event
    row = sample_recipient(trigger_event)
    if email:
        with store.reading() as conn:
            found = recipient(conn, email, journey, trigger_event)
        if found is None:
            raise PreviewError(f"no contact with e-mail {email}")
        row = found
    if event_properties is not None:
        row = row._replace(event_properties=event_properties)
    about = {"name": journey, "description": plan.journey.description}
    now = datetime.now(timezone.utc)
    cache: dict = {}
    out = []
    for sid in plan.order:
        node = plan.nodes[sid]
        if node.kind != "send" or (step_id and sid != step_id):
            continue
        send = node.step.send
        for channel in send.options:  # a fallback step: one preview per channel it may use
            to = (row.email if channel == "email" else row.phone) or ""
            fields = dict(row._asdict(), id=PREVIEW_PK, journey=journey, step_id=sid, channel=channel,
                          purpose=send.purpose, template=send.template, address=to, created_at=now, attempts=0)
            # fields delivery's row has beyond the contact's are None, as for a contact without them
            message = render_message(rt, LoadedMessage(**{n: fields.get(n) for n in LoadedMessage._fields}),
                                     settings, cache)
            links = recipient_links(settings.links_url, settings.signing_secret, row.contact_id, send.purpose, channel)
            ctx = template_context(row._replace(step_id=sid), about, links, imprint_of(spec.policies.sender))
            if channel == "email":
                preheader = " ".join(rt.templates.string(send.preheader).render(ctx).split()) if send.preheader else ""
                out.append(Preview(sid, "email", to, message.subject or "", message.text or "", message.html or "",
                                   ctx, preheader))
            else:
                out.append(Preview(sid, channel, to, "", message.text or "", "", ctx))
    if step_id and not out:
        raise PreviewError(f"journey '{journey}' has no send step '{step_id}'")
    return out

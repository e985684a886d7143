"""What a contact would receive: renders a journey's send steps without sending anything."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import select

from nurture.compiler import compile_journey
from nurture.conditions import contact_t, event_t
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.tokens import make_token


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


SAMPLE_CONTACT = {"id": 0, "email": "alex@example.com", "phone": "+4915112345678", "first_name": "Alex",
                  "last_name": "Example", "country": "DE", "locale": "en", "timezone": "Europe/Berlin",
                  "lifecycle_stage": "lead", "score": 0.0, "attributes": {}}


def preview_journey(spec: ProjectSpec, store: Store, journey: str, *, step_id: Optional[str] = None,
                    email: Optional[str] = None, event_properties: Optional[dict] = None,
                    public_url: str = "http://localhost:8000") -> list[Preview]:
    if journey not in spec.journeys:
        raise PreviewError(f"no journey named '{journey}'")
    plan = compile_journey(spec.journeys[journey])
    contact: dict[str, Any] = dict(SAMPLE_CONTACT)
    event: dict[str, Any] = {}
    with store.reading() as conn:
        if email:
            row = conn.execute(select(contact_t).where(contact_t.c.email == email.strip().lower())).mappings().first()
            if row is None:
                raise PreviewError(f"no contact with e-mail {email}")
            attrs = dict(row["attributes"] or {})
            contact = {**attrs, **{k: row[k] for k in SAMPLE_CONTACT if k in row}, "attributes": attrs}
            last = conn.execute(select(event_t.c.properties).where(
                event_t.c.contact_id == row["id"], event_t.c.name == plan.journey.trigger.event)
                .order_by(event_t.c.occurred_at.desc()).limit(1)).scalar()
            event = dict(last or {})
    if event_properties is not None:
        event = event_properties
    token = make_token("preview", "unsubscribe", int(contact.get("id") or 0))
    context = {"contact": contact, "event": {**event, "name": plan.journey.trigger.event, "properties": event},
               "journey": {"name": journey, "description": plan.journey.description},
               "links": {"unsubscribe": f"{public_url}/u/{token}", "preferences": f"{public_url}/u/{token}",
                         "home": public_url}}
    library = spec.templates
    out = []
    for sid in plan.order:
        node = plan.nodes[sid]
        if node.kind != "send" or (step_id and sid != step_id):
            continue
        send = node.step.send
        ctx = {**context, "step": {"id": sid}}
        if send.channel == "email":
            r = library.render_email(send.template, send.subject or "", ctx, send.preheader)
            out.append(Preview(sid, "email", contact.get("email") or "", r.subject, r.text, r.html))
        else:
            out.append(Preview(sid, "sms", contact.get("phone") or "", "", library.render_sms(send.template, ctx), ""))
    if step_id and not out:
        raise PreviewError(f"journey '{journey}' has no send step '{step_id}'")
    return out

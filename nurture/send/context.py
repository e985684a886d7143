"""The one template context: what a message's templates see, built by one function for every
way a message is rendered — delivery (nurture.send.render), preview (nurture.send.preview),
test sends, and Nurture's own system mail (nurture.send.system_mail) — so what a marketer
previews cannot drift from what is sent.

    contact   the contact's attributes, overlaid by its columns (id, email, phone, first_name,
              last_name, country, locale, timezone, lifecycle_stage, score) and `attributes`
    event     the enrollment's trigger event: its properties, overlaid by name, properties
              and occurred_at
    journey   name and description
    step      id
    links     unsubscribe, preferences (the signed preference-center link) and home; system
              mail adds confirm
    imprint   who sends (policies.yaml `sender:`): company, address, register, represented_by,
              contact — each None when not declared; the shipped layout's footer shows them
    …         system mail's own extras (expires_days, sender)

The input is one row of facts about the recipient (`ContextRow`: the columns delivery loads
for a claimed message); preview builds the same row from a contact and its last trigger
event. Built once per message at thousands of messages a second: plain dicts, no copies
beyond the ones templates must not share.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, NamedTuple, Optional

from nurture.tokens import make_token


class ContextRow(NamedTuple):
    """The facts a template context is built from (delivery's loaded message row has these
    fields, among others)."""
    contact_id: int
    email: Optional[str]
    phone: Optional[str]
    first_name: Optional[str]
    last_name: Optional[str]
    country: Optional[str]
    locale: Optional[str]
    timezone: Optional[str]
    lifecycle_stage: Optional[str]
    score: Optional[float]
    attributes: Optional[dict]
    step_id: str
    event_name: Optional[str] = None
    event_properties: Optional[dict] = None
    event_at: Optional[datetime] = None


def recipient_links(public_url: str, secret_key: str, contact_id: int, purpose: str, channel: str) -> dict[str, str]:
    """The recipient's own links: the signed preference center (unsubscribe, preferences) and home."""
    unsubscribe = f"{public_url}/u/{make_token(secret_key, 'unsubscribe', contact_id, purpose, channel)}"
    return {"unsubscribe": unsubscribe, "preferences": unsubscribe, "home": public_url}


IMPRINT_FIELDS = ("company", "address", "register", "represented_by", "contact")
# What `nurture validate` knows of the context: the namespaces whose keys are fixed (a misspelt
# key fails every render, so it is an error) and the contact's own columns (attributes are open:
# a name close to a column is pointed out, not refused).
CLOSED_NAMESPACES: dict[str, tuple[str, ...]] = {
    "links": ("unsubscribe", "preferences", "home"), "imprint": IMPRINT_FIELDS,
    "journey": ("name", "description"), "step": ("id",)}
CONTACT_FIELDS = ("id", "email", "phone", "first_name", "last_name", "country", "locale", "timezone",
                  "lifecycle_stage", "score", "attributes")


def imprint_of(sender: Any) -> dict[str, Optional[str]]:
    """policies.yaml `sender:` as the templates' `imprint` (every field present, None if unset)."""
    if sender is None:
        return dict.fromkeys(IMPRINT_FIELDS)
    return {"company": sender.company, "address": sender.address, "register": sender.register_,
            "represented_by": sender.represented_by, "contact": sender.contact}


def template_context(row: Any, journey: Mapping[str, Any], links: Mapping[str, str],
                     imprint: Optional[Mapping[str, Optional[str]]] = None, **extra: Any) -> dict[str, Any]:
    """The variables of one message's templates. `row`: a ContextRow or any row with its
    fields; `journey`: name and description; `links`: recipient_links (plus any of the
    message's own); `imprint`: imprint_of(policies.sender); `extra`: further top-level
    variables (system mail)."""
    attributes = dict(row.attributes or {})
    props = dict(row.event_properties or {})
    return {
        "contact": {**attributes, "id": row.contact_id, "email": row.email, "phone": row.phone,
                    "first_name": row.first_name, "last_name": row.last_name, "country": row.country,
                    "locale": row.locale, "timezone": row.timezone, "lifecycle_stage": row.lifecycle_stage,
                    "score": row.score, "attributes": attributes},
        "event": {**props, "name": row.event_name, "properties": props, "occurred_at": row.event_at},
        "journey": dict(journey),
        "step": {"id": row.step_id},
        "links": links,
        "imprint": imprint if imprint is not None else dict.fromkeys(IMPRINT_FIELDS),
        **extra,
    }

"""The standard event schema (docs/events.md) as data: the documented events and their
properties, for `nurture validate` — a template that reads `event.cart_valeu` on a journey
triggered by `add_to_cart` is pointed at `cart_value`. Events are open (a shop may send any
property), so an undocumented property is a warning, never an error. tests/test_event_schema.py
keeps this table and the one in docs/events.md the same."""
from __future__ import annotations

from typing import Optional

EVENTS: dict[str, tuple[str, ...]] = {
    "view_product": ("sku", "product_name", "category", "price", "campaign"),
    "view_page": ("path", "campaign"),
    "add_to_cart": ("cart_value", "item_count", "sku", "category"),
    "start_checkout": ("cart_value",),
    "purchase": ("value", "order_id", "sku", "product_name", "category", "consumption_days", "items", "campaign"),
    "form_submit": ("form", "pain_point", "topic", "asset"),
    "demo_request": ("source",),
    "email_open": ("campaign", "step"),
    "email_click": ("campaign", "step", "url"),
    "sales_contacted": ("owner",),
    "sales_qualified": (),
    "deal_won": (),
}
# Events only Nurture itself records, from a source it checks: no ingest path (`track`,
# `POST /events`, the Segment API) accepts them from outside — a browser holding the public
# write key could otherwise open a contact's WhatsApp window (docs/whatsapp.md).
WHATSAPP_RECEIVED = "whatsapp_received"
RESERVED: dict[str, str] = {
    WHATSAPP_RECEIVED: "recorded only by an inbound WhatsApp message (Twilio's webhook): it opens the "
                         "24-hour window in which free text may go",
}


def reserved_problem(name: object) -> str | None:
    """Why an event of this name is refused at ingest, or None."""
    reason = RESERVED.get(name) if isinstance(name, str) else None
    return f"'{name}' is reserved: {reason}" if reason else None


# What `nurture preview` renders a documented event with when no contact and no --event is
# given: one plausible value per property (a template reading another one asks for --event).
SAMPLES: dict[str, dict[str, object]] = {
    "view_product": {"sku": "SKU-1042", "product_name": "Merino sweater", "category": "knitwear", "price": 79.0},
    "view_page": {"path": "/pricing"},
    "add_to_cart": {"cart_value": 129.0, "item_count": 2, "sku": "SKU-1042", "category": "knitwear"},
    "start_checkout": {"cart_value": 129.0},
    "purchase": {"value": 129.0, "order_id": "1001", "sku": "SKU-1042", "product_name": "Merino sweater",
                 "category": "knitwear", "consumption_days": 30},
    "form_submit": {"form": "whitepaper", "pain_point": "efficiency", "topic": "Lead nurturing",
                    "asset": "The lead nurturing guide"},
    "demo_request": {"source": "website"},
    "email_open": {"campaign": "welcome", "step": "hello"},
    "email_click": {"campaign": "welcome", "step": "hello", "url": "https://shop.example.com/"},
    "sales_contacted": {"owner": "Sam Seller"},
}
# Read on every event (lead sources, docs/events.md "Lead source"), and the keys the template
# context itself puts under `event` (nurture.send.context).
COMMON: tuple[str, ...] = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term", "gclid", "gbraid",
                           "wbraid", "msclkid", "fbclid", "ttclid", "li_fat_id", "url", "page_url", "landing_page",
                           "page", "referrer")
CONTEXT_KEYS: tuple[str, ...] = ("name", "properties", "occurred_at")


def template_event_keys(event: Optional[str]) -> Optional[tuple[str, ...]]:
    """What `event.*` may name in a template of a journey triggered by `event`: its documented
    properties, the lead-source ones and the context's own keys; None for an undocumented event
    (nothing is known about its properties)."""
    if event not in EVENTS:
        return None
    return EVENTS[event] + COMMON + CONTEXT_KEYS

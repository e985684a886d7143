"""What a journey cost, beyond 0.001 € an e-mail:

- **messages** — sent e-mails × `unit_costs.email`; sent SMS × their billed segments ×
  `unit_costs.sms`. The outbox does not keep a sent SMS's body, so each one is rendered again
  exactly as delivery renders it (same template, the one template context of nurture.send,
  the contact as stored now, the enrollment's trigger event, UTM-tagged links, the configured
  public URL) and its GSM-7/UCS-2 segments counted (nurture.rendering sms_segments). An SMS
  that can no longer be rendered (template removed, contact erased) counts as one segment
  and is reported as estimated.
- **offers** — redemptions of coupons: a purchase carrying `discount` (money) and/or a code
  (`coupon`, `code`, `coupon_code` or `discount_code`). A code declared on a send step
  (`offer: {code: X, value: 10}`) charges that step's journey; otherwise the discount is
  charged to the journey of the last message the buyer received before the purchase (within
  the 30-day attribution window; a step that declares an offer is preferred). The amount is
  the purchase's `discount`, else the offer's `value`, else `percent` of the list price
  (`value` paid × p / (100 − p)). Shops that track neither: a conversion credited to a
  journey after its offer message is counted as having used that offer.
- **fixed** — a journey's `fixed_costs` (per day, week, month = 365.25/12 days, year, or
  once), pro rata over the period the report covers for it: from the journey's first run
  (its first recorded version, else its first enrollment) to the report's time.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Optional, Sequence

from sqlalchemy import or_, select

from nurture.conditions import properties_match
from nurture.store.times import aware
from nurture.spec.models import Comparison, FixedCost, Offer
from nurture.spec.project import ProjectSpec
from nurture.store.models import SENT
from nurture.store.tables import contact_t, enrollment_t, event_t, message_t

CODE_KEYS = ("coupon", "code", "coupon_code", "discount_code")
PURCHASE = "purchase"
DAYS_PER = {"day": 1.0, "week": 7.0, "month": 365.25 / 12, "year": 365.25}
CHUNK = 5000


def chunked(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------- fixed costs


def fixed_cost(costs: Iterable[FixedCost], start: Optional[datetime], end: datetime) -> float:
    """The fixed costs of a journey over [start, end], pro rata by day; `once` in full."""
    if start is None or end <= start:
        return 0.0
    days = (end - start).total_seconds() / 86400
    total = 0.0
    for c in costs:
        total += c.amount if c.per == "once" else c.amount * days / DAYS_PER[c.per]
    return total


# ---------------------------------------------------------------- SMS segments


@dataclass
class SmsCount:
    messages: int = 0
    segments: int = 0
    estimated: int = 0  # messages that could not be rendered again: counted as one segment


def sms_segments_sent(conn: Any, project: ProjectSpec, journeys: Iterable[str], env: Mapping[str, str],
                      store: Any = None, now: Optional[datetime] = None) -> dict[tuple[str, str], SmsCount]:
    """(journey, step) → the billed segments of its SMS sent by `now` (see the module docstring)."""
    from nurture.rendering.email_message import sms_segments
    from nurture.rendering.links import tag_text, utm_query
    from nurture.send.context import ContextRow, imprint_of, recipient_links, template_context
    from nurture.settings import Settings

    names = list(journeys)
    out: dict[tuple[str, str], SmsCount] = defaultdict(SmsCount)
    if not names:
        return out
    trigger = event_t.alias("trigger_ev")
    rows = conn.execute(
        select(message_t.c.journey, message_t.c.step_id, message_t.c.template, message_t.c.purpose,
               message_t.c.contact_id, contact_t.c.email, contact_t.c.phone, contact_t.c.first_name,
               contact_t.c.last_name, contact_t.c.country, contact_t.c.locale, contact_t.c.timezone,
               contact_t.c.lifecycle_stage, contact_t.c.score, contact_t.c.attributes,
               trigger.c.name, trigger.c.properties, trigger.c.occurred_at)
        .select_from(message_t.join(contact_t, contact_t.c.id == message_t.c.contact_id)
                     .outerjoin(enrollment_t, enrollment_t.c.id == message_t.c.enrollment_id)
                     .outerjoin(trigger, trigger.c.id == enrollment_t.c.trigger_event_pk))
        .where(message_t.c.status == SENT, message_t.c.channel == "sms", message_t.c.journey.in_(names),
               *([message_t.c.sent_at <= now] if now is not None else []))).all()
    if not rows:
        return out
    settings = Settings.from_env(env)
    public_url, secret = settings.links_url, settings.signing_secret
    own_pages = (f"{public_url}/u/", f"{public_url}/confirm/")
    library = project.templates
    if store is not None:
        try:
            from nurture.catalog import install_catalog
            install_catalog(library, store)
        except Exception:  # pragma: no cover - the catalog is optional for SMS
            pass
    templates: dict[str, Any] = {}
    for (journey, step, template, purpose, contact_id, email, phone, first, last, country, locale, tz, stage,
         score, attributes, ev_name, ev_props, ev_at) in rows:
        count = out[(journey, step)]
        count.messages += 1
        try:
            if template not in templates:
                templates[template] = library.prepare_sms(template)
            spec = project.journeys.get(journey)
            context = template_context(
                ContextRow(contact_id, email, phone, first, last, country, locale, tz, stage, score, attributes,
                           step, ev_name, ev_props, ev_at),
                {"name": journey, "description": spec.description if spec else ""},
                recipient_links(public_url, secret, contact_id, purpose or "marketing", "sms"),
                imprint_of(project.policies.sender))
            body = tag_text(templates[template].render(context).strip(), utm_query("sms", journey, step), own_pages)
            count.segments += sms_segments(body)[1]
        except Exception:  # the template is gone or no longer renders for this contact
            count.segments += 1
            count.estimated += 1
    return out


# ---------------------------------------------------------------- offers


@dataclass
class OfferCharge:
    journey: str
    step: Optional[str]
    amount: float


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def code_of(props: Mapping[str, Any]) -> Optional[str]:
    for key in CODE_KEYS:
        value = props.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def offer_amount(offer: Offer, paid: Optional[float]) -> float:
    """What one redemption of a declared offer costs when the purchase does not say."""
    if offer.value is not None:
        return offer.value
    if offer.percent is not None and paid:
        return paid * offer.percent / (100 - offer.percent)
    return 0.0


def declared_offers(project: ProjectSpec, journeys: Iterable[str]) -> dict[tuple[str, str], Offer]:
    """(journey, step) → the offer its send step declares."""
    from nurture.compiler import compile_journey
    out: dict[tuple[str, str], Offer] = {}
    for name in journeys:
        spec = project.journeys.get(name)
        if spec is None:
            continue
        plan = compile_journey(spec)
        for sid in plan.order:
            node = plan.nodes[sid]
            if node.kind == "send" and node.step.send.offer is not None:
                out[(name, sid)] = node.step.send.offer
    return out


Touches = Mapping[int, Sequence[tuple[datetime, str, str]]]  # contact → (sent_at, journey, step), in time order


def redemptions(conn: Any, now: datetime, goal_events: Iterable[str]) -> list[tuple[int, int, datetime, dict]]:
    """Purchases (and goal events) that carry a discount or a coupon code:
    (event pk, contact, occurred_at, properties)."""
    present = Comparison.model_validate({"exists": True})
    tracked = or_(*[properties_match(event_t.c.properties, {key: present}) for key in ("discount", *CODE_KEYS)])
    names = sorted({PURCHASE, *goal_events})
    return [(pk, cid, at, dict(props or {})) for pk, cid, at, props in conn.execute(
        select(event_t.c.id, event_t.c.contact_id, event_t.c.occurred_at, event_t.c.properties)
        .where(event_t.c.name.in_(names), event_t.c.occurred_at <= now, tracked)
        .order_by(event_t.c.occurred_at, event_t.c.id))]


def charge_redemptions(events: Iterable[tuple[int, int, datetime, dict]], offers: Mapping[tuple[str, str], Offer],
                       touches: Touches, lookback: timedelta,
                       first_runs: Optional[Mapping[str, datetime]] = None) -> tuple[list[OfferCharge], float]:
    """Each tracked redemption → the journey (and step) it is charged to, and the amount.
    A declared code is charged to a journey only for a purchase from its first run on
    (`first_runs`: journey → first run; a purchase before it is no cost of the journey).
    Returns (charges, discounts charged to no journey)."""
    by_code: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, offer in offers.items():
        if offer.code:
            by_code[offer.code.casefold()].append(key)
    charges: list[OfferCharge] = []
    unplaced = 0.0
    for _, cid, at, props in events:
        code = code_of(props)
        discount = _number(props.get("discount"))
        discount = discount if discount is not None and discount > 0 else None
        before = [(j, s) for sent_at, j, s in touches.get(cid, ()) if at - lookback <= sent_at <= at]
        candidates = by_code.get(code.casefold(), []) if code else []
        if first_runs is not None:
            candidates = [k for k in candidates if k[0] in first_runs and first_runs[k[0]] <= aware(at)]
        if candidates:
            touched = [k for k in before if k in candidates]
            journey, step = touched[-1] if touched else candidates[0]
            amount = discount if discount is not None else offer_amount(offers[(journey, step)],
                                                                         _number(props.get("value")))
            charges.append(OfferCharge(journey, step, amount))
            continue
        if discount is None:
            continue  # a code nobody declared and no amount: nothing to charge
        with_offer = [k for k in before if k in offers]
        if with_offer or before:
            journey, step = (with_offer or before)[-1]
            charges.append(OfferCharge(journey, step, discount))
        else:
            unplaced += discount
    return charges, unplaced


def charge_untracked(conversions: Iterable[tuple[str, int, datetime, float, dict]],
                     offers: Mapping[tuple[str, str], Offer], touches: Touches,
                     lookback: timedelta) -> list[OfferCharge]:
    """Conversions credited to a journey whose event says nothing about a coupon (no
    `discount`, no code): the journey's last priced offer the buyer received before converting
    is counted as used — once per purchase, by the latest offer when several journeys converted
    on it. `conversions`: (journey, contact, converted_at, revenue, goal event properties)."""
    priced = {k for k, o in offers.items() if o.value is not None or o.percent is not None}
    if not priced:
        return []
    best: dict[tuple[int, datetime], tuple[datetime, str, str, float]] = {}
    for journey, cid, at, revenue, props in conversions:
        if "discount" in props or code_of(props):
            continue
        received = [(sent_at, j, s) for sent_at, j, s in touches.get(cid, ())
                    if j == journey and (j, s) in priced and at - lookback <= sent_at <= at]
        if received:
            sent_at, j, s = received[-1]
            if (cid, at) not in best or sent_at > best[(cid, at)][0]:
                best[(cid, at)] = (sent_at, j, s, revenue)
    return [OfferCharge(j, s, offer_amount(offers[(j, s)], revenue)) for _, j, s, revenue in best.values()]

"""Clicks and opens per send step, from the tracked `email_click` / `email_open` events.

An event belongs to (journey, step) by its properties — `journey` or `campaign` (or
`utm_campaign`), and `step` (or `utm_content`) — or else by the UTM parameters of its `url`:
Nurture tags every link of a message with utm_campaign=<journey> and utm_content=<step>.
Counted once per contact (unique clickers / openers), and only for contacts the step was
sent to. Opens are unreliable — image proxies (Apple Mail Privacy Protection, Gmail) fetch
the pixel for the recipient or block it — so they are reported only where `email_open` is
tracked at all, and labelled as such.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy import or_, select

from nurture.store.tables import event_t

CLICK, OPEN = "email_click", "email_open"


def step_of(props: Mapping[str, Any]) -> Optional[tuple[str, str]]:
    """(journey, step) an open/click event is about, or None."""
    journey = props.get("journey") or props.get("campaign") or props.get("utm_campaign")
    step = props.get("step") or props.get("utm_content")
    if (not journey or not step) and isinstance(props.get("url"), str):
        try:
            query = parse_qs(urlsplit(props["url"]).query)
        except ValueError:
            query = {}
        journey = journey or (query.get("utm_campaign") or [None])[0]
        step = step or (query.get("utm_content") or [None])[0]
    if isinstance(journey, str) and isinstance(step, str) and journey and step:
        return journey, step
    return None


def _names_a_step(props: Any) -> Any:
    """SQL: the event's properties say which step it is about (one of the ways step_of reads)."""
    return or_(props["step"].as_string().isnot(None), props["utm_content"].as_string().isnot(None),
               props["url"].as_string().contains("utm_content="))


def _about(props: Any, journeys: Iterable[str]) -> Any:
    """SQL: the event may be about one of `journeys` (step_of decides exactly, in Python)."""
    names = sorted(journeys)
    return or_(*[props[key].as_string().in_(names) for key in ("journey", "campaign", "utm_campaign")],
               *[props["url"].as_string().contains(f"utm_campaign={quote(name, safe='')}") for name in names])


def engagement(conn: Any, now: datetime, sent_to: Mapping[tuple[str, str], set]
               ) -> tuple[dict[str, dict[tuple[str, str], int]], dict[str, bool]]:
    """Unique contacts per (journey, step) that clicked / opened, and whether each kind is
    tracked at all (some event of that kind names a step). `sent_to`: (journey, step) →
    contacts the step was sent to. Only the events about these journeys leave the database."""
    seen: dict[str, dict[tuple[str, str], set]] = {CLICK: defaultdict(set), OPEN: defaultdict(set)}
    props = event_t.c.properties
    tracked = {name: conn.execute(select(event_t.c.id).where(event_t.c.name == name, event_t.c.occurred_at <= now,
                                                             _names_a_step(props)).limit(1)).first() is not None
               for name in (CLICK, OPEN)}
    journeys = {j for j, _ in sent_to}
    kinds = [name for name in (CLICK, OPEN) if tracked[name]]
    if not journeys or not kinds:
        return {name: {} for name in (CLICK, OPEN)}, tracked
    for name, cid, properties in conn.execute(
            select(event_t.c.name, event_t.c.contact_id, event_t.c.properties)
            .where(event_t.c.name.in_(kinds), event_t.c.occurred_at <= now, _about(props, journeys))):
        key = step_of(properties or {})
        if key is not None and cid in sent_to.get(key, ()):
            seen[name][key].add(cid)
    return {name: {k: len(v) for k, v in by_step.items()} for name, by_step in seen.items()}, tracked

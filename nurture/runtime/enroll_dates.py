"""Enrollment by a date trigger (`trigger: {date: birthday, offset: -3d, at: "09:00", every:
year}`): each occurrence of a contact date enrolls the contact once, at its local moment.

SQL selects only contacts that have the date set and whose month-day (yearly) or date (once)
lies in the few days that can be due now; Python then places each candidate's occurrence in
its own time zone (nurture.date_occurrences). An occurrence is its own entry whatever the
journey's `reentry` says (a birthday comes back every year), and never enrolls twice: the
enrollment's `trigger_key` names it, unique per journey and contact, so a re-run at the same
clock or a second worker adds nothing. A contact still active in the journey waits (never
twice at once) and enters on a later tick, within the trigger's lookback.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, func, not_, or_, select

from nurture.compiler import Plan
from nurture.conditions import ConditionScope, compile_condition
from nurture.date_occurrences import anchor_window, due_occurrence, month_days, parse_date_value
from nurture.privacy.tombstones import not_erased
from nurture.runtime.context import Runtime
from nurture.runtime.sql import chunks, ids_in, insert_ignore
from nurture.runtime.stable_random import in_holdout
from nurture.runtime.timing import arrival_due
from nurture.send.guards.quiet_hours import zone
from nurture.spec.models import Trigger
from nurture.store.tables import contact_t, enrollment_t

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DateEnrollment:
    enrolled: int = 0
    not_a_date: int = 0  # contacts in view whose value holds no date: skipped


def _value_and_prefilter(trigger: Trigger, now: datetime, dialect: str) -> tuple[Any, Any]:
    """(the date value to read, the SQL filter of contacts that may be due now or hold no date)."""
    name = trigger.date
    is_column = name in Trigger.DATE_COLUMNS
    value = contact_t.c[name] if is_column else contact_t.c.attributes[name].as_string()
    text = cast(value, String) if is_column else value
    first, last = anchor_window(now, trigger.date_offset, trigger.lookback)
    if trigger.every == "year":
        days = month_days(first, last)
        in_window = func.substr(text, 6, 5).in_(days) if days is not None else None
    else:
        in_window = func.substr(text, 1, 10).between(first.isoformat(), last.isoformat())
    if is_column or in_window is None:
        return value, value.isnot(None) if in_window is None else in_window
    # A value that is not shaped like a date is selected too, to be counted and skipped.
    if dialect == "postgresql":
        shaped = text.op("~")(r"^\d{4}-\d{2}-\d{2}")
    else:
        shaped = text.op("GLOB")("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*")
    return value, value.isnot(None) & or_(in_window, not_(shaped))


def enroll_on_dates(rt: Runtime, plan: Plan, now: datetime) -> DateEnrollment:
    journey = plan.journey
    trigger = journey.trigger
    default_tz = rt.project.policies.timezone
    first = plan.nodes[plan.first]
    with rt.store.engine.begin() as conn:
        value, prefilter = _value_and_prefilter(trigger, now, conn.dialect.name)
        filters = [prefilter, not_erased(contact_t.c.id)]
        if trigger.where is not None:
            filters.append(compile_condition(trigger.where, ConditionScope(now, rt.project.segments)))
        rows = conn.execute(select(contact_t.c.id, contact_t.c.timezone, value).where(*filters)
                            .order_by(contact_t.c.id)).all()
        due: dict[int, tuple[str, datetime, Any]] = {}
        bad: list[tuple[int, Any]] = []
        for contact_id, tz_name, raw in rows:
            tz = zone(tz_name, default_tz)
            anchor = raw.astimezone(tz).date() if isinstance(raw, datetime) else parse_date_value(raw)
            if anchor is None:
                bad.append((contact_id, raw))
                continue
            occurrence = due_occurrence(anchor, yearly=trigger.every == "year", offset=trigger.date_offset,
                                        at=trigger.local_time, tz=tz, now=now, lookback=trigger.lookback,
                                        anniversaries=trigger.date in Trigger.DATE_COLUMNS)
            if occurrence is not None:
                due[contact_id] = (occurrence.key, occurrence.moment, tz_name)
        if bad:
            contact_id, raw = bad[0]
            log.warning("journey %s: %d contact(s) have a %s that is not a date (e.g. contact %d: %r); "
                        "skipped", plan.name, len(bad), trigger.date, contact_id, raw)
        keys = sorted({key for key, _, _ in due.values()})
        ids = sorted(due)
        taken: set[int] = set()
        for part in chunks(ids):
            taken.update(contact_id for contact_id, key, status in conn.execute(
                select(enrollment_t.c.contact_id, enrollment_t.c.trigger_key, enrollment_t.c.status)
                .where(enrollment_t.c.journey == plan.name, ids_in(enrollment_t.c.contact_id, part),
                       or_(enrollment_t.c.status == "active", enrollment_t.c.trigger_key.in_(keys))))
                if status == "active" or key == due[contact_id][0])
        new_rows = [dict(contact_id=contact_id, journey=plan.name, version=plan.version, step_id=plan.first,
                         next_due_at=arrival_due(first, moment, tz_name, default_tz), step_entered_at=moment,
                         status="active", holdout=in_holdout(plan.name, contact_id, journey.holdout),
                         entered_at=moment, trigger_event_pk=None, trigger_key=key, revenue=0.0,
                         defer_count=0, state={})
                    for contact_id, (key, moment, tz_name) in due.items() if contact_id not in taken]
        # Two workers ticking at once: the unique key drops the second insert of an occurrence.
        insert_ignore(conn, enrollment_t, new_rows, ("journey", "contact_id", "trigger_key"))
        return DateEnrollment(len(new_rows), len(bad))

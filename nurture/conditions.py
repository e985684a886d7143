"""The condition language compiled to SQLAlchemy boolean expressions.

A condition is evaluated in the database for a whole batch (`WHERE <expr>` over contacts or
enrollments joined to contacts), never contact by contact in Python. The same compiler
serves journey triggers, exits, branches and segments; `ConditionScope` says what the
expression may refer to (the enrollment, the trigger event) and the logical clock.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional

from sqlalchemy import (ColumnElement, and_, bindparam, exists, false, func, not_, or_, select, true)

from nurture.consent_ledger import latest_consent_status
from nurture.spec.models import Comparison, Condition, CountCmp
from nurture.store.json_values import json_boolean, json_number, json_text, text_contains
from nurture.store.tables import contact_t, enrollment_t, event_t

CONTACT_COLUMNS = {"email", "phone", "first_name", "last_name", "timezone", "country", "locale",
                   "lifecycle_stage", "score", "created_at", "updated_at"}


@dataclass
class ConditionScope:
    now: datetime
    segments: Mapping[str, Any] = field(default_factory=dict)  # name -> Segment (with .when)
    in_enrollment: bool = False  # expressions may use enrollment_t columns
    trigger_event: Any = None  # an Event table (alias) whose row is the trigger, when enrolling
    _depth: int = 0
    # A parametrized scope: the clock goes into the expression as bind parameters (name → how
    # far before `now`, filled in here), so the expression can be built once and run at any
    # time with `clock_values(clock, now)`. None: the clock is a literal of the expression.
    clock: Optional[dict[str, timedelta]] = None

    def at(self, before: timedelta = timedelta(0)) -> Any:
        """The scope's time, less `before`."""
        if self.clock is None:
            return self.now - before
        seconds = int(before.total_seconds())
        name = f"clock_{'m' if seconds < 0 else ''}{abs(seconds)}"
        self.clock[name] = before
        return bindparam(name)  # (typed by the column it is compared with)


def clock_values(clock: Mapping[str, timedelta], now: datetime) -> dict[str, datetime]:
    """The parameters of a parametrized scope's expression at `now`."""
    return {name: now - before for name, before in clock.items()}


def _typed(column: Any, sample: Any) -> Any:
    """A JSON attribute as the SQL type its comparison value has: NULL where the stored value is
    not of that type (store.json_values: a contact's "abc" where a number belongs made
    PostgreSQL's cast fail, and the tick with it). Compared with text, a stored number or
    boolean is its text (10115, true), the same on both databases."""
    if isinstance(sample, bool):
        return json_boolean(column)
    if isinstance(sample, (int, float)):
        return json_number(column)
    return json_text(column)


def _as_text(value: Any) -> Any:
    """A value of a text comparison's list as the text a stored value is compared by: a number
    as written, a boolean true / false (`zip: {in: ["10115", 80331]}`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _sample(ops: Mapping[str, Any]) -> Any:
    for key in ("eq", "ne", "gt", "gte", "lt", "lte"):
        if ops.get(key) is not None:
            return ops[key]
    for key in ("in", "not_in"):
        values = [v for v in ops.get(key) or [] if v is not None]
        if values:
            return values[0]
    return ops.get("contains", "")


def compare(column_for: Any, cmp: Comparison, *, is_json: bool) -> ColumnElement:
    ops = cmp.operators()
    sample = _sample(ops)
    col = _typed(column_for, sample) if is_json else column_for
    if is_json and isinstance(sample, str):
        ops = {op: ([_as_text(v) if v is not None else None for v in value] if op in ("in", "not_in") else value)
               for op, value in ops.items()}
    raw_present = (column_for.as_string().isnot(None) if is_json else column_for.isnot(None))
    parts: list[ColumnElement] = []
    for op, value in ops.items():
        if op == "eq":
            parts.append(col.is_(None) if value is None else col == value)
        elif op == "ne":
            parts.append(col.isnot(None) if value is None else or_(col.is_(None), col != value))
        elif op == "gt":
            parts.append(col > value)
        elif op == "gte":
            parts.append(col >= value)
        elif op == "lt":
            parts.append(col < value)
        elif op == "lte":
            parts.append(col <= value)
        elif op == "in":
            parts.append(col.in_([v for v in value if v is not None]))
        elif op == "not_in":
            parts.append(or_(col.is_(None), col.not_in([v for v in value if v is not None])))
        elif op == "exists":
            parts.append(raw_present if value else not_(raw_present))
        elif op == "contains":  # (the stored value's text, whatever the other operators compare)
            parts.append(text_contains(json_text(column_for) if is_json else col, value))
    return and_(*parts) if parts else true()


def _attribute(name: str, cmp: Comparison) -> ColumnElement:
    if name in CONTACT_COLUMNS:
        return compare(contact_t.c[name], cmp, is_json=False)
    return compare(contact_t.c.attributes[name], cmp, is_json=True)


def properties_match(props_col: Any, where: Mapping[str, Comparison]) -> ColumnElement:
    return and_(*[compare(props_col[key], cmp, is_json=True) for key, cmp in where.items()])


def _count(expr: Any, cmp: CountCmp) -> ColumnElement:
    parts = []
    for op, value in cmp.model_dump(exclude_none=True).items():
        parts.append({"gte": expr >= value, "gt": expr > value, "lte": expr <= value,
                      "lt": expr < value, "eq": expr == value}[op])
    return and_(*parts)


def _event(cond: Condition, scope: ConditionScope) -> ColumnElement:
    ev = event_t.alias("ev_cond")
    filters = [ev.c.contact_id == contact_t.c.id, ev.c.name == cond.event, ev.c.occurred_at <= scope.at()]
    if cond.within is not None:
        filters.append(ev.c.occurred_at >= scope.at(cond.within))
    since = cond.since or ("enrollment" if scope.in_enrollment and cond.within is None else "ever")
    if since == "enrollment" and scope.in_enrollment:
        filters.append(ev.c.occurred_at >= enrollment_t.c.entered_at)
        filters.append(or_(enrollment_t.c.trigger_event_pk.is_(None), ev.c.id != enrollment_t.c.trigger_event_pk))
    if cond.where:
        filters.append(properties_match(ev.c.properties, cond.where))
    if cond.count is not None:
        counted = select(func.count()).select_from(ev).where(*filters).scalar_subquery()
        return _count(counted, cond.count)
    return exists(select(ev.c.id).where(*filters))


def _property(cond: Condition, scope: ConditionScope) -> ColumnElement:
    if scope.trigger_event is not None:
        return properties_match(scope.trigger_event.c.properties, cond.property)
    if not scope.in_enrollment:
        return false()
    ev = event_t.alias("trigger_ev")
    return exists(select(ev.c.id).where(ev.c.id == enrollment_t.c.trigger_event_pk,
                                        properties_match(ev.c.properties, cond.property)))


def compile_condition(cond: Condition, scope: ConditionScope) -> ColumnElement:
    parts: list[ColumnElement] = []
    if cond.all is not None:
        parts.append(and_(*[compile_condition(c, scope) for c in cond.all]))
    if cond.any is not None:
        parts.append(or_(*[compile_condition(c, scope) for c in cond.any]))
    if cond.not_ is not None:
        # Two-valued logic: a missing attribute makes the inner test NULL (unknown), and
        # NOT NULL would exclude the contact; "not a pro" must include contacts with no plan.
        parts.append(not_(func.coalesce(compile_condition(cond.not_, scope), false())))
    if cond.attribute is not None:
        parts.extend(_attribute(name, cmp) for name, cmp in cond.attribute.items())
    if cond.property is not None:
        parts.append(_property(cond, scope))
    if cond.event is not None:
        parts.append(_event(cond, scope))
    if cond.score is not None:
        parts.append(compare(contact_t.c.score, cond.score, is_json=False))
    if cond.consent is not None:  # the latest ledger row at the scope's time (nurture.consent_ledger)
        status = latest_consent_status(cond.consent.channel, cond.consent.purpose, scope.at())
        parts.append(status == cond.consent.status)
    if cond.segment is not None:
        segment = scope.segments.get(cond.segment)
        if segment is None or scope._depth > 8:
            raise ValueError(f"unknown or recursive segment '{cond.segment}'")
        inner = ConditionScope(scope.now, scope.segments, False, None, scope._depth + 1, scope.clock)
        parts.append(compile_condition(segment.when, inner))
    return and_(*parts) if len(parts) != 1 else parts[0]


def compile_any(conds: list[Condition], scope: ConditionScope) -> Optional[ColumnElement]:
    if not conds:
        return None
    return or_(*[compile_condition(c, scope) for c in conds])

"""The condition language compiled to SQLAlchemy boolean expressions.

A condition is evaluated in the database for a whole batch (`WHERE <expr>` over contacts or
enrollments joined to contacts), never contact by contact in Python. The same compiler
serves journey triggers, exits, branches and segments; `ConditionScope` says what the
expression may refer to (the enrollment, the trigger event) and the logical clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional

from sqlalchemy import (ColumnElement, and_, bindparam, exists, false, func, not_, or_, select, true)

from nurture.consent_ledger import latest_consent_status
from nurture.number_text import INT64
from nurture.spec.models import CONTACT_COLUMNS, Comparison, Condition, CountCmp, column_value
from nurture.store.json_values import json_boolean, json_number, json_text, text_contains
from nurture.store.tables import contact_t, enrollment_t, event_t


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


def _typed(column: Any, value: Any) -> Any:
    """A JSON attribute as the SQL type of the value it is compared with: NULL where the stored
    value is not of that type (store.json_values: a contact's "abc" where a number belongs made
    PostgreSQL's cast fail, and the tick with it). Compared with text, a stored number or
    boolean is its text (10115, true), the same on both databases."""
    if isinstance(value, bool):
        return json_boolean(column)
    if isinstance(value, (int, float)):
        return json_number(column)
    return json_text(column)


def _number(value: Any) -> Any:
    """A number as both databases compare it the same way: a whole number (50.0 too) as an
    integer, compared exactly (a stored 19-digit id is not "equal" to its neighbour, as it was
    in PostgreSQL's double precision); beyond 64 bits as a float (the databases bind no larger
    integer); a number with a fraction as a float."""
    if isinstance(value, float) and value.is_integer() and abs(value) < INT64:
        return int(value)
    if isinstance(value, int) and not -INT64 < value < INT64:
        try:
            return float(value)
        except OverflowError:  # beyond every double: larger than any stored number
            return math.copysign(math.inf, value)
    return value


def _kind(value: Any) -> type:
    return bool if isinstance(value, bool) else float if isinstance(value, (int, float)) else str


def _matches(col: Any, op: str, value: Any) -> ColumnElement:
    if op == "eq":
        return col == value
    if op == "ne":
        return or_(col.is_(None), col != value)
    return {"gt": col.__gt__, "gte": col.__ge__, "lt": col.__lt__, "lte": col.__le__}[op](value)


def _in(typed_as: Any, values: list[Any], negated: bool) -> ColumnElement:
    """`in` / `not_in` a list of values of one kind or several: each value compares as its own
    kind (README: a number as a number, text as text), whatever the others are."""
    groups: dict[type, list[Any]] = {}
    for value in values:
        if value is not None:
            groups.setdefault(_kind(value), []).append(value)
    if not groups:
        return true() if negated else false()
    parts = []
    for kind, members in groups.items():
        col = typed_as(members[0])
        members = [_number(v) for v in members] if kind is float else members
        parts.append(or_(col.is_(None), col.not_in(members)) if negated else col.in_(members))
    return and_(*parts) if negated else or_(*parts)


def compare(column_for: Any, cmp: Comparison, *, is_json: bool, column: Optional[str] = None) -> ColumnElement:
    """The comparison `cmp` of a JSON value (`is_json`: each value compares as its own kind) or
    of the contact column `column` (each value as the column's kind, CONTACT_COLUMNS)."""
    if is_json:
        def typed_as(value: Any) -> Any:
            return _typed(column_for, value)
        raw_present = json_text(column_for).isnot(None)
    else:
        def typed_as(value: Any) -> Any:
            return column_for
        raw_present = column_for.isnot(None)
    parts: list[ColumnElement] = []
    for op, value in cmp.operators().items():
        if op in ("in", "not_in"):
            if not is_json:
                value = _column_values(column, value or [])
            parts.append(_in(typed_as, value or [], op == "not_in"))
        elif op == "exists":
            parts.append(raw_present if value else not_(raw_present))
        elif op == "contains":  # (the stored value's text, whatever the other operators compare)
            if is_json:
                parts.append(text_contains(json_text(column_for), value))
            else:  # (validation refuses `contains` on a number or a time: here it finds nothing)
                parts.append(text_contains(column_for, value) if CONTACT_COLUMNS[column] == "text" else false())
        elif value is None:  # eq / ne null: the value is missing (or JSON null) / is there
            parts.append(not_(raw_present) if op == "eq" else raw_present)
        else:
            values = [value] if is_json else _column_values(column, [value])
            if not values:  # (validation refuses such a value: no value of the column equals it)
                parts.append(true() if op == "ne" else false())
                continue
            value = values[0]
            parts.append(_matches(typed_as(value), op, _number(value) if _kind(value) is float else value))
    return and_(*parts) if parts else true()


def _column_values(column: str, values: list[Any]) -> list[Any]:
    """`values` as the kind the contact column holds (spec.models.column_value), leaving out
    what is none — validation refuses those; a plan compiled before that is compared with what
    its values mean, never with text where a number belongs (which failed every tick)."""
    kept = []
    for value in values:
        if value is None:
            continue
        try:
            kept.append(column_value(column, value))
        except ValueError:
            pass
    return kept


def _attribute(name: str, cmp: Comparison) -> ColumnElement:
    if name in CONTACT_COLUMNS:
        return compare(contact_t.c[name], cmp, is_json=False, column=name)
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
        parts.append(compare(contact_t.c.score, cond.score, is_json=False, column="score"))
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

"""The scoring stage: every contact's score recomputed in one UPDATE, then the lifecycle
transitions, each set-based (the ids that move, one UPDATE per chunk of them, their
`lifecycle_stage_changed` events in bulk — nurture.lifecycle), no Python loop over contacts.

score = Σ fit points of the rules a contact matches
      + Σ over its events in the window: points × 0.5 ^ (age / half_life)

so an event's points halve every half-life. SQLite computes `power()` with its built-in math
functions (3.35+); where a build lacks them, an equivalent Python function is registered on
the connection before the statement runs. PostgreSQL has `power()` — and raises "value out of
range: underflow" where the result is too small for a double (past ~1,075 half-lives, which a
2h half-life in a 120d window reaches): an event older than NEGLIGIBLE_HALF_LIVES counts 0 on
both databases instead of failing everyone's score.

An erased person (docs/privacy.md) is left out of both: their kept events (names and times)
would score them again and promote them, so their score stays 0 and their stage where it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, cast, func, literal, select, Float, Integer
from sqlalchemy.exc import OperationalError

from nurture.conditions import ConditionScope, compile_condition, properties_match
from nurture.lifecycle import promote
from nurture.privacy.tombstones import not_erased
from nurture.runtime.sql import not_indexed
from nurture.scoring.spec import ScoringSpec
from nurture.store.db import Store
from nurture.store.tables import contact_t, event_t

# 0.5 ^ 500 ≈ 3e-151: nothing a score shows, and far enough from a double's underflow that
# points × decay cannot underflow either (PostgreSQL raises on that too).
NEGLIGIBLE_HALF_LIVES = 500.0
_EPOCH = datetime(1970, 1, 1)
_EPOCH_JULIAN_DAY = 2440587.5  # julianday('1970-01-01')


@dataclass
class ScoringResult:
    contacts: int = 0
    promoted: dict[str, int] = field(default_factory=dict)  # stage → contacts moved into it


def _age_days(conn: Any, occurred: Any, now: datetime) -> Any:
    """Days from `occurred` to `now`, to the microsecond on both databases (PostgreSQL's epoch
    is exact). Not a difference of julianday()s on SQLite: two doubles near 2.46e6 keep only
    ~40 µs, enough to move a score in its 10th digit and a contact across the MQL threshold.
    There the stored `YYYY-MM-DD HH:MM:SS.ffffff` gives its whole epoch seconds (julianday(),
    off by at most a millisecond and ~40 µs, rounded once its fraction is taken off) and its
    microseconds (the digits after the dot) apart; both differences are then exact. (Cheaper
    than strftime('%s'), which also rounds .999999 up to the next second.)"""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", literal(now) - occurred) / 86400.0
    now = now.astimezone(timezone.utc).replace(tzinfo=None) if now.tzinfo else now  # (naive: UTC already)
    now_seconds = (now.replace(microsecond=0) - _EPOCH) // timedelta(seconds=1)
    fraction = cast(func.substr(occurred, 21, 6), Integer) / 1e6
    seconds = func.round((func.julianday(occurred) - _EPOCH_JULIAN_DAY) * 86400.0 - fraction)
    return ((literal(now_seconds) - seconds) + (literal(now.microsecond / 1e6) - fraction)) / 86400.0


def _ensure_power(conn: Any) -> None:
    if conn.dialect.name != "sqlite":
        return
    try:
        conn.exec_driver_sql("SELECT power(0.5, 2)").scalar()
    except OperationalError:  # SQLite built without math functions
        conn.connection.driver_connection.create_function("power", 2, math.pow, deterministic=True)


def score_expression(conn: Any, spec: ScoringSpec, scope: ConditionScope) -> Any:
    """The SQL expression of a contact's new score (over `contact_t`)."""
    fit = sum((case((compile_condition(rule.when, scope), rule.points), else_=0.0) for rule in spec.fit),
              literal(0.0))
    rules = spec.behaviour.events
    if not rules:
        return fit
    points = case(*[(and_(event_t.c.name == name, *([properties_match(event_t.c.properties, rule.where)]
                                                     if rule.where else [])), rule.points)
                    for name, rule in rules.items()], else_=0.0)
    half_life_days = spec.behaviour.half_life.total_seconds() / 86400.0
    half_lives = _age_days(conn, event_t.c.occurred_at, scope.now) / half_life_days
    decay = case((half_lives > NEGLIGIBLE_HALF_LIVES, 0.0), else_=func.power(0.5, half_lives))
    # One seek per contact into ix_event_contact_name_time, its events read in order, instead
    # of one seek per scored event name (the name is tested on the index entry, not sought).
    behaviour = (select(func.coalesce(func.sum(points * decay), 0.0))
                 .where(event_t.c.contact_id == contact_t.c.id, not_indexed(event_t.c.name).in_(list(rules)),
                        event_t.c.occurred_at <= scope.now,
                        event_t.c.occurred_at > scope.now - spec.behaviour.window)
                 .scalar_subquery())
    return fit + cast(behaviour, Float)


def score_contacts(store: Store, spec: ScoringSpec, now: datetime, segments: Any = None) -> ScoringResult:
    """Recompute every score, then move contacts forward through the lifecycle (each move
    recorded as a `lifecycle_stage_changed` event, in the same transaction). Erased contacts
    are neither scored nor moved."""
    scope = ConditionScope(now, segments or {}, in_enrollment=False)
    result = ScoringResult()
    with store.engine.begin() as conn:
        _ensure_power(conn)
        result.contacts = conn.execute(contact_t.update().where(not_erased(contact_t.c.id))
                                       .values(score=score_expression(conn, spec, scope))).rowcount
        transitions = [("mql", contact_t.c.score >= spec.mql_threshold)]
        if spec.lifecycle.sql is not None:
            transitions.append(("sql", compile_condition(spec.lifecycle.sql, scope)))
        if spec.lifecycle.customer is not None:
            transitions.append(("customer", compile_condition(spec.lifecycle.customer, scope)))
        for stage, condition in transitions:
            result.promoted[stage] = promote(conn, stage, and_(condition, not_erased(contact_t.c.id)), now, source="scoring")
    return result

"""`nurture plan`: what the next tick would do now, without doing it.

The journey tick's own stages (nurture.runtime.tick.STAGES) run on a scratch copy of the
project's database (nurture.scratch) at the given clock, up to and including `advance` — the
stage that decides every send (guards + outbox) — and not `deliver` or `reconcile`, so no
message is rendered or handed to any channel. What the tick would do is read from the stages'
own reports: enrollments (a new journey's first tick enrolls everything within its trigger's
lookback), exits, conversions, and per step the messages that would go (queued now, plus
those queued earlier and due by now, which delivery would take), be deferred, suppressed or
skipped (by reason), or held out. Journeys are planned one after another on the same copy, as
`tick-all` ticks them, so a send one journey would make counts against another's caps.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from sqlalchemy import func, select

from nurture.runtime.context import Runtime, TickReport
from nurture.runtime.tick import STAGE_BY_NAME, STAGES, TickOptions, as_utc, calls
from nurture.store.models import DEFERRED, HOLDOUT, QUEUED, SENT, SKIPPED, SUPPRESSED
from nurture.store.tables import message_t

# Everything a tick decides, and nothing that delivers: the stages before `deliver`.
PLAN_STAGES = STAGES[:STAGES.index(STAGE_BY_NAME["deliver"])]


@dataclass
class StepPlan:
    step: str
    would_send: int = 0
    already_queued: int = 0  # of would_send: queued by an earlier tick and due now (delivery takes them)
    would_defer: Counter = field(default_factory=Counter)  # reason → n
    would_suppress: Counter = field(default_factory=Counter)
    would_skip: Counter = field(default_factory=Counter)
    would_hold_out: int = 0
    moves: Counter = field(default_factory=Counter)  # waited, then/else, arm:…, updated … → n

    @property
    def empty(self) -> bool:
        return not (self.would_send or self.would_defer or self.would_suppress or self.would_skip
                    or self.would_hold_out or self.moves)

    def as_dict(self) -> dict:
        return {"step": self.step, "would_send": self.would_send, "would_defer": dict(self.would_defer),
                "would_suppress": dict(self.would_suppress), "would_skip": dict(self.would_skip),
                "would_hold_out": self.would_hold_out, "already_queued": self.already_queued,
                "moves": dict(self.moves)}


@dataclass
class JourneyPlan:
    journey: str
    now: datetime
    would_enroll: int = 0
    would_exit: int = 0
    would_convert: int = 0
    would_migrate: int = 0
    steps: list[StepPlan] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.would_enroll or self.would_exit or self.would_convert or self.would_migrate or self.steps)

    def as_dict(self) -> dict:
        return {"journey": self.journey, "now": self.now.isoformat(), "would_enroll": self.would_enroll,
                "would_exit": self.would_exit, "would_convert": self.would_convert,
                "would_migrate": self.would_migrate, "steps": [s.as_dict() for s in self.steps]}


def _queued_due(rt: Runtime, journey: str, now: datetime) -> Counter:
    """step id → messages of `journey` waiting in the outbox, due by `now` (delivery's work)."""
    with rt.store.reading() as conn:
        return Counter(dict(conn.execute(
            select(message_t.c.step_id, func.count()).where(message_t.c.journey == journey,
                                                             message_t.c.status == QUEUED,
                                                             message_t.c.due_at <= now)
            .group_by(message_t.c.step_id)).all()))


def plan_journey(rt: Runtime, journey: str, now: datetime) -> JourneyPlan:
    """Run the deciding stages of one tick of `journey` at `now` on `rt` — which must be a
    Runtime over a scratch copy: the stages write to it — and say what they decided."""
    now = as_utc(now)
    earlier = _queued_due(rt, journey, now)
    report = TickReport(journey, now.isoformat())
    options = TickOptions(hand_off=False)  # (a large tick's advance stage would deliver as it goes)
    for stage in PLAN_STAGES:
        for call in calls(stage, rt, journey, now, options):
            report.merge(stage.run(call))
        report.ran.append(stage.name)
        if report.skipped:
            break
    result = JourneyPlan(journey, now, would_enroll=report.stages["enrolled"], would_exit=report.stages["exited"],
                         would_convert=report.stages["converted"], would_migrate=report.stages["migrated"])
    steps: dict[str, StepPlan] = {}

    def step(step_id: str) -> StepPlan:
        return steps.setdefault(step_id, StepPlan(step_id))

    for step_id, n in earlier.items():
        step(step_id).would_send += n
        step(step_id).already_queued += n
    for (step_id, status, reason), n in report.outcomes.items():
        if not n:
            continue
        entry = step(step_id)
        reason = reason or status
        if status in (QUEUED, SENT):
            entry.would_send += n
        elif status == DEFERRED:
            entry.would_defer[reason] += n
        elif status == SUPPRESSED:
            entry.would_suppress[reason] += n
        elif status == SKIPPED:
            entry.would_skip[reason] += n
        elif status == HOLDOUT:
            entry.would_hold_out += n
        else:
            entry.moves[status] += n
    order = {step_id: i for i, step_id in enumerate(rt.plan(journey).order)}
    result.steps = sorted((s for s in steps.values() if not s.empty),
                          key=lambda s: (order.get(s.step, len(order)), s.step))
    return result


def plan_tick(rt: Runtime, journeys: Iterable[str], now: datetime) -> list[JourneyPlan]:
    """What the next tick of each journey would do at `now`, in tick-all's order, on the
    scratch copy `rt` runs over."""
    return [plan_journey(rt, journey, now) for journey in journeys]

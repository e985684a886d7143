"""One tick of one journey, stage by stage — what the Prefect flow sequences as tasks."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from nurture.runtime.advance import advance
from nurture.runtime.context import Runtime, TickReport
from nurture.runtime.deliver import deliver, reconcile_stuck
from nurture.runtime.enroll import enroll
from nurture.runtime.parallel import pipelined
from nurture.runtime.outcomes import apply_exits, record_conversions
from nurture.runtime.versions import migrate_enrollments, record_version


def as_utc(now: Optional[datetime]) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def prepare(rt: Runtime, journey: str, now: datetime) -> TickReport:
    plan = rt.plan(journey)
    report = TickReport(journey, now.isoformat())
    record_version(rt, plan, now)
    report.stages["migrated"] += migrate_enrollments(rt, plan, now)
    return report


def stage_enroll(rt: Runtime, journey: str, now: datetime) -> int:
    return enroll(rt, rt.plan(journey), now)


def stage_exit_convert(rt: Runtime, journey: str, now: datetime) -> tuple[int, int]:
    plan = rt.plan(journey)
    converted = record_conversions(rt, plan, now)
    exited = apply_exits(rt, plan, now)
    return converted, exited


def run_tick(rt: Runtime, journey: str, now: Optional[datetime] = None, workers: int = 1) -> TickReport:
    """enroll → exit/convert → advance (guards + outbox) → deliver; returns the counts."""
    now = as_utc(now)
    report = prepare(rt, journey, now)
    report.stages["enrolled"] += stage_enroll(rt, journey, now)
    converted, exited = stage_exit_convert(rt, journey, now)
    report.stages["converted"] += converted
    report.stages["exited"] += exited
    reconcile_stuck(rt, now)
    if workers > 1:  # large ticks: delivery processes work while the advance stage queues
        advanced, delivered = pipelined(rt, now, journey, workers, lambda: advance(rt, rt.plan(journey), now))
        report.outcomes.update(advanced)
        report.outcomes.update(delivered)
        return report
    report.outcomes.update(advance(rt, rt.plan(journey), now))
    report.outcomes.update(deliver(rt, now, journey))
    return report

"""One tick of one journey, declared once: the stages in order, each a named function of the
engine. Every runner iterates this declaration and nothing else — `run_tick` (tests, the demo,
in-process callers) and the Prefect flow `journey-tick` (flows/journey.py wraps each stage as a
task, with retries, logs and artifacts) — so the two can never disagree on order or counts.

    prepare (decide auto_winner splits, record the journey version, migrate in-flight contacts
             of an edited or newly decided journey — or stop the tick, `report.skipped`, when
             this process's version of the journey is older than the live one)
    → enroll → exit/convert → advance (guards + outbox, one send transaction per batch)
    → deliver (claim with re-check, render, hand over, record; partitioned)
    → reconcile (sends a crashed worker left `sending`)

A stage returns a `TickReport` of what it did; the runner merges them. The `report` stage of
the flow (artifacts) is the runner's own business, not the engine's.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

from nurture.runtime.auto_winner import decide_splits
from nurture.runtime.context import Runtime, TickReport
from nurture.runtime.enroll import enroll
from nurture.runtime.outcomes import apply_exits, record_conversions
from nurture.runtime.parallel import LARGE_TICK, due_enrollments, handed_in_process, pipelined
from nurture.runtime.versions import SUPERSEDED, migrate_enrollments, record_version, superseded
from nurture.send.deliver import channels_down, deliver
from nurture.send.reconcile import reconcile_stuck
from nurture.steps.advance import advance


def as_utc(now: Optional[datetime]) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


@dataclass(frozen=True)
class TickOptions:
    """How a tick runs, not what it does: delivery processes pipelined with the guards on a
    large tick (1: everything in the tick's process) and delivery partitions (claims split by
    message id, one task each under Prefect)."""
    workers: int = 1
    partitions: int = 1
    # The advance stage may hand its messages to delivery as each batch commits (pipelined on a
    # large tick, else in this process). False: it only queues them — `nurture plan`, which
    # runs the deciding stages and must render and deliver nothing.
    hand_off: bool = True


@dataclass(frozen=True)
class StageCall:
    rt: Runtime
    journey: str
    now: datetime
    options: TickOptions = TickOptions()
    partition: int = 0
    partitions: int = 1
    # channels an earlier stage of this tick found unusable (the advance stage's hand-off): the
    # deliver stage leaves their messages queued instead of trying the channel again
    skip_channels: frozenset[str] = frozenset()
    # What the stage counts in (None: a report of its own) as its work commits — the advance
    # and deliver stages batch by batch — so that when it fails part-way, this holds what was
    # done. A runner that retries the stage (flows/journey.py) passes the failed attempt's on:
    # the tick reports every attempt's work (the messages a failed attempt sent were sent).
    report: Optional[TickReport] = None


@dataclass(frozen=True)
class Stage:
    name: str  # as operators see it: the Prefect task's name, the log line's prefix
    run: Callable[[StageCall], TickReport]
    partitioned: bool = False  # runs once per delivery partition (in parallel under Prefect)


def _report(call: StageCall) -> TickReport:
    return call.report if call.report is not None else TickReport(call.journey, call.now.isoformat())


def prepare(call: StageCall) -> TickReport:
    """Decide `auto_winner` splits (a decision re-plans: a new version), record the version the
    tick runs, and move in-flight enrollments of older versions onto it. A process that read its
    files before a newer edit was recorded does none of that: the tick stops here, `skipped`
    (every runner stops when a stage's report says so)."""
    report = _report(call)
    decided = decide_splits(call.rt, call.journey, call.now)
    if decided:  # a stage count only where auto_winner exists: other journeys' reports unchanged
        report.stages["decided"] += decided
    plan = call.rt.plan(call.journey)
    with call.rt.store.reading() as conn:
        if superseded(conn, call.rt, plan):  # this process's files are older than the live version
            report.skipped = SUPERSEDED
            return report
    if not record_version(call.rt, plan, call.now):  # a newer edit was recorded meanwhile
        report.skipped = SUPERSEDED
        return report
    report.stages["migrated"] += migrate_enrollments(call.rt, plan, call.now)
    return report


def enroll_stage(call: StageCall) -> TickReport:
    report = _report(call)
    report.stages["enrolled"] += enroll(call.rt, call.rt.plan(call.journey), call.now)
    return report


def exit_convert(call: StageCall) -> TickReport:
    report = _report(call)
    plan = call.rt.plan(call.journey)
    report.stages["converted"] += record_conversions(call.rt, plan, call.now)
    report.stages["exited"] += apply_exits(call.rt, plan, call.now)
    return report


def advance_stage(call: StageCall) -> TickReport:
    """Guards + outbox for every due step; the messages that may go are handed over claimed
    (nurture.send.handoff) as each batch's send transaction commits. A large tick with more
    than one delivery process pipelines: delivery processes send each batch while the next one
    is guarded. Otherwise this process sends each batch itself, from the rows its checks read
    — no claim and load of the queue again by the deliver stage — unless delivery is split into
    partitions (the deliver stage's flow runs send them) or nothing may be handed to a channel
    (`nurture plan`)."""
    report = _report(call)
    rt, journey, now, options = call.rt, call.journey, call.now, call.options
    counts = report.outcomes  # the guards' outcomes and the deliveries', batch by batch as they commit
    produce = lambda: advance(rt, rt.plan(journey), now, counts)  # noqa: E731
    if options.hand_off and options.workers > 1 and due_enrollments(rt, now, journey) >= LARGE_TICK:
        pipelined(rt, now, journey, options.workers, produce, counts)
    elif options.hand_off and options.partitions <= 1:
        handed_in_process(rt, now, produce, counts)
    else:
        produce()
    return report


def deliver_stage(call: StageCall) -> TickReport:
    report = _report(call)
    deliver(call.rt, call.now, call.journey, call.partition, call.partitions, skip_channels=call.skip_channels,
            report=report.outcomes)
    return report


def reconcile(call: StageCall) -> TickReport:
    report = _report(call)
    for status, n in reconcile_stuck(call.rt, call.now).items():
        report.stages[f"reconciled_{status}"] += n
    return report


STAGES: tuple[Stage, ...] = (
    Stage("prepare", prepare),
    Stage("enroll", enroll_stage),
    Stage("exit-convert", exit_convert),
    Stage("advance", advance_stage),
    Stage("deliver", deliver_stage, partitioned=True),
    Stage("reconcile", reconcile),
)
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def calls(stage: Stage, rt: Runtime, journey: str, now: datetime, options: TickOptions,
          skip_channels: Iterable[str] = ()) -> list[StageCall]:
    """The calls a runner makes for one stage: one, or one per delivery partition.
    `skip_channels`: what the tick's earlier stages found unusable (`channels_down` of their
    merged report)."""
    parts = max(1, options.partitions) if stage.partitioned else 1
    return [StageCall(rt, journey, now, options, i, parts, frozenset(skip_channels)) for i in range(parts)]


def run_tick(rt: Runtime, journey: str, now: Optional[datetime] = None, workers: int = 1,
             partitions: int = 1) -> TickReport:
    """Every stage of STAGES in order, in this process, on one held connection (Store.held);
    the merged counts."""
    now = as_utc(now)
    options = TickOptions(workers=workers, partitions=partitions)
    report = TickReport(journey, now.isoformat())
    with rt.store.held():
        for stage in STAGES:
            for call in calls(stage, rt, journey, now, options, channels_down(report.outcomes)):
                report.merge(stage.run(call))
            report.ran.append(stage.name)
            if report.skipped:
                break
    return report

"""Journey ticks as Prefect flows.

Every journey YAML becomes a flow named `journey-<name>` (a `with_options` copy of
`journey_tick`), run as a subflow of `tick-all`: a new YAML file shows up in the UI on the
next tick with no Python and no prefect.yaml edit. Tasks are the stages, never contacts:
enroll → exit/convert → advance → deliver (in parallel partitions) → report.

On a large tick (`LARGE_TICK`: 20,000 contacts due) with more than one delivery process (by
default one per CPU core; `delivery_processes=1` keeps everything in the flow's process), the
advance task runs as `advance+deliver`: delivery processes start with it and send each batch the guards
queue while the next batch is guarded (`nurture.runtime.parallel.pipelined`); the deliver
tasks then send whatever is left. Rendering is CPU-bound Python, so processes, not threads.
"""
from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.runtime import logical_now, runtime_for
from nurture.redaction import redact, secrets_in
from nurture.runtime.advance import advance
from nurture.runtime.context import TickReport
from nurture.runtime.deliver import deliver, reconcile_stuck
from nurture.runtime.parallel import LARGE_TICK, default_processes, due_enrollments, pipelined
from nurture.runtime.tick import prepare, stage_enroll, stage_exit_convert


@task(name="enroll", retries=2, retry_delay_seconds=5)
def enroll_task(project: Optional[str], journey: str, now: datetime) -> int:
    rt = runtime_for(project)
    prepare(rt, journey, now)
    return stage_enroll(rt, journey, now)


@task(name="exit-convert", retries=2, retry_delay_seconds=5)
def exit_convert_task(project: Optional[str], journey: str, now: datetime) -> tuple[int, int]:
    return stage_exit_convert(runtime_for(project), journey, now)


@task(name="advance", retries=2, retry_delay_seconds=5)
def advance_task(project: Optional[str], journey: str, now: datetime) -> dict:
    rt = runtime_for(project)
    return dict(advance(rt, rt.plan(journey), now))


@task(name="advance+deliver", retries=2, retry_delay_seconds=5)
def advance_deliver_task(project: Optional[str], journey: str, now: datetime, processes: int) -> tuple[dict, dict]:
    rt = runtime_for(project)
    advanced, delivered = pipelined(rt, now, journey, processes, lambda: advance(rt, rt.plan(journey), now))
    return dict(advanced), dict(delivered)


@task(name="deliver", retries=2, retry_delay_seconds=10)
def deliver_task(project: Optional[str], journey: str, now: datetime, partition: int, partitions: int) -> dict:
    rt = runtime_for(project)
    if partition == 0:
        reconcile_stuck(rt, now)
    return dict(deliver(rt, now, journey, partition, partitions))


def artifact_key(journey: str) -> str:
    return "journey-" + journey.replace("_", "-").lower()


@task(name="report")
def report_task(project: Optional[str], journey: str, now: datetime, enrolled: int, converted: int, exited: int,
                outcomes: list[dict]) -> dict:
    report = TickReport(journey, now.isoformat())
    report.stages.update({"enrolled": enrolled, "converted": converted, "exited": exited})
    for part in outcomes:
        report.outcomes.update(part)
    table = report.table()
    create_table_artifact(key=artifact_key(journey), table=table or [{"step": "-", "outcome": "nothing due", "reason": "", "count": 0}],
                          description=f"Tick of {journey} at {now.isoformat()}: enrolled {enrolled}, "
                                      f"converted {converted}, exited {exited}")
    # What the journey has earned so far, for the operator in the UI (the `nurture report` figures).
    from nurture.reporting.summary import journey_summary
    rt = runtime_for(project)
    markdown, rows = journey_summary(rt.store, rt.project, journey, now)
    create_markdown_artifact(key=f"{artifact_key(journey)}-summary", markdown=markdown,
                             description=f"{journey}: funnel, conversions, revenue, lift, ROI")
    create_table_artifact(key=f"{artifact_key(journey)}-steps", table=rows or [{"step": "-"}],
                          description=f"{journey}: per-step funnel and outcomes since the first run")
    get_run_logger().info("%s at %s: enrolled %d, converted %d, exited %d, %d outcome rows",
                          journey, now.isoformat(), enrolled, converted, exited, len(table))
    return {"journey": journey, "now": now.isoformat(), "enrolled": enrolled, "converted": converted,
            "exited": exited, "outcomes": table}


@flow(name="journey-tick", log_prints=True)
def journey_tick(journey: str, project: Optional[str] = None, now: Optional[datetime] = None,
                 partitions: int = 1, delivery_processes: Optional[int] = None) -> dict:
    clock = logical_now(now)
    delivery_processes = delivery_processes or default_processes()
    enrolled = enroll_task(project, journey, clock)
    converted, exited = exit_convert_task(project, journey, clock)
    outcomes = []
    if delivery_processes > 1 and due_enrollments(runtime_for(project), clock, journey) >= LARGE_TICK:
        outcomes.extend(advance_deliver_task(project, journey, clock, delivery_processes))
    else:
        outcomes.append(advance_task(project, journey, clock))
    futures = [deliver_task.submit(project, journey, clock, i, partitions) for i in range(partitions)]
    outcomes.extend(f.result() for f in futures)
    return report_task(project, journey, clock, enrolled, converted, exited, outcomes)


def journey_flow(name: str):
    """The flow of one journey, named `journey-<name>`."""
    return journey_tick.with_options(name=f"journey-{name}")


class JourneysFailed(Exception):
    """Some journeys of a tick failed (each isolated: the others ran). `results` holds every
    journey's result, a failed one as {"journey", "now", "error"}."""

    def __init__(self, message: str, results: list[dict]):
        super().__init__(message, results)
        self.results = results

    def __str__(self) -> str:
        return self.args[0]


def failure_text(state: Any) -> str:
    """One line saying why a journey's flow run failed (no traceback), secrets redacted."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as error:  # the result itself could not be read
        exc = error
    exc = getattr(exc, "orig", None) or exc  # a database error: the driver's words, not the SQL text
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else (state.message or "failed")
    return redact(" ".join(text.split())[:500], secrets_in(os.environ)) or "failed"


@flow(name="tick-all", log_prints=True)
def tick_all(project: Optional[str] = None, now: Optional[datetime] = None, journey: Optional[str] = None,
             partitions: int = 1, delivery_processes: Optional[int] = None) -> list[dict]:
    """One tick of every journey (or one): what the 5-minute deployment runs. A journey that
    fails is isolated: the others still tick, and the run ends Failed naming it."""
    clock = logical_now(now)
    rt = runtime_for(project)
    names = [journey] if journey else sorted(rt.project.journeys)
    results: list[dict] = []
    failed: list[str] = []
    for name in names:
        state = journey_flow(name)(journey=name, project=project, now=clock, partitions=partitions,
                                   delivery_processes=delivery_processes, return_state=True)
        if state.is_completed():
            results.append(state.result())
            continue
        error = failure_text(state)
        get_run_logger().error("journey %s failed, the other journeys ran: %s", name, error)
        failed.append(f"{name} ({error})")
        results.append({"journey": name, "now": clock.isoformat(), "error": error})
    if failed:
        raise JourneysFailed(f"{len(failed)} of {len(names)} journey(s) failed: " + "; ".join(failed), results)
    return results

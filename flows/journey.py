"""Journey ticks as Prefect flows.

Every journey YAML becomes a flow named `journey-<name>` (a `with_options` copy of
`journey_tick`), run as a subflow of `tick-all`: a new YAML file shows up in the UI on the
next tick with no Python and no prefect.yaml edit. Tasks are the stages, never contacts: the
flow iterates the engine's one declaration of a tick (`nurture.runtime.tick.STAGES`: prepare →
enroll → exit/convert → advance → deliver, in parallel partitions → reconcile) and adds what
is Prefect's: a task per stage with retries, a log line per stage with its counts, and the
artifacts (`report`). No stage logic lives here.

On a large tick (`LARGE_TICK`: 20,000 contacts due) with more than one delivery process (by
default one per CPU core; `delivery_processes=1` keeps everything in the flow's process), the
advance stage pipelines delivery processes with the guards (`nurture.runtime.parallel`);
rendering is CPU-bound Python, so processes, not threads. Otherwise, unless delivery is split
into partitions, the advance stage sends each batch itself as soon as it is committed (the
same hand-off, in process); the deliver stage then takes what else is queued.

A journey with errors in its files does not tick: its flow run ends Failed with the located
errors as its message (no traceback), and `tick-all` goes on with the others.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import task_run
from prefect.states import Failed

from flows.runtime import identity_line, logical_now, retry_unless_invalid, runtime_for
from nurture.redaction import redact, secrets_in
from nurture.runtime.context import TickReport
from nurture.runtime.instant import take_instant_runs
from nurture.runtime.parallel import default_processes
from nurture.runtime.tick import STAGE_BY_NAME, STAGES, TickOptions, calls
from nurture.send.deliver import channels_down
from nurture.send.reconcile import reconciled_text

# What an operator reads first in a stage's log line and the tick-all summary.
HEADLINE = ("sent", "retry", "failed", "deferred", "suppressed", "skipped", "holdout", "unavailable")


# What the failed attempts of a stage task run had done when they failed, by task run id. A
# stage commits as it goes (the advance stage sends each batch once it commits), so a retry
# goes on from there and its report is added to theirs: the tick reports every attempt's work.
_ATTEMPTED: dict[str, TickReport] = {}


@task(name="stage", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_invalid)
def stage_task(project: Optional[str], journey: str, now: datetime, stage: str, options: TickOptions,
               partition: int, partitions: int, skip_channels: tuple[str, ...] = ()) -> TickReport:
    attempt = task_run.id
    report = _ATTEMPTED.pop(attempt, None) or TickReport(journey, now.isoformat())
    call = calls(STAGE_BY_NAME[stage], runtime_for(project), journey, now, options, skip_channels)[partition]
    try:
        return STAGE_BY_NAME[stage].run(replace(call, report=report))
    except BaseException:
        _ATTEMPTED[attempt] = report  # (forgotten by the flow once the task run is over)
        raise


def artifact_key(journey: str) -> str:
    return "journey-" + journey.replace("_", "-").lower()


def counts_text(report: TickReport) -> str:
    """`enrolled 3, queued 2, sent 2` — the non-zero counts of a stage, for its log line."""
    totals = report.totals()
    parts = [f"{k} {v}" for k, v in sorted(report.stages.items()) if v]
    if report.queued:
        parts.append(f"queued {report.queued}")
    parts += [f"{k} {totals[k]}" for k in HEADLINE if totals.get(k)]
    return ", ".join(parts) or "nothing to do"


@task(name="report")
def report_task(project: Optional[str], journey: str, now: datetime, report: TickReport) -> dict:
    rt = runtime_for(project)
    table = report.table(rt.plan(journey).order)
    stages = {k: report.stages.get(k, 0) for k in ("enrolled", "converted", "exited", "migrated")}
    # What the reconcile stage recorded for the messages a crashed run left `sending`, by status.
    reconciled = {k[len("reconciled_"):]: n for k, n in sorted(report.stages.items())
                  if k.startswith("reconciled_") and n}
    # What `nurture web` ran instantly since the last tick (nurture.runtime.instant).
    instant = take_instant_runs(rt.store, journey)
    create_table_artifact(
        key=artifact_key(journey),
        table=table or [{"step": "(none)", "outcome": "nothing due", "reason": "", "count": 0}],
        description=(f"Tick of {journey} at {now.isoformat()}: enrolled {stages['enrolled']}, converted "
                     f"{stages['converted']}, exited {stages['exited']}, queued {report.queued} "
                     f"(each queued message is counted again by its delivery outcome below); "
                     + (f"{reconciled_text(reconciled)}; " if reconciled else "")
                     + (f"since the last tick, instant triggers ran {instant_text(instant)}; " if instant else "")
                     + identity_line(project)))
    # What the journey has earned so far, for the operator in the UI (the `nurture report` figures).
    from nurture.reporting.summary import journey_summary
    markdown, rows = journey_summary(rt.store, rt.project, journey, now)
    create_markdown_artifact(key=f"{artifact_key(journey)}-summary", markdown=markdown,
                             description=f"{journey}: funnel, conversions, revenue, lift, ROI")
    create_table_artifact(key=f"{artifact_key(journey)}-steps", table=rows or [{"step": "(none)"}],
                          description=f"{journey}: per-step funnel and outcomes since the first run")
    get_run_logger().info("%s at %s: %s", journey, now.isoformat(), counts_text(report))
    if instant:
        get_run_logger().info("%s: since the last tick, instant triggers ran %s", journey, instant_text(instant))
    return {"journey": journey, "now": now.isoformat(), **stages, "queued": report.queued, "reconciled": reconciled,
            "totals": dict(report.totals()), "outcomes": table, "stages_run": list(report.ran), "instant": instant,
            **({"skipped": report.skipped} if report.skipped else {})}


def instant_text(instant: dict) -> str:
    """`4 times (12:00:01–12:03:40): enrolled 4, sent 4`."""
    counts = ", ".join(f"{k} {v}" for k, v in instant.items() if k not in ("runs", "first", "last") and v)
    return (f"{instant['runs']} time(s) ({instant['first'][11:19]}–{instant['last'][11:19]} UTC)"
            + (f": {counts}" if counts else ""))


@flow(name="journey-tick", log_prints=True)
def journey_tick(journey: str, project: Optional[str] = None, now: Optional[datetime] = None,
                 partitions: int = 1, delivery_processes: Optional[int] = None) -> Any:
    clock = logical_now(now)
    logger = get_run_logger()
    rt = runtime_for(project)
    problems = [str(p) for p in rt.project.errors_of(journey)]
    if journey not in rt.project.journey_names:
        problems.append(f"no journey named '{journey}' in {rt.project.journeys_dir}")
    if problems:  # a broken journey fails alone, with its located errors and no traceback
        for problem in problems:
            logger.error("%s", problem)
        return Failed(message=f"{journey} has errors and did not tick: " + "; ".join(problems))
    options = TickOptions(workers=delivery_processes or default_processes(), partitions=max(1, partitions))
    report = TickReport(journey, clock.isoformat())
    for stage in STAGES:
        task_ = stage_task.with_options(name=stage.name)
        down = tuple(sorted(channels_down(report.outcomes)))  # (found unusable by an earlier stage)
        futures = [task_.submit(project, journey, clock, stage.name, options, c.partition, c.partitions, down)
                   for c in calls(stage, rt, journey, clock, options)]
        done = TickReport(journey, clock.isoformat())
        for future in futures:
            future.wait()
            _ATTEMPTED.pop(str(future.task_run_id), None)  # (a stage that failed for good: no retry to come)
        for future in futures:
            done.merge(future.result())
        report.merge(done)
        report.ran.append(stage.name)
        logger.info("%s: %s", stage.name, counts_text(done))
        if report.skipped:  # (this process read the journey's files before a newer edit went live)
            logger.warning("%s did not tick: %s", journey, report.skipped)
            break
    return report_task(project, journey, clock, report)


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
    if isinstance(exc, BaseException) and not type(exc).__name__ == "FailedRun":
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = state.message or "failed"
    return redact(" ".join(text.split())[:2000], secrets_in(os.environ)) or "failed"


def summary_rows(results: list[dict]) -> list[dict]:
    """tick-all's artifact: one row per journey, the counts an operator scans for."""
    rows = []
    for r in results:
        totals = Counter(r.get("totals") or {})
        row = {"journey": r["journey"], "status": "failed" if "error" in r else "ok",
               "enrolled": r.get("enrolled", 0), "converted": r.get("converted", 0), "exited": r.get("exited", 0),
               **{k: totals.get(k, 0) for k in HEADLINE},
               "instant_runs": (r.get("instant") or {}).get("runs", 0),
               "instant_sent": (r.get("instant") or {}).get("sent", 0), "error": r.get("error", "")}
        rows.append(row)
    return rows


@flow(name="tick-all", log_prints=True)
def tick_all(project: Optional[str] = None, now: Optional[datetime] = None, journey: Optional[str] = None,
             partitions: int = 1, delivery_processes: Optional[int] = None) -> list[dict]:
    """One tick of every journey (or one): what the 5-minute deployment runs. A journey that
    fails is isolated: the others still tick, and the run ends Failed naming it."""
    clock = logical_now(now)
    rt = runtime_for(project)
    logger = get_run_logger()
    names = [journey] if journey else rt.project.journey_names
    results: list[dict] = []
    failed: list[str] = []
    for name in names:
        state = journey_flow(name)(journey=name, project=project, now=clock, partitions=partitions,
                                   delivery_processes=delivery_processes, return_state=True)
        if state.is_completed():
            results.append(state.result())
            continue
        error = failure_text(state)
        logger.error("journey %s failed, the other journeys ran: %s", name, error)
        failed.append(f"{name} ({error})")
        results.append({"journey": name, "now": clock.isoformat(), "error": error})
    create_table_artifact(key="tick-all", table=summary_rows(results) or [{"journey": "(none)"}],
                          description=f"Tick of every journey at {clock.isoformat()}: what each sent, "
                                      f"deferred, refused or failed; {identity_line(project)}")
    if failed:
        raise JourneysFailed(f"{len(failed)} of {len(names)} journey(s) failed: " + "; ".join(failed), results)
    return results

"""The hourly `scoring` flow: recompute every lead score and lifecycle stage (one set-based
SQL pass, nurture.scoring.compute), then retry handovers whose delivery to sales failed."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.runtime import logical_now, require_valid, retry_unless_invalid, runtime_for
from nurture.scoring.compute import score_contacts
from nurture.scoring.handover import retry_pending


@task(name="score", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_invalid)
def score_task(project: Optional[str], now: datetime) -> dict:
    rt = runtime_for(project)
    require_valid(rt, "scoring", "segments")
    spec = rt.project.extra.get("scoring")
    if spec is None:
        return {"contacts": 0, "promoted": {}, "skipped": "no journeys/scoring.yaml"}
    result = score_contacts(rt.store, spec, now, rt.project.segments)
    return {"contacts": result.contacts, "promoted": result.promoted}


@task(name="retry-handovers", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_invalid)
def retry_handovers_task(project: Optional[str], now: datetime) -> dict:
    return dict(retry_pending(runtime_for(project), now))


@flow(name="scoring", log_prints=True)
def scoring(project: Optional[str] = None, now: Optional[datetime] = None) -> dict:
    clock = logical_now(now)
    runtime_for(project)  # which project and database (logged); a refused database fails here, not retried
    scored = score_task(project, clock)
    retried = retry_handovers_task(project, clock)
    promoted = ", ".join(f"{n} to {stage}" for stage, n in scored.get("promoted", {}).items()) or "none"
    create_markdown_artifact(key="lead-scoring", markdown=(
        f"### Lead scoring at {clock:%Y-%m-%d %H:%M} UTC\n\nScored **{scored['contacts']}** contacts; "
        f"lifecycle moves: {promoted}. Handover retries: {retried or 'none'}.\n"))
    get_run_logger().info("scored %s contacts; promoted %s; handover retries %s", scored["contacts"], promoted, retried)
    return {"scored": scored, "handover_retries": retried}

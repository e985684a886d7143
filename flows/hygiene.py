"""The `hygiene` flow: periodic consent housekeeping — double opt-in reminders (one, after
24 h), expiry of pending consents after `policies.pending_consent_expires`, and delivery of
queued system mail (confirmations) — as one Prefect task around
`nurture.double_opt_in.hygiene`; then retention (`policies.yaml` `retention:`,
nurture.privacy.retention) as a second task; a table artifact says what both did."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.runtime import logical_now, retry_unless_invalid, runtime_for
from nurture.double_opt_in import hygiene as run_hygiene


@task(name="consent-hygiene", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_invalid)
def hygiene_task(project: Optional[str], now: datetime) -> dict:
    return dict(run_hygiene(runtime_for(project), now))


@task(name="retention-purge", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_invalid)
def purge_task(project: Optional[str], now: datetime) -> dict:
    from nurture.privacy.retention import purge
    rt = runtime_for(project)
    return {f"purged {name.replace(':', ' ')}": n
            for name, n in purge(rt.store, rt.project.policies, now, rt.data_dir).counts.items()}


@flow(name="hygiene", log_prints=True)
def hygiene(project: Optional[str] = None, now: Optional[datetime] = None) -> dict:
    clock = logical_now(now)
    runtime_for(project)  # which project and database (logged); a refused database fails here, not retried
    counts = hygiene_task(project, clock)
    counts.update(purge_task(project, clock))
    create_table_artifact(key="hygiene", table=[{"what": k, "count": v} for k, v in sorted(counts.items())]
                          or [{"what": "nothing to do", "count": 0}],
                          description=f"Consent hygiene and retention at {clock.isoformat()}")
    get_run_logger().info("hygiene at %s: %s", clock.isoformat(), ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return counts

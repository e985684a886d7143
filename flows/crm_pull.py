"""The hourly `crm-pull` flow: deals and lifecycle stages from the CRM as events — one task
around the engine (nurture.crm.pull.pull_deals), then a table artifact of what it did.

A project without the CRM configured (no NURTURE_HUBSPOT_TOKEN, in the environment or a
Prefect Secret block `nurture-hubspot-token`) completes with "not configured": most shops
have no HubSpot, and an hourly red run would hide the real failures. A CRM that cannot be read
fails the run after the artifact is written; what was stored stays, and the next run continues
from the cursor. `lookback_days` is how far back the first pull reads (prefect.yaml may set it).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.runtime import logical_now, retry_unless_invalid, runtime_for
from flows.segment_sync import with_secret_blocks
from nurture.crm.pull import LOOKBACK, pull_deals
from nurture.crm.source import DEFAULT_CRM, deal_source
from nurture.redaction import redact, secrets_in
from nurture.registry import IntegrationContext, IntegrationError

ARTIFACT_KEY = "crm-pull"


class CrmPullFailed(Exception):
    """The CRM could not be read to the end (the message says why and where the cursor stands)."""


@task(name="pull-deals", retry_condition_fn=retry_unless_invalid)
def pull_task(project: Optional[str], now: datetime, lookback_days: int, crm: str) -> dict:
    rt = runtime_for(project)
    env = with_secret_blocks(rt.env, crm)
    try:
        source = deal_source(crm, IntegrationContext(rt.project.root, rt.data_dir, env))
    except IntegrationError as exc:
        return {"crm": crm, "status": "not configured", "failure": "", "note": str(exc)}
    try:
        result = pull_deals(rt.store, source, now=now, currency=rt.project.policies.currency,
                            lookback=timedelta(days=lookback_days))
    finally:
        source.close()
    row = result.row()
    row["failure"] = redact(row["failure"], secrets_in(env)) or ""
    row["status"] = "failed" if result.failure else "pulled"
    row["examples"] = ", ".join(f"{d} ({e or 'no e-mail'})" for d, e in result.deals.examples)
    return row


@flow(name="crm-pull", log_prints=True)
def crm_pull(project: Optional[str] = None, now: Optional[datetime] = None,
             lookback_days: int = LOOKBACK.days, crm: str = DEFAULT_CRM) -> dict:
    """Pull the deals changed since the last pull (the first: `lookback_days` back)."""
    clock = logical_now(now)
    runtime_for(project)  # which project and database (logged); a refused database fails here, not retried
    row = pull_task(project, clock, lookback_days, crm)
    description = (f"CRM pull ({crm}) at {clock.isoformat()}: " +
                   (row.get("note") or f"{row.get('deals_read', 0)} deal(s) read, {row.get('events', 0)} event(s) "
                                       f"added, {row.get('won', 0)} won, {row.get('without_contact', 0)} without "
                                       f"a known contact, {row.get('requests', 0)} request(s)"))
    create_table_artifact(key=ARTIFACT_KEY, table=[{k: v for k, v in row.items() if k != "note"}],
                          description=description)
    get_run_logger().info("%s", description)
    if row.get("failure"):
        raise CrmPullFailed(row["failure"])
    return row

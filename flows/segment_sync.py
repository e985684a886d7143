"""The nightly segment sync as a Prefect flow: one task per (segment, destination), then a
table artifact of what each one did — and then, when journeys/conversions.yaml declares any,
the offline conversions step (nurture.conversions.send) with its own table artifact
(`conversions`). A broken conversions.yaml fails that step (after the sync is done), never the
sync itself; a single-segment run (`segment=`) sends no conversions.

Besides the targets segments.yaml configures, every detached one — acknowledged members of a
segment or destination no longer configured — gets a task too; the engine empties it.

The engine (nurture.segments.sync) diffs and pushes; this flow only sequences, installs
the per-provider throttle (a slot of the global concurrency limit `nurture-<provider>`
for every provider request, when a Prefect server is configured) and reports. What it
reports (task results, the table artifact, log lines) carries no configured secret: the
engine masks them in the reasons it records, and each task's errors are masked again with the
secrets of its own environment (Prefect Secret blocks included) before they leave the task.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.runtime import invalid, logical_now, require_valid, retry_unless_invalid, runtime_for
from integrations.google import GoogleSettings
from integrations.hubspot import HubSpotSettings
from integrations.linkedin import LinkedInSettings
from integrations.meta import MetaSettings
from integrations.tiktok import TikTokSettings
from nurture.conversions.send import ConversionsInvalid, send_one
from nurture.conversions.send import targets as conversion_targets
from nurture.redaction import redact, secrets_in
from nurture.registry import IntegrationContext
from nurture.segments import throttle
from nurture.segments.sync import SyncTarget, detached_targets, sync_one, targets
from nurture.settings import Settings

ARTIFACT_KEY = "segment-sync"
CONVERSIONS_ARTIFACT_KEY = "conversions"
DEFAULT_SYNC_TIMEZONE = "Europe/Berlin"  # prefect.yaml's segment-sync schedule says the same


def prefect_rate_limit(provider: str) -> None:
    """Take one slot of `nurture-<provider>` (a limit with slot decay, see docs/segments.md);
    a limit that does not exist is not waited for."""
    from prefect.concurrency.sync import rate_limit
    rate_limit(throttle.limit_name(provider), occupy=1, strict=False)


def _server_configured() -> bool:
    from prefect.settings import PREFECT_API_URL
    return bool(PREFECT_API_URL.value())


# The destinations' credentials that may live in Prefect Secret blocks: the secret settings their
# models declare (NURTURE_HUBSPOT_TOKEN, NURTURE_META_ACCESS_TOKEN, …).
SECRET_SETTINGS = tuple(d.name for model in (HubSpotSettings, MetaSettings, GoogleSettings, LinkedInSettings,
                                              TikTokSettings)
                        for d in model.declared() if d.secret)


def secret_block_name(setting: str) -> str:
    """NURTURE_META_ACCESS_TOKEN → `nurture-meta-access-token` (a Prefect Secret block)."""
    return setting.lower().replace("_", "-")


def with_secret_blocks(env: dict[str, str], destination: str) -> dict[str, str]:
    """The destination's credentials not set in the environment are read from Prefect
    Secret blocks."""
    out = dict(env)
    for setting in SECRET_SETTINGS:
        if out.get(setting) or not setting.startswith(f"NURTURE_{destination.upper()}_"):
            continue
        try:
            from prefect.blocks.system import Secret
            out[setting] = str(Secret.load(secret_block_name(setting)).get())
        except Exception:  # no such block (or no server): the destination reports what is missing
            continue
    return out


@task(name="sync-target", retries=1, retry_delay_seconds=30, retry_condition_fn=retry_unless_invalid)
def sync_target_task(project: Optional[str], ref: SyncTarget, now: datetime) -> dict:
    rt = runtime_for(project)
    context = IntegrationContext(rt.project.root, rt.data_dir, with_secret_blocks(rt.env, ref.destination))
    previous = throttle.install(prefect_rate_limit) if _server_configured() else None
    try:
        report = sync_one(rt.store, rt.project, ref, now, context)
    finally:
        if _server_configured():
            throttle.install(previous)
    row = report.row()
    row["errors"] = redact(row["errors"], secrets_in(context.env))
    return row


@task(name="report")
def report_task(rows: list[dict], now: datetime) -> list[dict]:
    table = rows or [{"segment": "-", "destination": "-", "target": "-", "status": "nothing to sync"}]
    added = sum(r.get("added", 0) for r in rows)
    removed = sum(r.get("removed", 0) for r in rows)
    failed = sum(r.get("failed", 0) for r in rows)
    create_table_artifact(key=ARTIFACT_KEY, table=table,
                          description=f"Segment sync at {now.isoformat()}: {len(rows)} target(s), "
                                      f"added {added}, removed {removed}, failed {failed}")
    get_run_logger().info("segment sync at %s: %d target(s), added %d, removed %d, failed %d",
                          now.isoformat(), len(rows), added, removed, failed)
    return rows


@task(name="conversions", retries=1, retry_delay_seconds=30, retry_condition_fn=retry_unless_invalid)
def conversions_task(project: Optional[str], now: datetime) -> list[dict]:
    """Every declared (conversion, destination), then a table artifact of what each one did."""
    rt = runtime_for(project)
    try:
        refs = conversion_targets(rt.project)
    except ConversionsInvalid:
        raise invalid(rt.project.file_errors("conversions")) from None
    rows = []
    throttled = _server_configured()
    previous = throttle.install(prefect_rate_limit) if throttled else None
    try:
        for ref in refs:
            context = IntegrationContext(rt.project.root, rt.data_dir, with_secret_blocks(rt.env, ref.destination))
            row = send_one(rt.store, rt.project, ref, now, context).row()
            row["errors"] = redact(row["errors"], secrets_in(context.env))
            rows.append(row)
    finally:
        if throttled:
            throttle.install(previous)
    sent = sum(r["sent"] for r in rows)
    skipped = sum(r["skipped"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    create_table_artifact(key=CONVERSIONS_ARTIFACT_KEY,
                          table=rows or [{"conversion": "-", "target": "-", "status": "nothing to send"}],
                          description=f"Conversions at {now.isoformat()}: {len(rows)} destination(s), "
                                      f"sent {sent}, skipped {skipped}, failed {failed}")
    log = get_run_logger()
    (log.warning if failed else log.info)("conversions at %s: %d destination(s), sent %d, skipped %d, failed %d",
                                          now.isoformat(), len(rows), sent, skipped, failed)
    return rows


@flow(name="segment-sync", log_prints=True)
def segment_sync(project: Optional[str] = None, now: Optional[datetime] = None,
                 segment: Optional[str] = None) -> list[dict]:
    """Diff-sync every segment (or one) to each of its destinations, and empty the detached
    targets (of that segment); then, for a full run, send the due offline conversions."""
    clock = logical_now(now)
    rt = runtime_for(project)
    require_valid(rt, "segments")
    # (configured first: a segment renamed onto the same audience holds its members before the
    # old name's rows are emptied, so nothing is removed that is still wanted)
    refs = targets(rt.project, segment) + detached_targets(rt.store, rt.project, segment)
    rows = [sync_target_task(project, ref, clock) for ref in refs]
    reported = report_task(rows, clock)
    if segment is None and (rt.project.conversions or rt.project.file_errors("conversions")):
        conversions_task(project, clock)
    return reported


def sync_deployment(project: str):
    """The nightly sync as a deployment built in code: 02:00 in NURTURE_SYNC_TIMEZONE (default
    Europe/Berlin). `nurture serve` no longer uses it — it serves prefect.yaml's deployments,
    `segment-sync` included (nurture.cli.run_verbs.served_deployments), with the same
    NURTURE_SYNC_TIMEZONE override; kept for callers of this function."""
    from prefect.schedules import Cron
    tz = Settings.from_env().sync_zone() or DEFAULT_SYNC_TIMEZONE
    return segment_sync.to_deployment(name="segment-sync", schedule=Cron("0 2 * * *", timezone=tz),
                                      parameters={"project": project})

"""`nurture sync`: the segment sync to every configured destination — and to every audience
still holding members for a segment or destination no longer configured (a detached target,
emptied) — as a Prefect flow run."""
from __future__ import annotations

import os
from typing import Optional

import typer

from nurture.cli import prefect_env
from nurture.cli.invocation import CliError, check_database, console, open_project, parse_now, root
from nurture.settings import Settings, database_url


def print_sync_summary(rows: list[dict]) -> None:
    """The sync's table, then its error reasons with the configured secrets masked (the flow
    masked them already; printing is the last place one could slip through)."""
    from rich.table import Table

    from nurture.redaction import redact, secrets_in
    secrets = secrets_in(os.environ)
    table = Table(title="segment sync", title_justify="left")
    columns = ("segment", "target", "status", "members", "added", "removed", "updated", "failed", "requests", "ms")
    for col in columns:
        table.add_column(col, no_wrap=col in ("status",))
    for row in rows:
        cells = {**row, "ms": row.get("duration_ms", "")}
        if row.get("detached"):  # no longer in segments.yaml: being emptied
            cells["target"] = f"{row.get('target', '')} (detached)"
        table.add_row(*[str(cells.get(col, "")) for col in columns])
    console.print(table)
    for row in rows:
        if row.get("errors"):
            console.print(redact(f"{row['segment']} → {row['target']}: {row['errors']}", secrets), markup=False)


def sync(segment: Optional[str] = typer.Option(None, "--segment", help="Only this segment"),
         now: Optional[str] = typer.Option(None, "--now", help="Logical clock of the sync (ISO 8601)")) -> None:
    """Segment sync to every configured destination: only what changed since the last
    acknowledged state; failed records are retried by the next run."""
    clock = parse_now(now)  # a bad --now is an error even when there is nothing to sync
    spec = open_project()
    check_database()  # a missing driver is named here, not as an internal error inside the flow
    from nurture.segments.sync import UnknownSegment, targets
    try:
        refs = targets(spec, segment)
    except UnknownSegment as exc:
        raise CliError(str(exc)) from None
    if not refs and not _detached(spec, segment):
        console.print("no segment has a destination: nothing to sync (see journeys/segments.yaml)")
        return
    prefect_env.configure(verbose=Settings.from_env().verbose)
    from flows.runtime import ProjectInvalid
    from flows.segment_sync import segment_sync
    try:
        rows = segment_sync(project=str(root()), now=clock, segment=segment)
    except ProjectInvalid as exc:
        raise CliError(str(exc)) from None
    print_sync_summary(rows)
    problem = sync_problem(rows)
    if problem:
        raise CliError(problem)


def sync_problem(rows: list[dict]) -> Optional[str]:
    """Why a sync's exit is not 0, or None: failed records, a target that failed as a whole, or
    one that stopped before its end (it lost its lock: what it acknowledged stays, the rest is
    the next run's) — a script that alerts on the exit code must hear of each."""
    failed = sum(int(r.get("failed", 0)) for r in rows)
    broken = [r for r in rows if r.get("status") == "failed"]
    stopped = [r for r in rows if r.get("status") == "interrupted"]
    if failed:
        return (f"{failed} record(s) failed in {len(broken) + len(stopped) or 'some'} target(s); they stay "
                "unacknowledged and the next sync retries exactly them")
    if broken:  # the target itself failed (its error is above): none of its records was acknowledged
        return (f"{len(broken)} target(s) failed; nothing of them was acknowledged and the next sync "
                "retries them")
    if stopped:
        return (f"{len(stopped)} target(s) stopped before the end (the reason is above); what they acknowledged "
                "stays, and the next sync sends the rest")
    return None


def _detached(spec, segment: Optional[str]) -> bool:
    """Does the database hold members of a target segments.yaml no longer configures? (No
    database yet: nothing is held, and none is created for the question.)"""
    from nurture.segments.sync import detached_targets
    from nurture.store.db import DatabaseMissing, DatabaseUnavailable, open_store
    try:
        store = open_store(database_url(root()), create=False)
    except DatabaseMissing:
        return False
    except DatabaseUnavailable as exc:
        raise CliError(f"cannot open the database: {exc}") from None
    try:
        return bool(detached_targets(store, spec, segment))
    finally:
        store.dispose()


def register(app: typer.Typer) -> None:
    app.command()(sync)

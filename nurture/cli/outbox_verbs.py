"""`nurture requeue`: an operator's way back for messages recorded failed after a crash."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, open_project, store


def requeue(reason: str = typer.Option(..., "--reason",
                                       help="Re-queue failed messages whose reason starts with this "
                                            "(e.g. delivery_unknown)"),
            journey: Optional[str] = typer.Option(None, "--journey", help="Only this journey"),
            dry_run: bool = typer.Option(False, "--dry-run", help="Count them, change nothing")) -> None:
    """Put failed messages back in the queue (after checking the provider never got them);
    each meets every send check again before it goes."""
    from nurture.messages import requeue_failed
    if not reason.strip():  # an empty prefix matched every failed message, hard bounces too
        raise CliError("--reason: give the start of a failure reason (e.g. delivery_unknown); "
                       "`nurture messages --json` shows each message's reason")
    open_project()
    count = requeue_failed(store(), reason, datetime.now(timezone.utc), journey, dry_run)
    verb = "would re-queue" if dry_run else "re-queued"
    console.print(f"{verb} {count} message(s) failed with reason '{reason}…'", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(requeue)

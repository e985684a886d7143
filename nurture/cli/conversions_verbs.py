"""`nurture conversions`: send the offline conversions conversions.yaml declares, in this process
(the nightly `segment-sync` flow runs the same step under Prefect)."""
from __future__ import annotations

import os
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, parse_now, root, store, utc_now


def print_conversions_summary(rows: list[dict]) -> None:
    """Per destination: sent, skipped by reason, failed, requests; then the failure reasons,
    with the configured secrets masked."""
    from rich.table import Table

    from nurture.redaction import redact, secrets_in
    secrets = secrets_in(os.environ)
    table = Table(title="conversions", title_justify="left")
    columns = ("conversion", "target", "status", "due", "sent", "skipped", "failed", "requests", "ms")
    for col in columns:
        table.add_column(col, no_wrap=col == "status")
    for row in rows:
        table.add_row(*[str(row.get("duration_ms" if col == "ms" else col, "")) for col in columns])
    console.print(table)
    for row in rows:
        if row.get("skipped_reasons"):
            console.print(f"{row['conversion']} → {row['target']}: skipped {row['skipped_reasons']}", markup=False)
        if row.get("validated"):
            console.print(f"{row['conversion']} → {row['target']}: {row['validated']} validated by a dry run "
                          "(validate_only), still due", markup=False)
        if row.get("errors"):
            console.print(redact(f"{row['conversion']} → {row['target']}: {row['errors']}", secrets), markup=False)


def conversions(now: Optional[str] = typer.Option(None, "--now", help="Logical clock of the run (ISO 8601)")) -> None:
    """Send the due offline conversions (journeys/conversions.yaml) to the ad platforms: each
    event once per platform, only for contacts whose latest ads consent is granted. Skipped
    events are not failures; failed ones are retried by the next run (exit code 1)."""
    clock = parse_now(now) or utc_now()  # a bad --now is an error even when there is nothing to send
    spec = open_project(strict=False)
    from nurture.conversions.send import ConversionsInvalid, send_conversions, targets
    for error in spec.file_errors("conversions") + spec.fatal_errors:
        err_console.print(str(error), markup=False)
    try:
        refs = targets(spec)
    except ConversionsInvalid:
        raise CliError(f"{len(spec.file_errors('conversions'))} error(s) in journeys/conversions.yaml; "
                       "nothing was sent") from None
    if spec.fatal_errors:
        raise CliError(f"{len(spec.fatal_errors)} error(s) in the project; nothing was sent")
    if not refs:
        console.print("no conversion has a destination: nothing to send (see journeys/conversions.yaml)")
        return
    from nurture.registry import IntegrationContext
    from nurture.settings import data_dir
    context = IntegrationContext(root(), data_dir(root()), dict(os.environ))
    db = store()
    try:
        rows = [report.row() for report in send_conversions(db, spec, clock, context)]
    finally:
        db.dispose()
    print_conversions_summary(rows)
    failed = sum(int(r.get("failed", 0)) for r in rows)
    broken = [r for r in rows if r.get("status") == "failed"]
    if failed or broken:
        what = [f"{failed} conversion(s) failed"] if failed else []
        what += [f"{len(broken)} destination(s) could not send"] if broken else []
        raise CliError(f"{' and '.join(what)}; what was not sent stays due and the next run retries it")


def register(app: typer.Typer) -> None:
    app.command()(conversions)

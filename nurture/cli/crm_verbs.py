"""`nurture crm pull`: deals and lifecycle stages from the CRM, as events (nurture.crm.pull),
in this process — the hourly `crm-pull` flow runs the same engine under Prefect."""
from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, parse_now, root, store, utc_now

crm_app = typer.Typer(help="Deals and lifecycle stages from the CRM.", no_args_is_help=True)
PROBLEMS_SHOWN = 20


def _project_currency() -> str:
    spec = open_project(strict=False)
    broken = spec.file_errors("policies")
    if broken:  # won deals' revenue is checked against policies.yaml's currency
        for error in broken:
            err_console.print(str(error), markup=False)
        raise CliError("policies.yaml has errors (its `currency` is what deal amounts are counted in); nothing was "
                       "pulled")
    return spec.policies.currency


def _since(value: Optional[str]):
    if value is None:
        return None
    from nurture.ingest import parse_timestamp
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", code=2) from None


@crm_app.command("pull")
def pull(since: Optional[str] = typer.Option(None, "--since", help="Read the deals changed since this time (ISO "
                                                                  "8601) instead of since the last pull"),
         now: Optional[str] = typer.Option(None, "--now", help="Logical clock of the pull (ISO 8601): deals "
                                                               "changed up to then"),
         lookback_days: int = typer.Option(90, "--lookback-days", min=1, max=3650,
                                           help="How far back the first pull (no cursor yet) reads"),
         crm: str = typer.Option("hubspot", "--crm", help="The CRM integration to pull from"),
         as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (for scripts)")) -> None:
    """Pull the deals changed since the last pull (the first pull: the last 90 days) and turn
    them into deal_created, deal_stage_changed, deal_won and deal_lost events of their contacts,
    moving lifecycle stages forward. A deal's revenue goes to its first contact Nurture knows;
    deals whose contacts Nurture does not know are counted and named, not dropped. Reading a
    deal again adds nothing. Exit code 1 when the CRM cannot be read (what was stored stays;
    the next pull continues where this one stopped)."""
    from nurture.crm.pull import pull_deals
    from nurture.crm.source import deal_source
    from nurture.registry import IntegrationContext, IntegrationError
    from nurture.settings import data_dir
    currency = _project_currency()
    clock = parse_now(now) or utc_now()
    start = _since(since)
    if start is not None and start > clock:
        raise CliError(f"--since {start.isoformat()} is after --now {clock.isoformat()}", code=2)
    context = IntegrationContext(root(), data_dir(root()), dict(os.environ))
    try:
        source = deal_source(crm, context)
    except IntegrationError as exc:
        raise CliError(str(exc)) from None
    try:
        result = pull_deals(store(), source, now=clock, currency=currency, since=start,
                            lookback=timedelta(days=lookback_days))
    finally:
        source.close()
    if as_json:
        print(json.dumps({**result.row(), "examples": [{"deal_id": d, "email": e} for d, e in result.deals.examples],
                          "problem_list": result.deals.problems[:PROBLEMS_SHOWN]}, indent=1))
    else:
        print_pull(result, currency)
    if result.failure:
        where = (f"the cursor stands at {result.cursor_after.isoformat()}" if result.cursor_after
                 else "no cursor yet")
        raise CliError(f"{result.failure} — what was read before is stored, {where}; the next pull "
                              "continues from there")


def print_pull(result, currency: str) -> None:
    d = result.deals
    lines = [f"crm pull {result.crm}: changes from {result.since:%Y-%m-%d %H:%M} to {result.until:%Y-%m-%d %H:%M} UTC",
             f"  deals read: {d.read} ({d.new} new, {d.changed} changed)",
             f"  events added: {d.events} ({d.stage_changes} stage change(s), {d.won} won, {d.lost} lost)",
             f"  revenue of the deals won: {d.revenue:,.2f} {currency} (each deal once, on its first known contact)"]
    if d.attached:
        lines.append(f"  deals that found their contact since: {d.attached}")
    if d.without_contact:
        shown = ", ".join(f"{deal_id} ({email or 'no e-mail'})" for deal_id, email in d.examples)
        lines.append(f"  deals without a known contact: {d.without_contact} (kept, no events), e.g. {shown}; "
                     "import those contacts and the next pull attaches them")
    if d.erased:
        lines.append(f"  deals of erased people: {d.erased} (no contact, no address stored)")
    if d.other_currency:
        lines.append(f"  won deals in another currency than {currency}: {d.other_currency} (no revenue: Nurture "
                     "converts no currencies)")
    if d.lifecycle:
        lines.append("  lifecycle: " + ", ".join(f"{n} to {stage}" for stage, n in sorted(d.lifecycle.items())))
    per = f" ({result.requests * 1000 / d.read:.1f} per 1,000 deals)" if d.read else ""
    cursor = result.cursor_after.isoformat() if result.cursor_after else "none yet"
    lines.append(f"  requests: {result.requests}{per}; cursor: {cursor}")
    for line in lines:
        console.print(line, markup=False)
    for problem in d.problems[:PROBLEMS_SHOWN]:
        err_console.print(f"warning: {problem}", markup=False)
    if len(d.problems) > PROBLEMS_SHOWN:
        err_console.print(f"warning: … and {len(d.problems) - PROBLEMS_SHOWN} more deal(s) not read", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(crm_app, name="crm")

"""`nurture plan`: what the next tick would do now — enrollments, and per step the sends,
deferrals, suppressions and skips by reason — computed by the tick's own deciding stages on a
scratch copy of the database (nurture.plan), so nothing of the project changes."""
from __future__ import annotations

import json
from typing import Optional

import typer

from nurture.cli.invocation import console, parse_now, utc_now
from nurture.cli.scratch_runs import chosen_journeys, scratch_run


def _reasons(counts: dict) -> str:
    return "\n".join(f"{reason} {n}" for reason, n in sorted(counts.items())) if counts else ""


def print_plans(plans: list, copied_from: Optional[str]) -> None:
    from rich.table import Table
    source = f"a scratch copy of {copied_from}" if copied_from else "an empty database (the project has none yet)"
    if plans:
        console.print(f"What the next tick would do at {plans[0].now.isoformat()} (decided on {source}; "
                      "nothing was changed):", markup=False)
    for plan in plans:
        head = (f"journey {plan.journey}: would enroll {plan.would_enroll}"
                + (f", exit {plan.would_exit}" if plan.would_exit else "")
                + (f", convert {plan.would_convert}" if plan.would_convert else "")
                + (f", move {plan.would_migrate} to the new version" if plan.would_migrate else ""))
        if not plan.steps:
            console.print(f"{head}; no step is due", markup=False)
            continue
        table = Table(title=head, title_justify="left")
        for column in ("step", "send", "defer", "suppress", "skip", "hold out", "moves"):
            table.add_column(column, justify="right" if column in ("send", "hold out") else "left")
        for step in plan.steps:
            sent = str(step.would_send) + (f" ({step.already_queued} queued earlier)" if step.already_queued else "")
            table.add_row(step.step, sent, _reasons(step.would_defer), _reasons(step.would_suppress),
                          _reasons(step.would_skip), str(step.would_hold_out) if step.would_hold_out else "",
                          _reasons(step.moves))
        console.print(table)


def plan(journey: Optional[str] = typer.Option(None, "--journey", help="Only this journey"),
         now: Optional[str] = typer.Option(None, "--now", help="The clock of the tick (ISO 8601; default: now)"),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (for scripts)")) -> None:
    """What the next tick would do now, without doing it: enrollments (a new journey's first
    tick enrolls everything within its trigger's lookback), sends per step, deferrals,
    suppressions, skips and holdouts by reason. Decided by the tick's own stages on a scratch
    copy of the database: the project's database and outbox are never changed."""
    from nurture.plan import plan_tick
    spec, journeys = chosen_journeys([journey] if journey else [])
    clock = parse_now(now) or utc_now()
    with scratch_run(spec) as (rt, copied_from):
        plans = plan_tick(rt, journeys, clock)
    if as_json:
        print(json.dumps({"now": clock.isoformat(), "journeys": [p.as_dict() for p in plans]}, indent=1))
        return
    print_plans(plans, copied_from)


def register(app: typer.Typer) -> None:
    app.command()(plan)

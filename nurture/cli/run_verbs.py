"""`nurture run`, `nurture serve` and `nurture demo`: the verbs that start Prefect flows."""
from __future__ import annotations

import os
from typing import Optional

import typer

from nurture.cli import prefect_env
from nurture.cli.invocation import CliError, console, err_console, open_project, parse_now, root

TICK_SECONDS = 300


def _flows():
    prefect_env.configure(verbose=bool(os.environ.get("NURTURE_VERBOSE")))
    from flows import journey as journey_flows
    return journey_flows


def run_ticks(journey: Optional[str], now, quiet: bool = False, workers: Optional[int] = None) -> list[dict]:
    flows = _flows()
    from flows.runtime import ProjectInvalid
    state = flows.tick_all(project=str(root()), now=now, journey=journey, delivery_processes=workers,
                           return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, ProjectInvalid):
        raise CliError(str(outcome))
    if isinstance(outcome, flows.JourneysFailed):
        if not quiet:
            print_tick_summary([r for r in outcome.results if "error" not in r])
        raise CliError(str(outcome))
    if isinstance(outcome, BaseException):
        raise outcome
    if not quiet:
        print_tick_summary(outcome)
    return outcome


def print_tick_summary(results: list[dict]) -> None:
    from rich.table import Table
    for result in results:
        table = Table(title=f"journey-{result['journey']} @ {result['now'][:16]}  "
                            f"(enrolled {result['enrolled']}, converted {result['converted']}, exited {result['exited']})",
                      title_justify="left")
        for col in ("step", "outcome", "reason", "count"):
            table.add_column(col)
        for row in result["outcomes"]:
            table.add_row(row["step"], row["outcome"], row["reason"], str(row["count"]))
        console.print(table)


def run(journey: Optional[str] = typer.Option(None, "--journey", help="Only this journey"),
        now: Optional[str] = typer.Option(None, "--now", help="Logical clock of the tick (ISO 8601)"),
        workers: Optional[int] = typer.Option(
            None, "--workers", min=1, max=64,
            help="Delivery processes for large ticks (20,000+ due), pipelined with the guards "
                 "[default: one per CPU core; 1 keeps delivery in one process]")) -> None:
    """One tick of every (or one) journey, as Prefect flow runs. A broken journey is named
    with its errors and does not tick; the valid ones do (exit code 1 when any is broken)."""
    spec = open_project(strict=False, only=journey)
    if spec.fatal_errors or (journey and spec.errors_of(journey)):
        open_project(only=journey)  # prints every error and stops: nothing can run
    for error in spec.errors:
        err_console.print(str(error), highlight=False, markup=False)
    run_ticks(journey, parse_now(now), workers=workers)
    broken = [name for name in spec.journey_names if spec.errors_of(name)]
    if broken:
        raise CliError(f"{len(broken)} journey(s) with errors did not tick: {', '.join(broken)}")


def served_deployments(project: str, interval: int = TICK_SECONDS) -> list:
    """The schedules `nurture serve` runs — the same ones prefect.yaml declares for workers."""
    from flows import hygiene, journey, scoring, segment_sync
    return [journey.tick_all.to_deployment(name="tick-all", interval=interval, parameters={"project": project}),
            segment_sync.sync_deployment(project),
            scoring.scoring.to_deployment(name="scoring", interval=3600, parameters={"project": project}),
            hygiene.hygiene.to_deployment(name="hygiene", interval=900, parameters={"project": project})]


def serve(interval: int = typer.Option(TICK_SECONDS, "--interval", help="Seconds between journey ticks")) -> None:
    """Run the journey ticks (and, where configured, nightly syncs) on their schedules,
    without a work pool: `prefect.yaml` declares the same schedules for workers."""
    open_project()
    _flows()
    from prefect import serve as prefect_serve
    deployments = served_deployments(str(root()), interval)
    console.print(f"serving {len(deployments)} deployment(s); journey ticks every {interval}s. Ctrl-C stops.")
    prefect_serve(*deployments)


def demo(seed: int = typer.Option(7, "--seed", help="Seed of the synthetic story")) -> None:
    """The whole story on the embedded default: a synthetic shop with 5,000 contacts, the six
    journeys over 30 simulated days as Prefect flow runs, segment sync to CSV, the outbox and
    the HTML report."""
    from nurture.demo import run_demo
    run_demo(root(), seed=seed, run_ticks=lambda now: run_ticks(None, now, quiet=True), console=console)


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(serve)
    app.command()(demo)

"""`nurture run`, `nurture serve` and `nurture demo`: the verbs that start Prefect flows."""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from nurture.cli import prefect_env
from nurture.cli.invocation import CliError, check_database, console, err_console, open_project, parse_now, root
from nurture.settings import Settings


def _flows():
    prefect_env.configure(verbose=Settings.from_env().verbose)
    from flows import journey as journey_flows
    return journey_flows


def run_ticks(journey: Optional[str], now, quiet: bool = False, workers: Optional[int] = None) -> list[dict]:
    flows = _flows()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.runtime import ProjectInvalid
    from nurture.store.db import DatabaseUnavailable
    # A one-shot run is watched in the terminal until it ends: Prefect's flow-run heartbeats (for
    # spotting crashed runs of workers) would only add up to a second of waiting per flow at its end.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        state = flows.tick_all(project=str(root()), now=now, journey=journey, delivery_processes=workers,
                               return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, ProjectInvalid):
        raise CliError(str(outcome))
    if isinstance(outcome, DatabaseUnavailable):
        raise CliError(f"cannot open the database: {outcome}")
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

    from nurture.send.reconcile import reconciled_text
    for result in results:
        # (what reconcile did is no outcome of this tick's sends: said beside the stage counts)
        reconciled = reconciled_text(result.get("reconciled") or {})
        heading = (f"journey-{result['journey']} @ {result['now'][:16]}  "
                   f"(enrolled {result['enrolled']}, converted {result['converted']}, exited {result['exited']}"
                   + (f"; {reconciled}" if reconciled else "") + ")")
        if not result["outcomes"]:  # no table without rows
            console.print(f"{heading}: no message due", markup=False, highlight=False)
            continue
        table = Table(title=heading, title_justify="left")
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
    check_database()
    if journey is None:  # the flows use this load instead of reading every file again
        from flows.runtime import adopt
        adopt(spec)
    run_ticks(journey, parse_now(now), workers=workers)
    broken = [name for name in spec.journey_names if spec.errors_of(name)]
    if broken:
        raise CliError(f"{len(broken)} journey(s) with errors did not tick: {', '.join(broken)}")


# ---------------------------------------------------------------- nurture serve
#
# `nurture serve` runs the deployments prefect.yaml declares, from this one process, instead of
# a work pool and workers. prefect.yaml is the one definition of names, parameters and
# schedules; served deployments are named `<name>-served`, so a server that also has the
# work-pool deployments (`prefect deploy --all`) keeps those exactly as deployed.

SERVED_SUFFIX = "-served"
_SCHEDULE_KEYS = ("interval", "cron", "rrule", "timezone", "anchor_date", "day_or", "active", "parameters", "slug")


def prefect_yaml_path() -> Path:
    """prefect.yaml of the checkout the flows are imported from (the file `prefect deploy` reads)."""
    import flows
    return Path(flows.__file__).resolve().parent.parent / "prefect.yaml"


def declared_deployments(path: Optional[Path] = None) -> list[dict]:
    """The `deployments:` of prefect.yaml."""
    import yaml
    path = path or prefect_yaml_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"nurture serve runs the deployments of prefect.yaml, and there is none at {path} "
                              "(install Nurture from its checkout: pip install -e .)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{path}: {' '.join(str(exc).split())}") from None
    deployments = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(deployments, list) or not all(isinstance(d, dict) and d.get("name") and d.get("entrypoint")
                                                    for d in deployments):
        raise CliError(f"{path}: expected `deployments:`, a list of mappings with a name and an entrypoint")
    return deployments


def _flow_at(entrypoint: str, base: Path, where: str):
    """The flow object of an entrypoint like flows/journey.py:tick_all (imported as a module
    of the checkout, so served runs and the serving process share one definition)."""
    import importlib

    from prefect import Flow
    file, _, attr = entrypoint.partition(":")
    module = ".".join(Path(file).with_suffix("").parts)
    try:
        flow = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"{where}: entrypoint {entrypoint!r} cannot be loaded from {base}: {exc}") from None
    if not isinstance(flow, Flow):
        raise CliError(f"{where}: entrypoint {entrypoint!r} is not a Prefect flow")
    return flow


def _schedule_of(entry: dict, where: str):
    from prefect.schedules import Schedule
    if not isinstance(entry, dict):
        raise CliError(f"{where}: a schedule is a mapping (interval:, cron: or rrule:)")
    unknown = sorted(set(entry) - set(_SCHEDULE_KEYS))
    if unknown:
        raise CliError(f"{where}: schedule key(s) {', '.join(unknown)} not supported by nurture serve "
                              f"(supported: {', '.join(_SCHEDULE_KEYS)})")
    values = dict(entry)
    if isinstance(values.get("interval"), (int, float)):
        values["interval"] = timedelta(seconds=values["interval"])
    if isinstance(values.get("anchor_date"), str):
        values["anchor_date"] = datetime.fromisoformat(values["anchor_date"])
    try:
        return Schedule(**values)
    except (TypeError, ValueError) as exc:
        raise CliError(f"{where}: {exc}") from None


def served_deployments(project: str, interval: Optional[int] = None, path: Optional[Path] = None) -> list:
    """The deployments `nurture serve` runs: prefect.yaml's, named `<name>-served`, with its
    parameters (plus `project`), description and schedules. `interval` (serve --interval)
    replaces tick-all's interval; NURTURE_SYNC_TIMEZONE the time zone of segment-sync's."""
    path = path or prefect_yaml_path()
    sync_tz = Settings.from_env().sync_zone()
    served = []
    for declared in declared_deployments(path):
        name = str(declared["name"])
        where = f"{path}: deployment {name}"
        flow = _flow_at(str(declared["entrypoint"]), path.parent, where)
        schedules = [_schedule_of(entry, where) for entry in declared.get("schedules") or []]
        if name == "tick-all" and interval:
            schedules = [replace(s, interval=timedelta(seconds=interval)) if s.interval else s for s in schedules]
        if name == "segment-sync" and sync_tz:
            schedules = [replace(s, timezone=sync_tz) if s.cron or s.rrule else s for s in schedules]
        parameters = {**(declared.get("parameters") or {}), "project": project}
        served.append(flow.to_deployment(name=name + SERVED_SUFFIX, description=declared.get("description"),
                                         schedules=schedules, parameters=parameters, paused=False,
                                         tags=declared.get("tags") or None))
    return served


def _describe_schedule(schedule) -> str:
    if getattr(schedule, "interval", None) is not None:
        return f"every {int(schedule.interval.total_seconds())}s"
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron} {schedule.timezone or 'UTC'}"
    return f"rrule {getattr(schedule, 'rrule', '?')}"


def _has_interval(deployment) -> bool:
    return any(getattr(s.schedule, "interval", None) is not None for s in deployment.schedules or [])


def _check_served_database() -> str:
    """Served runs never create a new, empty database (see flows.runtime): refuse at start
    rather than in every run. Returns the identity line (project, database)."""
    from flows.runtime import identity_line, missing_database_advice
    from nurture.redaction import redact
    from nurture.settings import database_creation_allowed_by_env, database_secrets, database_url, describe_database
    from nurture.store.db import DatabaseMissing, DatabaseUnavailable, database_exists
    url = database_url(root())
    try:
        if not database_creation_allowed_by_env() and not database_exists(url):
            raise DatabaseMissing(url, missing_database_advice(url, who="`nurture serve`"))
    except DatabaseUnavailable as exc:
        raise CliError(f"cannot serve: {exc}") from None
    except Exception as exc:  # the server is down, the database does not exist, credentials …
        detail = redact(" ".join(str(getattr(exc, "orig", None) or exc).split()), database_secrets(url))
        raise CliError(f"cannot open the database {describe_database(url)}: {type(exc).__name__}: {detail}") from None
    return identity_line(str(root()))


async def _pending_runs(client, deployment_ids) -> list:
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(deployment_ids))),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))


async def _drop_pending_runs(client, deployment_ids) -> int:
    """Delete the served deployments' runs that are scheduled but never started: left by a
    serve that was killed, they would run late, each with a past tick clock."""
    dropped = 0
    for _ in range(50):
        runs = [r for r in await _pending_runs(client, deployment_ids) if not r.run_count]
        if not runs:
            break
        for run in runs:
            await client.delete_flow_run(run.id)
            dropped += 1
    return dropped


async def _work_pool_twins(client, deployments) -> list[str]:
    """The work-pool deployments (prefect deploy) of the same flows that are scheduled."""
    from prefect.exceptions import ObjectNotFound
    twins = []
    for deployment in deployments:
        name = f"{deployment.flow_name}/{deployment.name[:-len(SERVED_SUFFIX)]}"
        try:
            twin = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            continue
        if twin.work_pool_name and not twin.paused and any(s.active for s in twin.schedules or []):
            twins.append(name)
    return twins


async def _unschedule(deployment_ids) -> None:
    """On stop: remove the served deployments' schedules (the server drops their scheduled
    runs with them) and any run still waiting; nothing is paused, the history stays, and the
    next `nurture serve` puts the schedules back."""
    from prefect import get_client
    async with get_client() as client:
        for deployment_id in deployment_ids:
            deployment = await client.read_deployment(deployment_id)
            for schedule in deployment.schedules or []:
                await client.delete_deployment_schedule(deployment_id, schedule.id)
        await _drop_pending_runs(client, deployment_ids)


async def _serve(deployments: list, identity: str) -> None:
    import asyncio
    import signal

    from prefect import get_client
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    runner = Runner(pause_on_shutdown=False)
    ids: dict = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    handled = False
    try:
        for deployment in deployments:
            ids[deployment.name] = await runner.aadd_deployment(deployment)
        async with get_client() as client:
            await _drop_pending_runs(client, ids.values())
            twins = await _work_pool_twins(client, deployments)
            first = [d for d in deployments if _has_interval(d)]
            for deployment in first:  # the first tick now, not one interval after start
                await client.create_flow_run_from_deployment(ids[deployment.name])

        api = PREFECT_API_URL.value()
        console.print(escape(f"nurture serve: {identity}"))
        console.print(escape(f"serving {len(deployments)} deployment(s) of {prefect_yaml_path()} on "
                             + (f"{api} (UI: {PREFECT_UI_URL.value() or api})" if api else
                                "a temporary local Prefect server (set PREFECT_API_URL to use yours)") + ":"))
        for deployment in deployments:
            when = ", ".join(_describe_schedule(s.schedule) for s in deployment.schedules or []) or "no schedule"
            if deployment in first:
                when += ", the first run now"
            console.print(escape(f"  {deployment.flow_name}/{deployment.name}: {when}"))
        if twins:
            console.print(escape(f"note: the work-pool deployment(s) {', '.join(twins)} schedule the same flows: "
                                 "if workers run them, every tick runs twice. Run `nurture serve` or workers, "
                                 "not both."))
        console.print(("Flow runs, logs and artifacts are in the Prefect UI. " if api else "")
                      + "Ctrl-C (or SIGTERM) stops serving.")

        serving = asyncio.create_task(runner.start())
        await asyncio.sleep(0)  # runner.start() installs Prefect's SIGTERM handler first; ours replaces it
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        handled = True
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if stop.is_set() and not serving.done():
            console.print("stopping (runs in progress are cancelled) …")
            if runner.started:
                await runner.astop()
            await serving
        elif serving.done():
            serving.result()
    finally:
        if handled:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if ids:
            try:
                await _unschedule(ids.values())
            except Exception as exc:  # the server is gone: the schedules stay, the next serve replaces them
                err_console.print(escape(f"warning: could not remove the served schedules: "
                                         f"{type(exc).__name__}: {exc}"))
            else:
                console.print(escape(f"stopped: the schedules of {', '.join(ids)} were removed (nothing is "
                                     "paused; the next `nurture serve` restores them)"))


def serve(interval: Optional[int] = typer.Option(
        None, "--interval", min=10,
        help="Seconds between journey ticks [default: tick-all's schedule in prefect.yaml]")) -> None:
    """Run the deployments of prefect.yaml from this process, without a work pool: as
    `<name>-served` deployments (the work-pool ones stay as `prefect deploy` made them), with
    prefect.yaml's parameters and schedules, the first journey tick at start and flow-run logs
    in the Prefect UI. Ctrl-C or SIGTERM stops it and leaves nothing paused. A broken journey
    (or segments / scoring file) is reported and fails only its own runs; errors in
    policies.yaml stop everything."""
    spec = open_project(strict=False)
    if spec.fatal_errors:
        open_project()  # prints every error and stops: nothing can run
    for error in spec.errors:
        err_console.print(f"warning: {error}", highlight=False, markup=False)
    prefect_env.configure(verbose=Settings.from_env().verbose, serving=True)
    identity = _check_served_database()
    deployments = served_deployments(str(root()), interval)
    import asyncio

    import httpx
    try:
        asyncio.run(_serve(deployments, identity))
    except (httpx.HTTPError, OSError) as exc:
        from prefect.settings import PREFECT_API_URL
        raise CliError(f"cannot serve on the Prefect server {PREFECT_API_URL.value() or '(temporary)'}: "
                              f"{type(exc).__name__}: {exc}") from None


def demo(seed: int = typer.Option(7, "--seed", help="Seed of the synthetic story")) -> None:
    """The whole story on the embedded default: a synthetic shop with 5,000 contacts, the six
    journeys over 30 simulated days on the simulator (the real tick at the moments something
    falls due), the last tick as Prefect flow runs, segment sync to CSV, the outbox and the
    HTML report."""
    from nurture.demo import run_demo
    ready = prefect_in_background()  # its temporary server starts on the other core while the month runs

    def ticks(now):
        ready.join()
        return run_ticks(None, now, quiet=True)
    from flows.runtime import adopt
    run_demo(root(), seed=seed, run_ticks=ticks, console=console, loaded=adopt)


def prefect_in_background() -> threading.Thread:
    """Import the flows and, without a configured server, start Prefect's temporary one, in a
    thread: the demo's ticks join it before their first flow run. The server is a subprocess
    (~10 s to start here), so it comes up on the other core while the simulation runs; a
    failure is left to the first flow run, which reports it as it would have."""
    def start() -> None:
        try:
            _flows()
            if _temporary_server_wanted():
                from prefect.server.api.server import SubprocessASGIServer
                SubprocessASGIServer().start()  # (Prefect's client finds this one: a singleton)
        except Exception:  # noqa: BLE001 - the flow run starts (or fails to start) it again, and says why
            pass
    thread = threading.Thread(target=start, name="prefect-start", daemon=True)
    thread.start()
    return thread


def _temporary_server_wanted() -> bool:
    """No server configured (nor `nurture server start`'s) and Prefect may start its own: what
    Prefect's client decides on its first call (prefect.client.orchestration.get_client)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED
    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(serve)
    app.command()(demo)

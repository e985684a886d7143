"""`nurture simulate`: a discrete-event run of the real journey tick over a period, on a
scratch copy of the database (nurture.simulate); the funnel, and contacts' timelines."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, parse_now
from nurture.cli.scratch_runs import chosen_journeys, scratch_run


def _moment(value: str, option: str):
    try:
        return parse_now(value)
    except CliError as exc:
        raise CliError(str(exc).replace("--now", option, 1)) from None


def _duration(value: Optional[str], option: str, default: timedelta) -> timedelta:
    from nurture.durations import parse_duration
    if value is None:
        return default
    if value.strip() in ("0", "0s", "0m"):
        return timedelta(0)
    try:
        return parse_duration(value.strip())
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None


def _file(path: Optional[Path], option: str) -> Optional[Path]:
    if path is not None and not path.is_file():
        raise CliError(f"{option}: {path}: no such file")
    return path


def _local(iso: str) -> str:
    """2026-03-10T12:02:17+01:00 → 2026-03-10 12:02 +01:00 (seconds only when not zero)."""
    wall, offset = iso[:19], iso[19:]
    return wall.replace("T", " ")[:16 if wall.endswith(":00") else 19] + (f" {offset}" if offset else "")


def print_result(result, contact: Optional[str], copied_from: Optional[str]) -> None:
    from rich.table import Table
    source = f"a scratch copy of {copied_from}" if copied_from else "an empty scratch database"
    console.print(f"Simulated {result.start.isoformat()} → {result.end.isoformat()} on {source}: "
                  f"{result.ticks} journey tick(s) at {result.moments} moment(s), {result.events_ingested} event(s) "
                  "ingested as their time came" + (f" ({result.events_after_end} after the end, not ingested)"
                                                   if result.events_after_end else "")
                  + ". Nothing of the project was changed.", markup=False)
    by_journey: dict[str, list[dict]] = {}
    for row in result.funnel:
        by_journey.setdefault(row["journey"], []).append(row)
    for journey in result.journeys:
        rows = by_journey.get(journey, [])
        stages = {r["outcome"]: r["count"] for r in rows if r["step"] == ""}
        steps = [r for r in rows if r["step"] != ""]
        head = f"journey {journey}: " + (", ".join(f"{name} {n}" for name, n in stages.items()) or "nothing happened")
        if not steps:
            console.print(head, markup=False)
            continue
        table = Table(title=head, title_justify="left")
        for column in ("step", "outcome", "reason", "count"):
            table.add_column(column, justify="right" if column == "count" else "left")
        for r in steps:
            table.add_row(r["step"], r["outcome"], r["reason"], str(r["count"]))
        console.print(table)
    if contact is None:
        return
    rows = [r for r in result.timeline if r["contact"] == contact]
    if not rows:
        console.print(f"{contact}: nothing happened in the simulated journeys", markup=False)
        return
    table = Table(title=f"timeline of {contact}", title_justify="left")
    for column in ("at (UTC)", "local time", "journey", "step", "kind", "outcome", "reason"):
        table.add_column(column, no_wrap=column in ("at (UTC)", "local time"))
    for r in rows:
        reason = r["reason"] + (f" (until {_local(r['until_local'])})" if "until_local" in r else "")
        table.add_row(r["at"][:19].replace("T", " "), _local(r["local_time"]), r["journey"], r["step"], r["kind"],
                      r["outcome"], reason)
    console.print(table)


def simulate(journey: Optional[list[str]] = typer.Option(None, "--journey", help="Only this journey (repeatable)"),
             start: str = typer.Option(..., "--from", help="Start of the simulated period (ISO 8601)"),
             end: str = typer.Option(..., "--to", help="End of the simulated period (ISO 8601)"),
             contacts: Optional[Path] = typer.Option(None, "--contacts", help="Contacts (CSV or JSONL, as `import "
                                                     "contacts` reads) imported into the scratch copy at --from"),
             events: Optional[Path] = typer.Option(None, "--events", help="Events (JSONL, as `track` reads), each "
                                                   "ingested when the clock reaches its timestamp"),
             contact: Optional[str] = typer.Option(None, "--contact", help="Show this contact's timeline (e-mail)"),
             resolution: Optional[str] = typer.Option(
                 None, "--resolution", help="Least time between two ticks of a journey: work falling due in between "
                                            "is coalesced, at most this late (default 5m, the deployed tick "
                                            "interval; 0: every moment exactly)"),
             heartbeat: Optional[str] = typer.Option(
                 None, "--heartbeat", help="How often journeys with a segment, when or date trigger are evaluated "
                                           "when nothing else is due (default 1h)"),
             empty: bool = typer.Option(False, "--empty", help="Start from an empty database instead of a copy of "
                                                               "the project's"),
             as_json: bool = typer.Option(False, "--json", help="Print the funnel and every contact's timeline as "
                                                                "JSON (--contact filters it)")) -> None:
    """A discrete-event run of the real journey tick from --from to --to on a scratch copy of
    the database: the clock jumps to the next moment anything is due, events of --events are
    ingested as their time comes, file channels write into a scratch directory. Prints the
    funnel and, with --contact, that contact's timeline. The project's database and outbox
    are never changed."""
    from nurture.ingest import normalize_email
    from nurture.simulate import (DEFAULT_HEARTBEAT, DEFAULT_RESOLUTION, EventFeed, SimulationInputError,
                                  contact_known, import_contacts_file, simulate as run_simulation)
    begin, finish = _moment(start, "--from"), _moment(end, "--to")
    if begin > finish:
        raise CliError(f"--from ({begin.isoformat()}) is after --to ({finish.isoformat()})")
    step = _duration(resolution, "--resolution", DEFAULT_RESOLUTION)
    beat = _duration(heartbeat, "--heartbeat", DEFAULT_HEARTBEAT)
    if beat <= timedelta(0):
        raise CliError("--heartbeat: must be longer than 0")
    who = None
    if contact is not None:
        try:
            who = normalize_email(contact)
        except ValueError as exc:
            raise CliError(f"--contact: {exc}") from None
    contacts, events = _file(contacts, "--contacts"), _file(events, "--events")
    spec, journeys = chosen_journeys(journey or [])
    try:
        feed = EventFeed.read(events) if events is not None else None
        with scratch_run(spec, empty=empty) as (rt, copied_from):
            if contacts is not None:
                import_contacts_file(rt, contacts, begin)
            if feed is not None:
                feed.check(rt, begin)
            result = run_simulation(rt, journeys, begin, finish, feed=feed, resolution=step, heartbeat=beat)
            if who is not None and not contact_known(rt, who):
                raise CliError(f"--contact: no contact {who} in the simulated database (the project's, "
                               "--contacts or --events)")
    except SimulationInputError as exc:
        for line in exc.details[:50]:
            err_console.print(line, highlight=False, markup=False)
        if len(exc.details) > 50:
            err_console.print(f"… and {len(exc.details) - 50} more", highlight=False, markup=False)
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read an input file: {exc.strerror or exc}") from None
    if as_json:
        print(json.dumps(result.as_dict(who), indent=1, ensure_ascii=False))
        return
    print_result(result, who, copied_from)


def register(app: typer.Typer) -> None:
    app.command()(simulate)

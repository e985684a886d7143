"""`nurture validate` and `nurture preview`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, root, store
from nurture.settings import database_url
from nurture.rendering.email_message import sms_segments
from nurture.rendering.templates import RenderError


def init(directory: Path = typer.Argument(..., help="Where the new project goes (created if missing)")) -> None:
    """Start a project: one journey (welcome), policies.yaml, the layout, its template, the double
    opt-in confirmation's templates and a German catalog.

    Then: `cd DIR && nurture validate`, `nurture preview welcome`, and README's "Write a journey"."""
    import shutil
    from importlib.resources import files
    skeleton = Path(str(files("nurture") / "skeleton"))
    if (directory / "journeys").exists() or (directory / "templates").exists():
        raise CliError(f"{directory} already holds a project (journeys/ or templates/): nothing was changed", code=2)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for source in sorted(p for p in skeleton.rglob("*") if p.is_file()):
            target = directory / source.relative_to(skeleton)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    except OSError as exc:
        raise CliError(f"cannot create the project in {directory}: {exc.strerror or exc}") from None
    console.print(f"created a project in {directory}: journeys/welcome.yaml, journeys/policies.yaml, "
                  "templates/layouts/base.html, templates/email/welcome.html, templates/email/system/ (the double "
                  "opt-in confirmation), translations/de.po", markup=False)
    console.print(f"next: cd {directory} && nurture validate && nurture preview welcome", markup=False)


def _database_facts() -> tuple[Optional[set[str]], dict[str, int]]:
    """What validate reads from the project's database when it has one (never created here; a
    database that cannot be read is simply not consulted): the attribute names of its contacts,
    and the active contacts per journey that ran once (its versions are recorded)."""
    from sqlalchemy import func, select
    from sqlalchemy.engine import make_url

    from nurture.store.attributes import attribute_names
    from nurture.store.db import open_store
    from nurture.store.tables import enrollment_t, version_t
    url = database_url(root())
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
            return None, {}
        db = open_store(url)
    except Exception:
        return None, {}
    try:
        names = attribute_names(db)
    except Exception:
        names = None
    active: dict[str, int] = {}
    try:
        with db.reading() as conn:
            for (journey,) in conn.execute(select(version_t.c.journey).distinct()):
                active[journey] = conn.execute(select(func.count()).select_from(enrollment_t).where(
                    enrollment_t.c.journey == journey, enrollment_t.c.status == "active")).scalar() or 0
    except Exception:
        active = {}
    finally:
        db.dispose()
    return names, active


def validate() -> None:
    """Check every journey, policies.yaml, segments.yaml and the templates they use."""
    started = time.perf_counter()
    attributes, active = _database_facts()
    spec = open_project(strict=False, attributes=attributes)
    for error in spec.errors:
        console.print(str(error), markup=False)
    for warning in spec.warnings:
        console.print(str(warning), markup=False)
    loaded = set(spec.journeys) | {e.path.removeprefix("journeys/").removesuffix(".yaml") for e in spec.errors}
    gone = {name: n for name, n in active.items() if n and name not in loaded}
    for name, n in sorted(gone.items()):  # a deleted (or renamed) journey file strands its contacts
        console.print(f"warning: journey '{name}' ran here, but no file in journeys/ declares it: {n} contact(s) "
                      "are still active in it and wait where they are (restore the journey to let them finish)",
                      markup=False)
    took = time.perf_counter() - started
    if spec.errors:
        files = sorted({e.path for e in spec.errors})
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        err_console.print(f"{len(spec.errors)} error(s) in {len(files)} file(s): {shown}; "
                          f"{len(spec.journeys)} journey(s) valid", markup=False)
        raise typer.Exit(1)
    warnings = len(spec.warnings) + len(gone)
    warned = f", {warnings} warning(s)" if warnings else ""
    console.print(f"ok: {len(spec.journeys)} journey(s), {len(spec.segments)} segment(s) valid{warned} ({took:.2f}s)")


def preview(journey: str = typer.Argument(..., help="Journey name"),
            step: Optional[str] = typer.Option(None, "--step", help="Only this send step"),
            contact: Optional[str] = typer.Option(None, "--contact", help="E-mail of a contact to render for"),
            event: Optional[str] = typer.Option(None, "--event", help="Trigger event properties as JSON"),
            html: bool = typer.Option(False, "--html", help="Print the HTML part too")) -> None:
    """Render what a contact would receive from a journey's send steps."""
    from nurture.send.preview import PreviewError, preview_journey
    spec = open_project(only=journey)
    props = None
    if event:
        try:
            props = json.loads(event)
        except json.JSONDecodeError as exc:
            raise CliError(f"--event is not JSON: {exc.msg}") from None
        except RecursionError:
            raise CliError("--event is nested far too deep") from None
        except ValueError as exc:  # an integer of more than 4300 digits
            raise CliError(f"--event is not JSON: {str(exc)[:120]}") from None
        if not isinstance(props, dict):
            raise CliError("--event must be a JSON object")
    try:
        previews = preview_journey(spec, store(), journey, step_id=step, email=contact, event_properties=props)
    except PreviewError as exc:
        raise CliError(str(exc)) from None
    except RenderError as exc:
        hint = ("" if contact or event else " (the sample contact's trigger event has only sample properties: "
                "give them with --event JSON, or render for a real contact with --contact EMAIL)")
        raise CliError(f"template error: {exc}{hint}") from None
    for p in previews:
        console.rule(f"{journey} / {p.step_id} ({p.channel}) → {p.to}")
        if p.channel == "email":
            console.print(f"Subject: {p.subject}", markup=False)
            if p.preheader:
                console.print(f"Preheader: {p.preheader}", markup=False)
            console.print(p.text, markup=False)
            if html:
                console.print(p.html, markup=False)
        else:
            console.print(p.text, markup=False)
            if p.channel == "sms":
                encoding, segments = sms_segments(p.text)
                console.print(f"[dim]{len(p.text)} characters, {encoding}, {segments} segment(s)[/dim]")


def graph(journey: str = typer.Argument(..., help="Journey name"),
          svg: Optional[Path] = typer.Option(None, "--svg", help="Write the diagram as one self-contained SVG file"),
          mermaid: bool = typer.Option(False, "--mermaid", help="Print Mermaid text (the default without --svg)")
          ) -> None:
    """The journey as a diagram: its steps and paths, with the counts of the message log per
    step (entered, sent, queued, deferred, suppressed, skipped, failed, here now) and per split arm."""
    from nurture.compiler import compile_journey
    from nurture.graph import build_graph, journey_graph, to_mermaid, to_svg
    spec = open_project(only=journey)
    if journey not in spec.journeys:
        raise CliError(f"journey '{journey}' has errors: run `nurture validate`")
    plan = compile_journey(spec.journeys[journey])
    try:
        with store().reading() as conn:
            drawn = journey_graph(conn, plan)
    except CliError:
        raise
    except Exception:  # no database yet: the diagram without counts
        drawn = build_graph(plan)
    if svg is not None:
        try:
            svg.parent.mkdir(parents=True, exist_ok=True)
            svg.write_text(to_svg(drawn), encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {svg}: {exc.strerror or exc}") from None
        err_console.print(f"wrote {svg}", markup=False)
    if mermaid or svg is None:
        print(to_mermaid(drawn), end="")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(graph)
    app.command()(validate)
    app.command()(preview)

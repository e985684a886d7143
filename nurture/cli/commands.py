"""The `nurture` command: the composition root that wires engine, flows and integrations.

Verbs live in modules of this package, each with a `register(app)`; a user error ends with a
clear message and a non-zero exit code, never a traceback (NURTURE_DEBUG=1 shows one for bugs).
"""
from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.markup import escape

from nurture.cli.invocation import CliError, console, err_console
from nurture.settings import Settings, SettingsError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Nurture: marketing journeys in YAML, compiled into Prefect flows.")

VERB_MODULES = ("project_verbs", "data_verbs", "run_verbs", "sync_verbs", "web_verbs", "report_verbs",
                "outbox_verbs", "privacy_verbs", "crm_verbs", "conversions_verbs", "plan_verbs", "simulate_verbs",
                "test_send_verbs", "server_verbs")


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version
        try:
            console.print(f"nurture {version('nurture')}", markup=False)
        except PackageNotFoundError:  # running from a checkout that was never installed
            console.print("nurture (not installed)", markup=False)
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          project: str = typer.Option(None, "--project", "-p", help="Project directory (default: current directory)",
                                      envvar="NURTURE_PROJECT"),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit")) -> None:
    if project:
        # A mistyped directory used to become a new, empty project (its database made on the
        # spot): an import went there with exit 0, and `messages` answered [] — only `init`
        # makes a project directory.
        if ctx.invoked_subcommand != "init" and not os.path.isdir(project):
            raise CliError(f"the project directory {project} does not exist (--project / NURTURE_PROJECT); "
                           f"`nurture init {project}` makes one")
        os.environ["NURTURE_PROJECT"] = os.path.abspath(project)


for _name in VERB_MODULES:
    try:
        _module = importlib.import_module(f"nurture.cli.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"nurture.cli.{_name}":
            raise
        continue
    _module.register(app)


def _unwrap(doc: str) -> str:
    """A docstring as help text: each paragraph one line (the terminal wraps it to its width);
    blank lines between paragraphs kept."""
    import inspect
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _unwrap_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None and command.callback.__doc__:
            command.callback.__doc__ = _unwrap(command.callback.__doc__)
        if command.help:
            command.help = _unwrap(command.help)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_help(group.typer_instance)


_unwrap_help(app)


def _is_usage_error(exc: Exception) -> bool:
    """Click's own exceptions (typer vendors a copy of click in recent versions)."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__) and hasattr(exc, "show")


def main() -> None:
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except CliError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(exc.code)
    except SettingsError as exc:  # a setting a command needs holds a value it cannot use: it names it
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and real bugs
        if _is_usage_error(exc):
            exc.show()
            sys.exit(exc.exit_code)
        if Settings.from_env(os.environ).debug:
            raise
        err_console.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc}\n"
                          "(this is a bug in Nurture; run with NURTURE_DEBUG=1 for the traceback)", highlight=False)
        sys.exit(70)

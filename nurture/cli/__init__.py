"""The `nurture` command (the console script's entry point).

`main` first offers `nurture run` to the project's warm runner, when `nurture server start`
left one running (nurture.cli.warm: Prefect and the project already loaded — a run takes about
a second instead of four); otherwise, and for every other verb, it imports the composition root,
nurture.cli.commands, which wires engine, flows and integrations into the Typer app.
"""
from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    from nurture.cli.warm import delegate
    code = delegate(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from nurture.cli.commands import main as run_command
    run_command()


def __getattr__(name: str) -> Any:  # `from nurture.cli import app` and the like: the composition root's names
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib
    import importlib.util
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule (prefect_env, …)
        return importlib.import_module(f"{__name__}.{name}")
    from nurture.cli import commands
    try:
        return getattr(commands, name)
    except AttributeError:
        raise AttributeError(f"module 'nurture.cli' has no attribute '{name}'") from None

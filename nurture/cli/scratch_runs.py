"""What `nurture plan` and `nurture simulate` share: the journeys a run is asked for (named,
checked, or every valid one), and a Runtime over a scratch copy of the project's database
(nurture.scratch) whose errors are CLI errors."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from nurture.cli.invocation import CliError, err_console, open_project, root
from nurture.runtime.context import Runtime
from nurture.scratch import open_scratch, scratch_runtime
from nurture.settings import database_url
from nurture.spec.errors import did_you_mean
from nurture.spec.project import ProjectSpec
from nurture.store.db import DatabaseUnavailable


def chosen_journeys(names: Sequence[str]) -> tuple[ProjectSpec, list[str]]:
    """The project and the journeys to run: `names` (each must exist and be free of errors),
    or every journey without errors (the broken ones named on stderr, as `nurture run` does).
    Errors of policies.yaml stop everything."""
    spec = open_project(strict=False)
    if spec.fatal_errors:
        open_project()  # prints every error and stops
    if not names:
        for error in spec.errors:
            err_console.print(f"warning: {error}", highlight=False, markup=False)
        chosen = [name for name in spec.journey_names if name in spec.journeys and not spec.errors_of(name)]
        if not chosen:
            raise CliError(f"no journey without errors in {spec.journeys_dir}")
        return spec, chosen
    chosen = []
    for name in dict.fromkeys(names):
        if name not in spec.journey_names:
            hint = did_you_mean(name, spec.journey_names)
            raise CliError(f"no journey named '{name}' in {spec.journeys_dir}" + (f" ({hint})" if hint else ""))
        errors = spec.errors_of(name)
        if errors:
            for error in errors:
                err_console.print(str(error), highlight=False, markup=False)
            raise CliError(f"journey {name} has {len(errors)} error(s) (run `nurture validate`); nothing was run")
        chosen.append(name)
    return spec, chosen


@contextmanager
def scratch_run(spec: ProjectSpec, *, empty: bool = False) -> Iterator[tuple[Runtime, Optional[str]]]:
    """A Runtime over a scratch copy of the project's database (an empty one with `empty`, or
    when the project has none yet), and the copied database as it may be shown (None: empty).
    The copy and its scratch directory are removed afterwards."""
    try:
        scratch = open_scratch(database_url(root()), empty=empty)
    except DatabaseUnavailable as exc:
        raise CliError(f"cannot copy the database: {exc}") from None
    except Exception as exc:  # the server is down, credentials …
        raise CliError(f"cannot copy the database: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    rt = scratch_runtime(scratch, spec, os.environ)
    try:
        yield rt, scratch.copied_from
    finally:
        rt.close()
        scratch.close()

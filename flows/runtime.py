"""Building the engine's Runtime inside a flow run (cached per process and project).

Every flow run says which project and database it works on (one INFO line per flow run, the
password redacted: `run_identity` / `log_run_identity`). A flow run started from a deployment
— by a worker or by `nurture serve` — never creates a new, empty database: a worker without
NURTURE_DATABASE_URL would otherwise tick, green, on an empty SQLite file of its own. It fails
with `DatabaseMissing` naming the database and how to set it, unless NURTURE_CREATE_DATABASE=1.
Flows called directly (the CLI's one-shot commands, the demo, tests) create it as before.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from sqlalchemy.exc import SQLAlchemyError

from nurture.redaction import redact
from nurture.runtime import Runtime
from nurture.settings import (CREATE_DATABASE_ENV, DATABASE_URL_ENV, database_creation_allowed_by_env,
                              database_secrets, database_url, database_url_configured, describe_database,
                              project_root)
from nurture.spec.project import ProjectSpec, load_project, project_fingerprint
from nurture.store.db import DatabaseMissing, DatabaseUnavailable, open_store

_cache: dict[tuple[str, str], Runtime] = {}
_stamps: dict[tuple[str, str], tuple] = {}
_adopted: dict[str, ProjectSpec] = {}  # project root → a spec its caller loaded (adopt)


class ProjectInvalid(Exception):
    """The project's YAML or templates have errors; the message lists them all. Never retried:
    the same files give the same errors (see `retry_unless_invalid`)."""


def invalid(errors) -> ProjectInvalid:
    return ProjectInvalid("the project has errors:\n" + "\n".join(str(e) for e in errors))


def retry_unless_invalid(task, task_run, state) -> bool:
    """Prefect retry condition of every task: retry a failure, except a project error and a
    stored value the database cannot read — the same rows fail the same way every time, and
    two retries 5–10 s apart only held up every tick while such a row was there."""
    try:
        state.result()
    except ProjectInvalid:
        return False
    except Exception as exc:
        return not unreadable_stored_value(exc)
    return True


def unreadable_stored_value(exc: BaseException) -> bool:
    """A stored value a statement cannot read, whichever run reads it: SQLite's JSON functions
    refusing a row (`malformed JSON`: a NaN an older version or a hand wrote), a PostgreSQL data
    exception (SQLSTATE class 22: a value out of range, an invalid input), or a value that is not
    JSON or not UTF-8. A busy or lost database (also an OperationalError) is retried."""
    import sqlite3

    from sqlalchemy.exc import DataError, OperationalError
    if isinstance(exc, (DataError, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    if isinstance(exc, (OperationalError, sqlite3.OperationalError)):
        return "malformed JSON" in str(exc)
    return False


def require_valid(rt: Runtime, *files: str) -> None:
    """Raise ProjectInvalid when one of the shared files a flow depends on (segments,
    scoring) has errors; the flows that do not depend on it run."""
    errors = [e for name in files for e in rt.project.file_errors(name)]
    if errors:
        raise invalid(errors)


def adopt(spec: ProjectSpec) -> None:
    """Hand this process's flows a project the caller has just loaded in full (`nurture run`,
    the demo), so the first flow run does not load and check every file again. Used only
    while the files are as they were when it was loaded (`ProjectSpec.fingerprint`)."""
    if spec.fingerprint:
        _adopted[str(spec.root)] = spec


def runtime_for(project: Optional[str] = None) -> Runtime:
    root = project_root(project)
    url = database_url(root)
    key = (str(root), url)
    # Every file a Runtime reads, with its time and size: an edit, a new or a deleted file
    # reloads the project in a long-lived process (`nurture serve`, the warm runner) — and
    # so does another environment (the warm runner runs each caller's `nurture run` with the
    # caller's: another channel, sender or secret must not be the first caller's).
    env = dict(os.environ)
    stamp = (project_fingerprint(root), sorted((k, v) for k, v in env.items() if k.startswith("NURTURE_")))
    if key in _cache and _stamps.get(key) != stamp:
        _cache.pop(key).close()
    if key not in _cache:
        spec = _adopted.pop(str(Path(root).resolve()), None)
        if spec is None or spec.fingerprint != stamp[0]:
            spec = load_project(root)
        if spec.fatal_errors:  # policies.yaml or no project at all: nothing can run
            raise invalid(spec.fatal_errors)
        # A broken journey (or segments / scoring file) fails only what depends on it: the
        # journey's own flow, the sync, scoring — see ProjectSpec.errors_of / require_valid.
        store = open_run_store(url)
        _stamps[key] = stamp
        _cache[key] = Runtime(store, spec, env=env)
    _log_identity_once(root, url)
    return _cache[key]


# ---------------------------------------------------------------- which project, which database


def in_deployment_run() -> bool:
    """True inside a flow run created from a deployment (a worker's or `nurture serve`'s run,
    and the subflows and tasks of one); False for flows called directly and outside flows."""
    try:
        from prefect.runtime import deployment
        return deployment.id is not None
    except Exception:  # no Prefect context, or the API cannot say: not a deployment run
        return False


def database_creation_allowed() -> bool:
    """May this process set up a new, empty database? Yes, unless it runs a deployment's flow
    run (then only with NURTURE_CREATE_DATABASE=1)."""
    return database_creation_allowed_by_env() or not in_deployment_run()


def missing_database_advice(url: str, who: str = "a deployment run") -> str:
    """What to do when `who` finds no database at `url` (for DatabaseMissing's message)."""
    if database_url_configured():
        source = f"{DATABASE_URL_ENV} points there"
    else:
        source = f"{DATABASE_URL_ENV} is not set, so that is the project's default SQLite file"
    where = ("before starting `nurture serve`" if who.startswith("`nurture serve`") else
             "in the environment of the worker (or of `nurture serve`), or in prefect.yaml's "
             "work_pool.job_variables.env")
    return (f"{source}, and {who} does not create a new, empty database. Set {DATABASE_URL_ENV} to the "
            f"database that holds your contacts (postgresql://USER:PASSWORD@HOST/DB or sqlite:////PATH) "
            f"{where}. To start on an empty database, set {CREATE_DATABASE_ENV}=1 (or create it with a "
            "one-shot command such as `nurture import contacts FILE`)")


def open_run_store(url: str):
    """open_store for a flow run: refuses to create a database in a deployment run. A database
    that cannot be opened at all (a file that is no SQLite database, a server refusing) is
    DatabaseUnavailable, named as the one-shot commands name it, not an internal error."""
    try:
        return open_store(url, create=database_creation_allowed())
    except DatabaseMissing:
        raise DatabaseMissing(url, missing_database_advice(url)) from None
    except DatabaseUnavailable:
        raise
    except SQLAlchemyError as exc:
        detail = redact(" ".join(str(getattr(exc, "orig", None) or exc).split()), database_secrets(url))
        raise DatabaseUnavailable(f"{describe_database(url)}: {type(exc).__name__}: {detail}") from None


def run_identity(project: Optional[str] = None) -> dict:
    """{project, database}: the project directory and the database URL (password redacted)
    a run with this `project` parameter works on, e.g. for a tick's artifact."""
    root = project_root(project)
    return {"project": str(root), "database": describe_database(database_url(root))}


def identity_line(project: Optional[str] = None) -> str:
    identity = run_identity(project)
    line = f"project {identity['project']}, database {identity['database']}"
    if not database_url_configured():
        line += f" ({DATABASE_URL_ENV} not set: the project's default)"
    return line


def log_run_identity(project: Optional[str] = None, logger: Optional[logging.Logger] = None) -> str:
    """Log (INFO) which project and database this run uses, to the run's logger when inside a
    flow or task run; returns the line."""
    line = identity_line(project)
    if logger is None:
        try:
            from prefect import get_run_logger
            logger = get_run_logger()
        except Exception:  # outside a flow or task run
            logger = logging.getLogger("nurture")
    logger.info("%s", line)
    return line


_identified: "OrderedDict[tuple[str, str], None]" = OrderedDict()


def _log_identity_once(root: Path, url: str) -> None:
    """The identity line once per flow run (runtime_for is called by every task)."""
    try:
        from prefect.runtime import flow_run
        run_id = flow_run.id
    except Exception:
        return
    if run_id is None or (run_id, str(root)) in _identified:
        return
    _identified[(run_id, str(root))] = None
    while len(_identified) > 1000:
        _identified.popitem(last=False)
    log_run_identity(str(root))


def forget_runtimes() -> None:
    for rt in _cache.values():
        rt.close()
        rt.store.dispose()
    _cache.clear()
    _stamps.clear()
    _adopted.clear()


# How late a scheduled run may start and still tick at its scheduled time (a worker's poll, a
# process starting under load). A later one is a backlog — runs a worker or a runner finds
# waiting after an outage, oldest first — and ticks at the time it starts.
LATE_AFTER = timedelta(minutes=2)


def logical_now(now: Optional[datetime], wall: Optional[datetime] = None) -> datetime:
    """The tick's clock: `--now` when given, else the flow run's scheduled start time — the
    same instant for every run of one schedule (the partitions of a journey on several
    workers) — unless the run starts more than LATE_AFTER after it. A late run ticking at its
    past schedule would judge exits, quiet hours and caps at a time long gone while its mail
    leaves now: a cart reminder to someone who bought during the outage, a mail at 23:00 the
    recipient's time, a day of the backlog's sends replayed within seconds past every cap."""
    if now is not None:
        return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    wall = wall or datetime.now(timezone.utc)
    try:
        from prefect.runtime import flow_run
        scheduled = flow_run.scheduled_start_time
        if scheduled is not None:
            start = datetime.fromtimestamp(scheduled.timestamp(), timezone.utc)
            return start if wall - start <= LATE_AFTER else wall
    except Exception:  # outside a flow run
        pass
    return wall

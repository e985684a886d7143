"""Building the engine's Runtime inside a flow run (cached per process and project)."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Optional

from nurture.runtime import Runtime
from nurture.settings import database_url, project_root
from nurture.spec.project import load_project
from nurture.store.db import open_store

_cache: dict[tuple[str, str], Runtime] = {}
_stamps: dict[tuple[str, str], float] = {}


class ProjectInvalid(Exception):
    """The project's YAML or templates have errors; the message lists them all. Never retried:
    the same files give the same errors (see `retry_unless_invalid`)."""


def invalid(errors) -> ProjectInvalid:
    return ProjectInvalid("the project has errors:\n" + "\n".join(str(e) for e in errors))


def retry_unless_invalid(task, task_run, state) -> bool:
    """Prefect retry condition of every task: retry a failure, except a project error."""
    try:
        state.result()
    except ProjectInvalid:
        return False
    except Exception:
        return True
    return True


def require_valid(rt: Runtime, *files: str) -> None:
    """Raise ProjectInvalid when one of the shared files a flow depends on (segments,
    scoring) has errors; the flows that do not depend on it run."""
    errors = [e for name in files for e in rt.project.file_errors(name)]
    if errors:
        raise invalid(errors)


def _fingerprint(root) -> float:
    """Newest modification time of the project's YAML and templates: an edit reloads them."""
    newest = 0.0
    for folder in (root / "journeys", root / "templates"):
        if folder.is_dir():
            for path in folder.rglob("*"):
                newest = max(newest, path.stat().st_mtime)
    return newest


def runtime_for(project: Optional[str] = None) -> Runtime:
    root = project_root(project)
    url = database_url(root)
    key = (str(root), url)
    stamp = _fingerprint(root)
    if key in _cache and _stamps.get(key) != stamp:
        _cache.pop(key).close()
    if key not in _cache:
        _stamps[key] = stamp
        spec = load_project(root)
        if spec.fatal_errors:  # policies.yaml or no project at all: nothing can run
            raise invalid(spec.fatal_errors)
        # A broken journey (or segments / scoring file) fails only what depends on it: the
        # journey's own flow, the sync, scoring — see ProjectSpec.errors_of / require_valid.
        _cache[key] = Runtime(open_store(url), spec, env=dict(os.environ))
    return _cache[key]


def forget_runtimes() -> None:
    for rt in _cache.values():
        rt.close()
        rt.store.dispose()
    _cache.clear()


def logical_now(now: Optional[datetime]) -> datetime:
    """The tick's clock: `--now` when given, else the flow run's scheduled start time."""
    if now is not None:
        return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    try:
        from prefect.runtime import flow_run
        scheduled = flow_run.scheduled_start_time
        if scheduled is not None:
            return datetime.fromtimestamp(scheduled.timestamp(), timezone.utc)
    except Exception:  # outside a flow run
        pass
    return datetime.now(timezone.utc)

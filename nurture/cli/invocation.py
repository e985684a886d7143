"""What one `nurture` invocation works with: its consoles, its project and database (from
--project / NURTURE_PROJECT / NURTURE_DATABASE_URL), its logical clock (--now), and CliError,
the user error that ends it with a message and an exit code instead of a traceback."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Collection, Optional

from rich.console import Console

from nurture.redaction import redact
from nurture.settings import database_secrets, database_url, describe_database, project_root
from nurture.spec.project import ProjectSpec, load_project
from nurture.store.db import DatabaseUnavailable, Store, make_engine, open_store

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def root() -> Path:
    return project_root()


def open_project(*, strict: bool = True, only: Optional[str] = None,
                 attributes: Optional[Collection[str]] = None) -> ProjectSpec:
    spec = load_project(root(), only=only, attributes=attributes)
    if strict and spec.errors:
        for error in spec.errors:
            err_console.print(str(error), highlight=False, markup=False)
        raise CliError(f"{len(spec.errors)} error(s) in the project; nothing was run")
    return spec


def store() -> Store:
    """The project's database (created and migrated on first use: one-shot commands may)."""
    url = database_url(root())
    try:
        return open_store(url)
    except DatabaseUnavailable as exc:
        raise CliError(f"cannot open the database: {exc}") from None
    except Exception as exc:  # (the driver's words may quote the URL: its password is masked)
        raise CliError(f"cannot open the database {describe_database(url)}: {type(exc).__name__}: "
                       f"{redact(str(exc), database_secrets(url))}") from None


def check_database() -> str:
    """Fail early, with the words of DatabaseUnavailable, when the database URL cannot work
    (a driver not installed, an unknown scheme) — before Prefect starts. Connects to nothing;
    returns the URL as it may be shown (password redacted)."""
    url = database_url(root())
    try:
        make_engine(url).dispose()
    except DatabaseUnavailable as exc:
        raise CliError(f"cannot open the database: {exc}") from None
    return describe_database(url)


def parse_now(value: Optional[str], option: str = "--now") -> Optional[datetime]:
    """An ISO time given on the command line; a bad one is a CliError naming its `option`."""
    if value is None:
        return None
    from nurture.ingest import parse_timestamp
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)

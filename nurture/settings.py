"""Where things are: the project directory, its data directory and the database URL — and how
to say which database a run uses without printing its password."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

DATABASE_URL_ENV = "NURTURE_DATABASE_URL"
# Lets a deployment or served flow run start on a new, empty database (they refuse by default:
# an empty database is almost always a worker without NURTURE_DATABASE_URL).
CREATE_DATABASE_ENV = "NURTURE_CREATE_DATABASE"

_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token")
_TRUE = {"1", "true", "yes", "on"}


def project_root(project: Optional[str | Path] = None) -> Path:
    return Path(project or os.environ.get("NURTURE_PROJECT") or Path.cwd()).resolve()


def data_dir(root: Path) -> Path:
    """NURTURE_DATA_DIR, or <project>/.nurture: the SQLite file, the file outbox, exports."""
    override = os.environ.get("NURTURE_DATA_DIR")
    return Path(override).resolve() if override else root / ".nurture"


def database_url(root: Path) -> str:
    """NURTURE_DATABASE_URL, or the embedded SQLite file under <project>/.nurture/."""
    return os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{data_dir(root) / 'nurture.db'}"


def database_url_configured() -> bool:
    """True when NURTURE_DATABASE_URL is set; False when the project's default SQLite file is used."""
    return bool(os.environ.get(DATABASE_URL_ENV))


def database_creation_allowed_by_env() -> bool:
    """NURTURE_CREATE_DATABASE=1 (or true/yes/on)."""
    return os.environ.get(CREATE_DATABASE_ENV, "").strip().lower() in _TRUE


def describe_database(url: str) -> str:
    """The database URL as it may be shown in logs, artifacts and errors: the password (in the
    authority or as a query parameter) replaced by ***, everything else as configured."""
    try:
        from sqlalchemy.engine import make_url
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy can read: redact what looks like user:password@
        return _redact_query(re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url))
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    if not parsed.query:
        return shown
    pairs = []
    for key, value in parsed.query.items():
        for item in (value if isinstance(value, tuple) else (value,)):
            pairs.append(f"{key}={'***' if key.lower() in _SECRET_QUERY_KEYS else item}")
    return f"{shown}?{'&'.join(pairs)}"


def _redact_query(url: str) -> str:
    base, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        pairs.append(f"{key}{eq}***" if eq and key.lower() in _SECRET_QUERY_KEYS else pair)
    return f"{base}?{'&'.join(pairs)}"

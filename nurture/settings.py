"""Where things are: the project directory, its data directory and the database URL."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def project_root(project: Optional[str | Path] = None) -> Path:
    return Path(project or os.environ.get("NURTURE_PROJECT") or Path.cwd()).resolve()


def data_dir(root: Path) -> Path:
    """NURTURE_DATA_DIR, or <project>/.nurture: the SQLite file, the file outbox, exports."""
    override = os.environ.get("NURTURE_DATA_DIR")
    return Path(override).resolve() if override else root / ".nurture"


def database_url(root: Path) -> str:
    """NURTURE_DATABASE_URL, or the embedded SQLite file under <project>/.nurture/."""
    return os.environ.get("NURTURE_DATABASE_URL") or f"sqlite:///{data_dir(root) / 'nurture.db'}"

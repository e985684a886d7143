"""Datetimes read back from either database: aggregates (min/max) can come back naive or, on
SQLite, as text; the report compares them as aware UTC."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional


def aware(value: Any) -> Optional[datetime]:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

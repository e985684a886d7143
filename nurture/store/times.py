"""Datetimes read back from either database: SQLite gives them naive (they are UTC), an
aggregate (min/max) on SQLite possibly as text; the engine compares them as aware UTC."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional


def aware(value: Any) -> Optional[datetime]:
    """`value` as an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

"""Durations as marketers write them: `30m`, `2h`, `3d`, `1w` (also `45s`, `1d12h`)."""
from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)\s*([smhdw])")
_WHOLE = re.compile(r"^\s*(?:\d+\s*[smhdw]\s*)+$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The longest duration anything waits, re-enters or looks back: 100 years. `wait: 99999999w`
# passed validation and then failed every tick (a due time past the year 9999), and a longer
# one failed validation itself with an OverflowError instead of a located error.
MAX_DURATION = timedelta(days=36525)


class DurationTooLong(ValueError):
    """A well-written duration over MAX_DURATION."""


def parse_duration(text: str) -> timedelta:
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"'{text}' is not a duration: write e.g. 30m, 2h, 3d or 1w")
    seconds = 0
    for amount, unit in _PART.findall(text):
        if len(amount) > 12:  # (int() of thousands of digits is refused, and slow)
            seconds = MAX_DURATION.days * 86400 + 1
            break
        seconds += int(amount) * _SECONDS[unit]
    if seconds > MAX_DURATION.days * 86400:
        raise DurationTooLong(f"'{text.strip()}' is longer than {MAX_DURATION.days // 365} years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

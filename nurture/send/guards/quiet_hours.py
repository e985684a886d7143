"""Quiet hours in the recipient's own time zone.

A message that falls due inside the window is deferred to the window's end — never dropped.
Windows may span midnight ("21:00"–"08:00"). Local times are resolved with zoneinfo, so
daylight-saving days and half-hour / 45-minute zones need no special cases; a window end
that falls into a spring-forward gap opens at the equivalent wall-clock time after the gap.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class QuietWindow:
    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str) -> "QuietWindow":
        return cls(time.fromisoformat(start if len(start) == 5 else f"0{start}"),
                   time.fromisoformat(end if len(end) == 5 else f"0{end}"))

    def contains(self, local: time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@lru_cache(maxsize=1024)
def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a folder of the
                continue                                            # database, an over-long name no file
    return ZoneInfo("UTC")


def _at(day: date, wall: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, wall, tzinfo=tz).astimezone(timezone.utc)


def next_allowed_send(due_at: datetime, tz: ZoneInfo, window: QuietWindow | None) -> datetime:
    """`due_at` itself when it is outside the quiet window, else the end of the window (UTC)."""
    if window is None:
        return due_at
    local = due_at.astimezone(tz)
    wall = local.time().replace(tzinfo=None)
    if not window.contains(wall):
        return due_at
    day = local.date()
    if window.start > window.end and wall >= window.start:
        day += timedelta(days=1)  # evening part of an overnight window: ends tomorrow morning
    end = _at(day, window.end, tz)
    if end <= due_at:  # the repeated hour when clocks go back: the window's end comes a second time
        end = datetime.combine(day, window.end, tzinfo=tz).replace(fold=1).astimezone(timezone.utc)
    return max(end, due_at)


def next_local_time(after: datetime, tz: ZoneInfo, wall: time, weekdays: frozenset[int] | None = None) -> datetime:
    """The first instant at or after `after` when the local clock shows `wall` on an allowed
    weekday (0 = Monday): the `wait_until` step. A wall time the clock shows twice (the
    repeated hour when clocks go back) is its first showing, else its second that night."""
    local = after.astimezone(tz)
    for offset in range(0, 8):
        day = local.date() + timedelta(days=offset)
        if weekdays is not None and day.weekday() not in weekdays:
            continue
        for candidate in (_at(day, wall, tz),
                          datetime.combine(day, wall, tzinfo=tz).replace(fold=1).astimezone(timezone.utc)):
            if candidate >= after:
                return candidate
    return _at(local.date() + timedelta(days=8), wall, tz)

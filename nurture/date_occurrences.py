"""When a date trigger fires: the occurrences of a contact date (a birthday every year, a
renewal date once), moved by the trigger's offset and placed at its local time of day in the
contact's own time zone.

Pure functions of dates, zones and a clock; nothing here reads a database. A yearly date of
Feb 29 occurs on Feb 28 in a non-leap year. A local moment that falls into a spring-forward
gap happens at the equivalent wall time after the gap (02:30 on the night clocks jump from
02:00 to 03:00 is 03:30), the way zoneinfo resolves a wall time with fold=0; a moment repeated
by a fall-back night is its first occurrence.
"""
from __future__ import annotations

import re
from calendar import isleap
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo

_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:$|[T ])")

# The widest distance between a UTC date and a local date anywhere (UTC-12 … UTC+14), plus a
# day for the local time of day: a prefilter window this much wider cannot miss a contact.
_ZONE_SLACK = timedelta(days=2)


def parse_date_value(value: Any) -> Optional[date]:
    """The date a contact value holds: ISO `YYYY-MM-DD`, or a full ISO datetime's date as it
    is written; None when it holds no date (`March 14`, `2023-02-30`, a number)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    match = _ISO_DATE.match(value.strip())
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def on_year(anchor: date, year: int) -> date:
    """`anchor`'s month and day in `year`; Feb 29 is Feb 28 in a non-leap year."""
    try:
        return anchor.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def local_moment(day: date, at: time, offset: timedelta, tz: ZoneInfo) -> datetime:
    """The UTC instant when the local clock in `tz` shows `at` on `day`, moved by `offset`
    (wall-clock arithmetic: `-3d` at 09:00 is 09:00 three days before, across a DST change)."""
    wall = datetime.combine(day, at) + offset
    return wall.replace(tzinfo=tz).astimezone(timezone.utc)  # fold=0: a gap resolves after it


@dataclass(frozen=True)
class Occurrence:
    key: str  # unique per contact and journey: the enrollment's trigger_key
    moment: datetime  # UTC: when it fires, the enrollment's trigger time


def due_occurrence(anchor: date, *, yearly: bool, offset: timedelta, at: time, tz: ZoneInfo,
                   now: datetime, lookback: timedelta, anniversaries: bool = False) -> Optional[Occurrence]:
    """The latest occurrence of `anchor` whose moment is at or before `now` and not more than
    `lookback` before it; None when there is none (not yet, or too long ago). `anniversaries`
    (a yearly date of a contact column: `created_at`, the day of a signup): the anchor's own
    year is no occurrence — a signup day is not its own anniversary."""
    if yearly:
        # the occurrence belongs to the year of the date itself, whatever the offset
        spread = abs(offset.days) // 365 + 1
        year = now.astimezone(tz).year
        first = max(year - spread, anchor.year + 1) if anniversaries else year - spread
        days = [(str(y), on_year(anchor, y)) for y in range(first, year + spread + 1)]
    else:
        days = [(anchor.isoformat(), anchor)]
    moments = [(local_moment(day, at, offset, tz), key) for key, day in days]
    past = [(moment, key) for moment, key in moments if moment <= now]
    if not past:
        return None
    moment, key = max(past)
    if now - moment > lookback:
        return None
    return Occurrence(key, moment)


def anchor_window(now: datetime, offset: timedelta, lookback: timedelta) -> tuple[date, date]:
    """The UTC dates between which every anchor day that can be due at `now` lies (a day of
    slack on each side for time zones and the time of day): for the SQL prefilter."""
    return ((now - lookback - offset - _ZONE_SLACK).date(), (now - offset + _ZONE_SLACK).date())


def month_days(first: date, last: date) -> Optional[list[str]]:
    """Every `MM-DD` from `first` to `last` (Feb 29 with a non-leap Feb 28, whose birthdays
    fall on it); None when the window spans a whole year (no prefilter then)."""
    if (last - first).days >= 365:
        return None
    out: list[str] = []
    day = first
    while day <= last:
        out.append(f"{day.month:02d}-{day.day:02d}")
        if day.month == 2 and day.day == 28 and not isleap(day.year):
            out.append("02-29")
        day += timedelta(days=1)
    return out

"""Frequency caps across all journeys: at most `max` messages per channel (or over all
channels) within a rolling window. Pure: the history comes from one query per batch."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Optional


@dataclass(frozen=True)
class Cap:
    channel: str  # email | sms | any
    max: int
    per: timedelta


def cap_blocks_until(history: Iterable[tuple[str, datetime]], channel: str, now: datetime,
                     caps: Iterable[Cap]) -> Optional[datetime]:
    """None when a message on `channel` may go out at `now`; else the earliest time every cap
    has room again (for a cap of 0, which never has: one window later, to look again)."""
    history = list(history)
    blocked: Optional[datetime] = None
    for cap in caps:
        if cap.channel not in ("any", channel):
            continue
        window_start = now - cap.per
        inside = sorted(t for ch, t in history if (cap.channel == "any" or ch == cap.channel) and t > window_start)
        if len(inside) < cap.max:
            continue
        if cap.max == 0:
            # The channel is paused: never room, but looked at again one window later, so that a
            # deferred contact goes within a window of the pause being lifted (it was 100 years).
            opens = now + cap.per
        else:  # room opens when enough of the oldest messages have left the window
            opens = inside[len(inside) - cap.max] + cap.per
        blocked = opens if blocked is None else max(blocked, opens)
    return blocked

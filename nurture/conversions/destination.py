"""The `conversions` role: what a conversion API integration is, sees and answers.

A destination is a class registered in the `nurture.integrations` entry-point group as
`conversions.<platform>` (`conversions.meta`, `conversions.google`, …) with `role =
"conversions"`; `journeys/conversions.yaml` names it by its `platform` (`destination: meta`).
The engine hands it batches of at most `max_batch` ConversionEvents — raw identifiers
(normalizing and hashing them is the destination's job, as for audiences), the value, the
click ids, the de-duplication id — and gets one ConversionResult per event back, never an
exception for a per-event or provider failure. Events older than `max_age(target)` never
reach it: the engine skips them (`too_old`) before batching.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, Mapping, Optional, Sequence

from nurture.registry import Integration

ROLE = "conversions"
ResultStatus = Literal["sent", "failed", "skipped", "validated"]


def registered_name(platform: str) -> str:
    """The registry name of a platform's conversions destination: `meta` → `conversions.meta`."""
    return f"{ROLE}.{platform}"


@dataclass(frozen=True)
class ConversionEvent:
    """One conversion as a destination sees it. Everything here was cleaned by the engine
    (nurture.conversions.event_fields): `value` is finite and in range or None, `currency` an
    ISO 4217 code, click ids short printable tokens, `lead_id` Meta's 15–17 digit lead id."""
    event_pk: int
    event_id: str  # the de-duplication id sent to the platform (deterministic, see event_fields)
    conversion: str  # the declared event: purchase, deal_won, mql, …
    occurred_at: datetime
    contact_id: int
    currency: str
    value: Optional[float] = None
    email: Optional[str] = None
    phone: Optional[str] = None
    first_name: Optional[str] = None
    last_name: Optional[str] = None
    country: Optional[str] = None
    click_ids: Mapping[str, str] = field(default_factory=dict)  # gclid, gbraid, wbraid, fbclid, li_fat_id, …
    clicked_at: Mapping[str, datetime] = field(default_factory=dict)  # when each click id was seen
    lead_id: Optional[str] = None  # Meta Lead Ads' leadgen id, when the lead came from there


@dataclass(frozen=True)
class ConversionResult:
    """What the platform did with one event. `sent`: acknowledged; `failed`: refused or kept
    failing (retried by the next run); `skipped`: never to be sent (e.g. no identifier the
    platform can match) with the reason; `validated`: a dry run checked it (it stays due)."""
    event_pk: int
    status: ResultStatus
    reason: Optional[str] = None
    request_id: Optional[str] = None


class ConversionDestination(Integration):
    """A conversion API. `required_keys` / `optional_keys`: the keys of its entries in
    conversions.yaml beside `destination`."""
    role: ClassVar[str] = ROLE
    platform: ClassVar[str]
    required_keys: ClassVar[tuple[str, ...]] = ()
    optional_keys: ClassVar[tuple[str, ...]] = ()
    max_batch: ClassVar[int] = 1000
    requests_sent: int = 0  # provider requests made (retries included), or files written

    @classmethod
    def target_key(cls, target: Mapping[str, Any]) -> str:
        """A stable name of one conversion destination, e.g. `meta:1234567890`: the key of its
        acknowledged state. Options that do not change where events land are not part of it."""
        return ":".join([cls.platform, *(str(target[k]) for k in cls.required_keys)])

    @classmethod
    def check_target(cls, target: Mapping[str, Any]) -> dict[str, str]:
        """Problems with the values of a conversions.yaml entry (key → message), for
        `nurture validate`; the keys themselves are checked by the engine."""
        return {}

    def max_age(self, target: Mapping[str, Any]) -> Optional[timedelta]:
        """How old an event the platform still takes (None: no limit)."""
        return None

    @abc.abstractmethod
    def send(self, target: Mapping[str, Any], events: Sequence[ConversionEvent], now: datetime
             ) -> list[ConversionResult]:
        """Send one batch (at most `max_batch` events); one result per event, in any order."""

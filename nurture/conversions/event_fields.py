"""What a conversion carries, read out of a stored event — whose properties are whatever a
contact's browser or a CRM export sent, so nothing is trusted.

Pure functions, table-tested:
- `conversion_id(event_id)`: the de-duplication id every platform receives (Meta `event_id`,
  Google `transactionId`, LinkedIn `eventId`): `nurture-` + the first 32 hex digits of the
  SHA-256 of the stored event's own `event_id`. Deterministic, so a batch re-sent after a
  crash carries the same ids and the platform counts each conversion once; a hash, so an id a
  provider built from an address never leaves as it is.
- `value_of(properties)`: the `value` property as a finite number from 0 to 1e12 (text that
  reads as a number counts, like the report reads it), rounded to cents; anything else: None.
- `currency_of(properties, default)`: the `currency` property when it is an ISO 4217 code
  (Babel's list, so three letters such as `ABC`, `PTS` or `BTC` are not one), else
  policies.yaml's currency.
- `lead_id_of(properties, attributes)`: Meta's lead id (15–17 digits) from the event's
  `lead_id` property or the contact's `meta_lead_id` / `lead_id` attribute.
- `click_id(value)`: a click id kept only when it is a short printable token (a cut or
  altered click id matches nothing, so it is dropped, never repaired).
"""
from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache
from typing import Any, Mapping, Optional

from nurture.store.json_values import NUMBER_PATTERN

MAX_VALUE = 1e12
MAX_CLICK_ID_LENGTH = 500  # as nurture.sources keeps them
_NUMBER = re.compile(NUMBER_PATTERN)  # the number a text spells, as conditions and reports read it
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_LEAD_ID = re.compile(r"^\d{15,17}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


def conversion_id(event_id: str) -> str:
    return "nurture-" + hashlib.sha256(str(event_id).encode("utf-8")).hexdigest()[:32]


def value_of(properties: Any) -> Optional[float]:
    if not isinstance(properties, Mapping):
        return None
    raw = properties.get("value")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        if len(raw) > 40 or not _NUMBER.match(raw):
            return None
        raw = float(raw)
    if not isinstance(raw, (int, float)):
        return None
    try:
        number = float(raw)
    except OverflowError:  # an integer too large for a float
        return None
    if not math.isfinite(number) or number < 0 or number > MAX_VALUE:
        return None
    return round(number, 2)


def currency_of(properties: Any, default: str) -> str:
    raw = properties.get("currency") if isinstance(properties, Mapping) else None
    if isinstance(raw, str):
        code = raw.strip().upper()
        if _CURRENCY.match(code) and _is_iso_4217(code):
            return code
    return default


@lru_cache(maxsize=256)
def _is_iso_4217(code: str) -> bool:
    # A made-up code is refused by Meta (the whole request) and by Google: checked against
    # the real list, not only its shape. Babel is loaded only when a conversion carries one.
    from babel.numbers import is_currency
    return is_currency(code)


def lead_id_of(properties: Any, attributes: Any) -> Optional[str]:
    candidates = []
    if isinstance(properties, Mapping):
        candidates.append(properties.get("lead_id"))
    if isinstance(attributes, Mapping):
        candidates += [attributes.get("meta_lead_id"), attributes.get("lead_id")]
    for raw in candidates:
        if isinstance(raw, bool):
            continue
        if isinstance(raw, int):
            raw = str(raw)
        if isinstance(raw, str) and _LEAD_ID.match(raw.strip()):
            return raw.strip()
    return None


def click_id(value: Any) -> Optional[str]:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > MAX_CLICK_ID_LENGTH or not _TOKEN.match(text):
        return None
    return text

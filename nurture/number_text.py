"""When text reads as a number: the one rule for a stored value ("45.00", as shops send
prices), a condition's quoted bound (`score: {gte: "50"}`) and a report's amount.

`NUMBER_PATTERN` is a decimal number with an optional point, sign, exponent (at most three
digits: PostgreSQL's numeric reads every such number without overflowing) and surrounding
spaces, in ASCII only: PostgreSQL's regex (run with this very pattern) and its numeric cast know
no other digits, and Python's `\\d`, `\\s` and float() would also read "٤٥" or a no-break space.
`number_of_text` is the number it spells: a whole number of at most 19 digits exactly (an int,
as a JSON integer is read: conditions compare whole numbers exactly), anything else as a float,
0 under 1e-300 and no number (None) from `LIMIT` on — the bounds PostgreSQL applies.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Union

_SPACE = r"[ \t\n\r\f\v]"  # (the characters float() and PostgreSQL's numeric skip)
NUMBER_PATTERN = rf"^{_SPACE}*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{{1,3}})?{_SPACE}*$"
_NUMBER = re.compile(NUMBER_PATTERN)
_WHOLE = re.compile(r"[-+]?[0-9]+")
LIMIT = 1e300  # a magnitude from here on is no number (its products and sums overflow)
INT64 = 2 ** 63  # a whole number in (-INT64, INT64) is an SQL integer on SQLite and PostgreSQL


def number_of_text(value: Any) -> Optional[Union[int, float]]:
    """The number `value` spells (NUMBER_PATTERN), else None. SQLite's reading of a JSON string
    where a number belongs (registered with each connection, store.db)."""
    if not isinstance(value, str) or not _NUMBER.match(value):
        return None
    text = value.strip(" \t\n\r\f\v")
    if _WHOLE.fullmatch(text) and -INT64 < int(text) < INT64:
        return int(text)
    number = float(text)
    if not math.isfinite(number) or abs(number) >= LIMIT:
        return None
    return 0.0 if abs(number) < 1 / LIMIT else number

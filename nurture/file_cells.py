"""The cells of an imported file (`import spend`, `import deals`, `import products`, …): what a
blank cell is, how a value is shown in an error, a text cell, a money amount and a whole number —
checked the same way in every import, each problem a ValueError whose message names what to
write instead."""
from __future__ import annotations

import math
import re
import sys
from typing import Any, Optional

from nurture.ingest import text_problem

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_COMMA_DECIMAL = re.compile(r"\d+,\d{1,2}")
_WHOLE = re.compile(r"\+?\d+")

# The largest value of an INTEGER column on PostgreSQL (int4); SQLite would store more, so a
# larger one is refused in Python for both databases alike.
MAX_INT4 = 2**31 - 1


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def text_cell(value: Any, limit: int) -> str:
    """Text (a number written in JSON is taken as its digits), trimmed, without control
    characters, at most `limit` characters."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a deal id 4711 or a campaign named 2026 in JSON
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {show(value)}")
    text = value.strip()
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise ValueError("contains a control character (a line break or tab inside the value)")
    if len(text) > limit:
        raise ValueError(f"longer than {limit} characters")
    return text


def amount_cell(value: Any, *, example: str, negative: str, maximum: Optional[float] = None,
                over: str = "", overflow_note: bool = True) -> float:
    """A finite number ≥ 0 with a dot as decimal separator: '12,50' is refused with a hint rather
    than guessed (in '1,250' the comma may separate thousands). `example`: a number to show;
    `negative`: why a negative one is wrong; `maximum` and `over`: an upper bound and what
    passing it means."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number, not {show(value)}")
    shown = show(value.strip() if isinstance(value, str) else value)
    if isinstance(value, str):
        text = value.strip()
        if "," in text:
            hint = (f"write {text.replace(',', '.')}" if _COMMA_DECIMAL.fullmatch(text)
                    else "write the number without thousands separators, e.g. 1234.56")
            raise ValueError(f"'{shown}' has a comma: use a dot as the decimal separator ({hint})")
        if not _NUMBER.fullmatch(text):
            raise ValueError(f"'{shown}' is not a number (write it without a currency sign, e.g. {example})")
        amount = float(text)
    elif isinstance(value, int) and abs(value) > sys.float_info.max:
        raise ValueError("number too large (it overflows to Infinity)")
    else:
        amount = float(value)
    if not math.isfinite(amount):
        note = " (it overflows to Infinity)" if overflow_note and math.isinf(amount) else ""
        raise ValueError(f"{shown} is not a finite number{note}")
    if amount < 0:
        raise ValueError(f"{shown} is negative ({negative})")
    if maximum is not None and amount > maximum:
        raise ValueError(f"{shown} is over {maximum:,.0f}: {over}")
    return amount


def whole_number_cell(value: Any, *, maximum: int = MAX_INT4) -> int:
    """A whole number from 0 to `maximum` (written `12`, or 12 in JSON; 12.0 in JSON too)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'{show(value)}' is not a whole number ≥ 0")
    if value > maximum:
        raise ValueError(f"'{value}' is over {maximum:,}, the largest number this field holds")
    return value

"""A stored JSON value (an event property, a contact attribute) read as a number or a boolean
in SQL, the same way on SQLite and PostgreSQL, whatever a contact sent.

A condition such as `property: {cart_value: {gte: 20}}` compares the stored value with a
number. SQLAlchemy's `as_float()` is `CAST(props ->> 'cart_value' AS FLOAT)` on PostgreSQL: one
event whose `cart_value` is "abc", "1e400" or a list made that cast fail, and with it every
tick of the journey. On SQLite it is the bare JSON_EXTRACT, and SQLite orders any text above
every number: "abc" and "5" both passed `gte: 20`.

Here the value is a number when it is a JSON number, or text that reads as one
(`NUMBER_PATTERN`: "45.00", as shops send prices) of magnitude under 1e300; a boolean when it
is JSON true or false (or the text "true" / "false"); anything else is NULL — no number, so a
comparison with it is false (and `ne` counts it as different). SQLite reads the text through
`number_of_text`, a function each connection registers (store.db); PostgreSQL with the pattern
and a numeric cast, nested in CASE so that nothing is cast that does not match. Costs, from
bench/bench_conditions.py: see docs/scale.md.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

from sqlalchemy import Boolean, Float, Numeric, case, cast, func, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# A decimal number, as text: digits with an optional point, sign and exponent (at most three
# digits: PostgreSQL's numeric reads every such number without overflowing).
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?\s*$"
_NUMBER = re.compile(NUMBER_PATTERN)
LIMIT = 1e300  # a magnitude from here on is no number (its products and sums overflow)
SQLITE_FUNCTION = "nurture_number"


def number_of_text(value: Any) -> Optional[float]:
    """SQLite's reading of a JSON string: the number it spells (NUMBER_PATTERN), else None."""
    if not isinstance(value, str) or not _NUMBER.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) < LIMIT else None


class json_number(FunctionElement):
    """`json_number(props["key"])`: the JSON value at that index as a number, or NULL."""
    name = "json_number"
    type = Float()
    inherit_cache = True


class json_boolean(FunctionElement):
    """`json_boolean(props["key"])`: JSON true / false as a boolean, anything else NULL."""
    name = "json_boolean"
    type = Boolean()
    inherit_cache = True


def _sqlite_parts(element: FunctionElement, compiler: Any, **kw: Any) -> tuple[str, str]:
    """(the SQL of the value, of its JSON type) — the bare JSON_EXTRACT: the index expression
    itself compiles to a JSON_QUOTE of it."""
    (index,) = element.clauses  # props["key"]: its JSON column and its path (a bound parameter)
    return (compiler.process(func.json_extract(index.left, index.right), **kw),
            compiler.process(func.json_type(index.left, index.right), **kw))


@compiles(json_number, "sqlite")
def _sqlite_number(element: json_number, compiler: Any, **kw: Any) -> str:
    value, kind = _sqlite_parts(element, compiler, **kw)
    return (f"(CASE {kind} WHEN 'integer' THEN {value} WHEN 'real' THEN {value} "
            f"WHEN 'text' THEN {SQLITE_FUNCTION}({value}) END)")


@compiles(json_boolean, "sqlite")
def _sqlite_boolean(element: json_boolean, compiler: Any, **kw: Any) -> str:
    value, kind = _sqlite_parts(element, compiler, **kw)  # (the text "true" reads as true, as on PostgreSQL)
    return (f"(CASE {kind} WHEN 'true' THEN 1 WHEN 'false' THEN 0 "
            f"WHEN 'text' THEN (CASE {value} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END) END)")


@compiles(json_number, "postgresql")
def _pg_number(element: json_number, compiler: Any, **kw: Any) -> str:
    (index,) = element.clauses
    text = index.as_string()  # props ->> 'key': a JSON number's text, or a string's
    number = cast(text, Numeric)
    size = func.abs(number)  # (under 1e-300 is 0 as a float: the cast would fail, not round)
    readable = case((size >= literal_column(f"{LIMIT:g}"), None), (size < literal_column(f"{1 / LIMIT:g}"), 0.0),
                    else_=cast(number, Float))
    return compiler.process(case((text.op("~")(NUMBER_PATTERN), readable), else_=None), **kw)


@compiles(json_boolean, "postgresql")
def _pg_boolean(element: json_boolean, compiler: Any, **kw: Any) -> str:
    (index,) = element.clauses
    text = index.as_string()
    return compiler.process(case((text == "true", True), (text == "false", False), else_=None), **kw)

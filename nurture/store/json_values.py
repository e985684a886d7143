"""A stored JSON value (an event property, a contact attribute) read as a number, a boolean
or text in SQL, the same way on SQLite and PostgreSQL, whatever a contact sent.

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

As text (`json_text`, for a comparison with text), a value is its text rendering: a string
itself, a number as it is written (10115, 19.9), a boolean `true` / `false`, a list or an object
its JSON text (so `contains` finds an element of a list), null none. PostgreSQL's `->>` renders
values so; SQLite's JSON_EXTRACT returned a number or a boolean as an integer, a real or 1 / 0,
which never equalled the text "10115" or "true": an imported ZIP code (`ingest._coerce` makes
the cell 10115 a number) matched `zip: "10115"` on PostgreSQL only. (Left as it is: JSONB
writes a list with spaces, `["a", "b"]`, SQLite without; and a number written with an
exponent, 1e+20, is its digits in JSONB attributes.)

`contains` (`text_contains`) finds its text anywhere in the value, ignoring case, and every
character means itself (`%` and `_` are no wildcards). SQLite's LIKE ignores the case of A–Z
only and PostgreSQL's minds case: an ASCII needle is SQLite's LIKE as it is and PostgreSQL's
over lower() of both sides; any other needle is found in the lowercase text — on SQLite by
`lower_text` (Python's str.lower, registered with each connection as `SQLITE_LOWER`, since
SQLite's lower() folds A–Z only), on PostgreSQL by its lower(), which folds every script in a
UTF-8 database.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

from sqlalchemy import Boolean, Float, Numeric, String, case, cast, func, literal, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# A decimal number, as text: digits with an optional point, sign and exponent (at most three
# digits: PostgreSQL's numeric reads every such number without overflowing).
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?\s*$"
_NUMBER = re.compile(NUMBER_PATTERN)
LIMIT = 1e300  # a magnitude from here on is no number (its products and sums overflow)
SQLITE_FUNCTION = "nurture_number"
SQLITE_LOWER = "nurture_lower"


def number_of_text(value: Any) -> Optional[float]:
    """SQLite's reading of a JSON string: the number it spells (NUMBER_PATTERN), else None."""
    if not isinstance(value, str) or not _NUMBER.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) < LIMIT else None


def lower_text(value: Any) -> Any:
    """SQLite's `nurture_lower(text)`: the text in lowercase (str.lower); anything else as it is."""
    return value.lower() if isinstance(value, str) else value


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


class json_text(FunctionElement):
    """`json_text(props["key"])`: the JSON value at that index as its text (module docstring)."""
    name = "json_text"
    type = String()
    inherit_cache = True


LIKE_ESCAPE = "/"


def text_contains(text: Any, needle: str) -> Any:
    """`needle` occurs in `text` (SQL text), ignoring case, with no wildcards (module docstring)."""
    if needle.isascii():
        escaped = needle.replace(LIKE_ESCAPE, 2 * LIKE_ESCAPE).replace("%", LIKE_ESCAPE + "%").replace(
            "_", LIKE_ESCAPE + "_")
        return _ascii_contains(text, literal(f"%{escaped}%", String()))
    return _folded_contains(text, literal(needle, String()))


class _ascii_contains(FunctionElement):
    """`text` LIKE `pattern` (escaped, an ASCII needle between two %), ignoring case."""
    name = "ascii_contains"
    type = Boolean()
    inherit_cache = True


class _folded_contains(FunctionElement):
    """`needle` occurs in the lowercase `text`, for a needle beyond ASCII."""
    name = "folded_contains"
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


@compiles(json_text, "sqlite")
def _sqlite_text(element: json_text, compiler: Any, **kw: Any) -> str:
    value, kind = _sqlite_parts(element, compiler, **kw)
    (index,) = element.clauses  # `->`: a number's JSON text, as it was written
    written = f"({compiler.process(index.left, **kw)} -> {compiler.process(index.right, **kw)})"
    return (f"(CASE {kind} WHEN 'text' THEN {value} WHEN 'integer' THEN {written} WHEN 'real' THEN {written} "
            f"WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE {value} END)")


@compiles(_ascii_contains, "sqlite")
def _sqlite_ascii_contains(element: _ascii_contains, compiler: Any, **kw: Any) -> str:
    text, pattern = (compiler.process(c, **kw) for c in element.clauses)  # (SQLite's LIKE ignores A–Z case)
    return f"({text} LIKE {pattern} ESCAPE '{LIKE_ESCAPE}')"


@compiles(_folded_contains, "sqlite")
def _sqlite_folded_contains(element: _folded_contains, compiler: Any, **kw: Any) -> str:
    text, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(instr({SQLITE_LOWER}({text}), {SQLITE_LOWER}({needle})) > 0)"


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


@compiles(json_text, "postgresql")
def _pg_text(element: json_text, compiler: Any, **kw: Any) -> str:
    (index,) = element.clauses
    return compiler.process(index.as_string(), **kw)  # props ->> 'key'


@compiles(_ascii_contains, "postgresql")
def _pg_ascii_contains(element: _ascii_contains, compiler: Any, **kw: Any) -> str:
    text, pattern = (compiler.process(c, **kw) for c in element.clauses)
    return f"(lower({text}) LIKE lower({pattern}) ESCAPE '{LIKE_ESCAPE}')"


@compiles(_folded_contains, "postgresql")
def _pg_folded_contains(element: _folded_contains, compiler: Any, **kw: Any) -> str:
    text, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(strpos(lower({text}), lower({needle})) > 0)"

"""A stored JSON value (an event property, a contact attribute) read as a number, a boolean
or text in SQL, the same way on SQLite and PostgreSQL, whatever a contact sent.

A condition such as `property: {cart_value: {gte: 20}}` compares the stored value with a
number. SQLAlchemy's `as_float()` is `CAST(props ->> 'cart_value' AS FLOAT)` on PostgreSQL: one
event whose `cart_value` is "abc", "1e400" or a list made that cast fail, and with it every
tick of the journey. On SQLite it is the bare JSON_EXTRACT, and SQLite orders any text above
every number: "abc" and "5" both passed `gte: 20`.

Here the value is a number when it is a JSON number, or text that reads as one
(nurture.number_text: "45.00", as shops send prices, in ASCII digits) of magnitude under 1e300,
0 under 1e-300 (on both databases: SQLite applied the bounds to text only); a boolean when it
is JSON true or false (or the text "true" / "false"); anything else is NULL — no number, so a
comparison with it is false (and `ne` counts it as different). SQLite reads the text through
`number_of_text`, a function each connection registers (store.db); PostgreSQL with the pattern
and a numeric cast, nested in CASE so that nothing is cast that does not match. A whole number
compares exactly with a whole bound, however long (a 19-digit id: PostgreSQL's value stays
numeric, SQLite's a 64-bit integer), anything else as a double. Costs, from
bench/bench_conditions.py: see docs/scale.md.

As text (`json_text`, for a comparison with text), a value is its text rendering: a string
itself, a number as it is written (10115, 19.9), a boolean `true` / `false`, a list or an object
its JSON text (so `contains` finds an element of a list), null none. PostgreSQL's `->>` renders
values so; SQLite's JSON_EXTRACT returned a number or a boolean as an integer, a real or 1 / 0,
which never equalled the text "10115" or "true": an imported ZIP code (`ingest._coerce` makes
the cell 10115 a number) matched `zip: "10115"` on PostgreSQL only. (Left as it is: JSONB
writes a list with spaces, `["a", "b"]`, SQLite without; and a number written with an
exponent, 1e+20, is its digits in JSONB attributes.)

A key is found on SQLite by the path `sqlite_path` builds: the key as the store wrote it.

`contains` (`text_contains`) finds its text anywhere in the value, ignoring case, and every
character means itself (`%` and `_` are no wildcards). Ignoring case is one rule on both
databases (`lower_text`): each letter's one-to-one Unicode lowercase — PostgreSQL's lower(), so
İ is i and the Kelvin sign k — and the Greek final ς as σ. The needle is folded here; the text
by PostgreSQL's lower() (ς as σ by translate() when the needle is beyond ASCII), and on SQLite
by LIKE (A–Z; İ and the Kelvin sign, the only other letters whose lowercase is ASCII, replaced
first) for an ASCII needle and `lower_text` (registered with each connection as
`SQLITE_LOWER`) for any other: SQLite's own lower() folds A–Z only, and str.lower() alone made
İ two characters and ΟΔΟΣ οδος.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (Boolean, Float, Numeric, String, TypeDecorator, case, cast, func, literal, literal_column,
                        type_coerce)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from nurture.number_text import INT64, LIMIT, NUMBER_PATTERN, number_of_text  # noqa: F401 (the rule's names, here too)

SQLITE_FUNCTION = "nurture_number"
SQLITE_LOWER = "nurture_lower"


def lower_text(value: Any) -> Any:
    """Text as `contains` compares it (the module docstring): each letter in its lowercase
    (Unicode's one-to-one mapping, PostgreSQL's lower(): İ is i), the final sigma ς as σ;
    SQLite's `nurture_lower(text)`. Anything else as it is."""
    if not isinstance(value, str):
        return value
    # str.lower() maps İ to two characters (i and a combining dot) and Σ at a word's end to ς
    return value.replace("\u0130", "i").lower().replace("\u03c2", "\u03c3")


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
    folded = lower_text(needle)
    if folded.isascii():
        escaped = folded.replace(LIKE_ESCAPE, 2 * LIKE_ESCAPE).replace("%", LIKE_ESCAPE + "%").replace(
            "_", LIKE_ESCAPE + "_")
        return _ascii_contains(text, literal(f"%{escaped}%", String()))
    return _folded_contains(text, literal(folded, String()))


class _ascii_contains(FunctionElement):
    """`text` LIKE `pattern` (escaped, an ASCII needle between two %), ignoring case."""
    name = "ascii_contains"
    type = Boolean()
    inherit_cache = True


class _folded_contains(FunctionElement):
    """`needle` (folded: lower_text) occurs in the folded `text`, for a needle beyond ASCII."""
    name = "folded_contains"
    type = Boolean()
    inherit_cache = True


def sqlite_path(key: Any) -> str:
    """SQLite's JSON path of a key, as the store writes keys: json.dumps escapes every character
    beyond ASCII, a quote and a backslash (`straße` is `stra\\u00dfe` in the stored text), and
    SQLite up to 3.44 compares a path's key with the key as it is written, escapes and all
    (later versions decode both). SQLAlchemy's `$."key"` never found such a key on SQLite.
    A key written with a quote can only be named unquoted, so one with a quote and a `.` or `[`
    cannot be named at all (README, conditions)."""
    if isinstance(key, int):
        return f"$[{key}]"
    written = json.dumps(str(key))[1:-1]
    return f'$."{written}"' if '"' not in written else f"$.{written}"


class _SqlitePath(TypeDecorator):
    """A JSON index's key as its SQLite path (sqlite_path), set when the statement runs."""
    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else sqlite_path(value)


def _sqlite_parts(element: FunctionElement, compiler: Any, **kw: Any) -> tuple[str, str, str]:
    """(the SQL of the value, of its JSON type, of its JSON text) — the bare JSON_EXTRACT (the
    index expression itself compiles to a JSON_QUOTE of it), with the key's path (sqlite_path)."""
    (index,) = element.clauses  # props["key"]: its JSON column and its key (a bound parameter)
    path = type_coerce(index.right, _SqlitePath())
    column = compiler.process(index.left, **kw)
    return (compiler.process(func.json_extract(index.left, path), **kw),
            compiler.process(func.json_type(index.left, path), **kw),
            f"({column} -> {compiler.process(path, **kw)})")


@compiles(json_number, "sqlite")
def _sqlite_number(element: json_number, compiler: Any, **kw: Any) -> str:
    value, kind, _ = _sqlite_parts(element, compiler, **kw)
    # PostgreSQL's bounds (_pg_number). (A JSON integer beyond 64 bits is a real to SQLite.)
    bounded = (f"(CASE WHEN {value} >= {LIMIT:g} OR {value} <= -{LIMIT:g} THEN NULL "
               f"WHEN {value} < {1 / LIMIT:g} AND {value} > -{1 / LIMIT:g} THEN 0.0 ELSE {value} END)")
    return (f"(CASE {kind} WHEN 'integer' THEN (CASE WHEN typeof({value}) = 'integer' THEN {value} ELSE {bounded} END) "
            f"WHEN 'real' THEN {bounded} WHEN 'text' THEN {SQLITE_FUNCTION}({value}) END)")


@compiles(json_boolean, "sqlite")
def _sqlite_boolean(element: json_boolean, compiler: Any, **kw: Any) -> str:
    value, kind, _ = _sqlite_parts(element, compiler, **kw)  # (the text "true" reads as true, as on PostgreSQL)
    return (f"(CASE {kind} WHEN 'true' THEN 1 WHEN 'false' THEN 0 "
            f"WHEN 'text' THEN (CASE {value} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END) END)")


@compiles(json_text, "sqlite")
def _sqlite_text(element: json_text, compiler: Any, **kw: Any) -> str:
    value, kind, written = _sqlite_parts(element, compiler, **kw)  # (`->`: a number's JSON text, as written)
    return (f"(CASE {kind} WHEN 'text' THEN {value} WHEN 'integer' THEN {written} WHEN 'real' THEN {written} "
            f"WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE {value} END)")


@compiles(_ascii_contains, "sqlite")
def _sqlite_ascii_contains(element: _ascii_contains, compiler: Any, **kw: Any) -> str:
    text, pattern = (compiler.process(c, **kw) for c in element.clauses)
    # SQLite's LIKE ignores the case of A–Z; the only other letters whose lowercase is ASCII are
    # İ (i) and the Kelvin sign (k), as PostgreSQL's lower() has them
    return f"(replace(replace({text}, '\u0130', 'i'), '\u212a', 'k') LIKE {pattern} ESCAPE '{LIKE_ESCAPE}')"


@compiles(_folded_contains, "sqlite")
def _sqlite_folded_contains(element: _folded_contains, compiler: Any, **kw: Any) -> str:
    text, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(instr({SQLITE_LOWER}({text}), {needle}) > 0)"


@compiles(json_number, "postgresql")
def _pg_number(element: json_number, compiler: Any, **kw: Any) -> str:
    (index,) = element.clauses
    text = index.as_string()  # props ->> 'key': a JSON number's text, or a string's
    number = cast(text, Numeric)
    size = func.abs(number)
    # numeric, not double precision: a whole number compares exactly with a whole bound (and a
    # double with a bound with a fraction, which PostgreSQL compares as double precision)
    readable = case((size >= literal_column(f"{LIMIT:g}"), None), (size < literal_column(f"{1 / LIMIT:g}"), 0),
                    else_=number)
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
    return f"(lower({text}) LIKE {pattern} ESCAPE '{LIKE_ESCAPE}')"


@compiles(_folded_contains, "postgresql")
def _pg_folded_contains(element: _folded_contains, compiler: Any, **kw: Any) -> str:
    text, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(strpos(translate(lower({text}), '\u03c2', '\u03c3'), {needle}) > 0)"

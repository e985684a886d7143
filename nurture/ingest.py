"""Bringing data in: contacts from CSV or JSONL (upsert, matched by external_id, then e-mail, then
phone: MATCH_ORDER), events from JSONL
(idempotent by event_id). A bad row is reported by line and field and the good rows are
kept; nothing is half-written. Each contact's first and last lead source (nurture.sources) is
kept in the same transaction as the events or contacts it comes from.

Hostile values are refused here, at the door, because whatever is stored is read back by SQL
on every tick: a NaN or Infinity in a JSON column makes SQLite's JSON functions fail
("malformed JSON") for every later query, a lone surrogate cannot be written as UTF-8 by
either backend, PostgreSQL refuses NUL in text and JSONB, absurd nesting hits the JSON
functions' depth limits, and a timestamp in year 9999 overflows the first time the engine
adds a duration to it. Names lose control characters (a CR/LF in a name must never reach
a message header).
"""
from __future__ import annotations

import codecs
import csv
import gc
import json
import math
import multiprocessing
import re
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional
from zoneinfo import ZoneInfo

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, column, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from nurture.consent_ledger import append_consents, standing_revocations
from nurture.event_schema import reserved_problem
from nurture.runtime.gc_pause import gc_paused
from nurture.identities import UNIQUE_VIOLATION, erased_contacts
from nurture.import_columns import CONSENT_AT, CONSENT_COLUMNS, CONSENT_SOURCE, CORE_FIELDS, near_miss
from nurture.lifecycle import STAGES
from nurture.privacy.tombstones import REFUSAL as ERASED_REFUSAL, erased_among, erased_phones
from nurture.runtime.sql import chunks, ids_in, insert_ignore, texts_in, write_many
from nurture.spec.errors import did_you_mean
from nurture.sources import Touch, TouchCandidate, extract_touch, record_event_touches, record_import_touches, \
    touch_of_columns
from nurture.store.db import Store
from nurture.store.event_order import writing_events
from nurture.store.tables import contact_t, event_t, identity_t


# The columns `import contacts` reads (core fields, consent_<channel>[_at|_source] for every
# channel of CONSENT_CHANNELS) are declared in nurture.import_columns, documented in docs/import.md.
MAX_SOURCE_LENGTH = 200
CONSENT_VALUES = ("granted", "revoked", "pending")
NAME_FIELDS = ("first_name", "last_name")
# `import contacts` matches a row to a contact by the first of these the row has and a contact holds
MATCH_ORDER = ("external_id", "email", "phone")
MAX_EXTERNAL_ID_LENGTH = 200
TEXT_FIELDS = ("external_id", "phone", "timezone", "country", "locale", "lifecycle_stage")

# JSON nested deeper than this in properties/attributes is refused: no condition reads that
# deep, and the backends' JSON functions have depth limits of their own.
MAX_DEPTH = 32
# Longer "names" are pasted text, not names; they would also bloat every To: header.
MAX_NAME_LENGTH = 200
# Event and consent times are kept within these years: the engine adds durations to them
# (windows, goals, retention), and year 9999 + 3 days overflows in the middle of a tick.
MIN_YEAR, MAX_YEAR = 1900, 2999

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # any other file is read as CSV
SAVE_AS_UTF8 = "save the file as UTF-8 (in Excel: 'CSV UTF-8')"
USE_ENCODING_OPTION = ("save the file as UTF-8, or name its encoding with --encoding "
                       "(an Excel export from Windows is usually --encoding cp1252)")


@dataclass
class RowError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    consents: int = 0
    skipped_duplicates: int = 0
    erased: int = 0  # rows of erased people: refused, reported among `errors`
    dropped_columns: set[str] = field(default_factory=set)  # attributes policies.yaml `keep_attributes` does not keep
    touches: int = 0  # rows whose utm_* / click id columns set the contact's lead source
    skipped_consents: int = 0  # 'granted' cells without a time, not written over a revocation (warned)
    errors: list[RowError] = field(default_factory=list)
    # The contact was kept, something of it was not: a field left out (a bad optional value), a
    # column that looks like a misspelled known one (once per file). In line order.
    warnings: list[RowError] = field(default_factory=list)


@dataclass
class ColumnWarning(RowError):
    """A column stored as an attribute whose name is close to a known column's."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class TrackResult:
    inserted: int = 0
    duplicates: int = 0
    erased: int = 0  # events of erased people: refused, reported among `errors`
    errors: list[RowError] = field(default_factory=list)
    inserted_ids: list[str] = field(default_factory=list)  # event_ids stored by this call
    touches: int = 0  # stored events that carried a lead source (UTM parameters or a click id)
    unknown: int = 0  # events of addresses no contact has, not stored (track_in without create_contacts)


# ---------------------------------------------------------------- values


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: short, because a hostile value can be a megabyte long."""
    text = value if isinstance(value, str) else _json_text(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _json_text(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _in_years(moment: datetime) -> bool:
    return MIN_YEAR <= moment.year <= MAX_YEAR


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 string or seconds since 1970 as an aware UTC datetime. Every bad value is a
    ValueError (never an OverflowError or OSError), so callers can name the field and keep the
    other rows; years outside MIN_YEAR–MAX_YEAR are refused (see MIN_YEAR)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an ISO 8601 timestamp, e.g. 2026-11-21T10:00:00Z, not {_json_text(value)}")
    parsed = _from_epoch(value) if isinstance(value, (int, float)) else _from_iso(value)
    if not _in_years(parsed):
        raise ValueError(f"'{_show(value)}' is outside the years {MIN_YEAR}–{MAX_YEAR}")
    return parsed


def _from_epoch(value: float) -> datetime:
    """Seconds since 1970; out of range is a ValueError with a hint when it looks like milliseconds."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_json_text(value)} is not a time (expected seconds since 1970 or ISO 8601)")
    parsed = _epoch_or_none(value)
    if parsed is None or not _in_years(parsed):
        in_ms = _epoch_or_none(value / 1000) if abs(value) < sys.float_info.max else None
        hint = " (milliseconds? send seconds)" if in_ms is not None and _in_years(in_ms) else ""
        raise ValueError(f"{_show(value)} seconds since 1970 is outside the years {MIN_YEAR}–{MAX_YEAR}{hint}")
    return parsed


def _epoch_or_none(value: float) -> Optional[datetime]:
    try:
        return datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(value: Any) -> datetime:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected an ISO 8601 timestamp, e.g. 2026-11-21T10:00:00Z")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{_show(value)}' is not an ISO 8601 timestamp") from None
    try:  # 9999-12-31T23:59:59-01:00 parses, but is past year 9999 in UTC
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"'{_show(value)}' is outside the years {MIN_YEAR}–{MAX_YEAR}") from None


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_NAME_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACE_RUNS = re.compile(" {2,}")


def text_problem(text: str) -> Optional[str]:
    """Why a string cannot be stored, or None: PostgreSQL refuses NUL in text and JSONB, and a
    lone surrogate (half of a broken \\ud83d\\ude00 escape) cannot be written as UTF-8."""
    if text.isprintable():  # (NUL and surrogates are not: the common cell ends here)
        return None
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000)"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not a character"


def clean_name(value: Any) -> Optional[str]:
    """A person's name made safe to store and to put into a header: CR, LF, TAB and every other
    control character (Unicode Cc) and the line/paragraph separators U+2028/U+2029 become a
    space, runs of spaces collapse, the ends are stripped and the length is capped at
    MAX_NAME_LENGTH. None (or nothing left) is None."""
    if value is None:
        return None
    text = str(value)
    if not (text.isprintable() and "  " not in text):  # (every character _NAME_BREAKS finds is unprintable)
        text = _SPACE_RUNS.sub(" ", _NAME_BREAKS.sub(" ", text))
    return text.strip()[:MAX_NAME_LENGTH].rstrip() or None


def value_problem(value: Any, path: tuple = (), depth: int = 0) -> Optional[tuple[str, str]]:
    """The first part of a JSON value the store cannot keep, as (field path, message), or None.
    `depth` is how many objects/arrays already enclose `value`. Iterative, so a hostile value
    cannot exhaust the stack."""
    stack = [(value, path, depth)]
    while stack:
        item, where, level = stack.pop()
        problem = _scalar_problem(item)
        if problem:
            return _field_path(where), problem
        if isinstance(item, (dict, list)):
            if level + 1 > MAX_DEPTH:
                return _field_path(where), f"nested deeper than {MAX_DEPTH} levels"
            children = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
            for key, child in reversed(children):
                if isinstance(key, str) and text_problem(key):
                    return _field_path(where + (key,)), f"the key {text_problem(key)}"
                stack.append((child, where + (key,), level + 1))
    return None


def _scalar_problem(item: Any) -> Optional[str]:
    if isinstance(item, float) and not math.isfinite(item):
        return (f"{_json_text(item)} is not a finite number (JSON has no NaN or Infinity, and a number "
                "like 1e999 overflows to Infinity); send null or leave the field out")
    if isinstance(item, int) and not isinstance(item, bool) and abs(item) > sys.float_info.max:
        return "number too large (it overflows to Infinity)"
    if isinstance(item, str):
        return text_problem(item)
    return None


def _field_path(parts: tuple) -> str:
    """properties.items[2].sku; a very deep path keeps its head and tail."""
    names = [f"[{p}]" if isinstance(p, int) else ("." if i else "") + str(p) for i, p in enumerate(parts)]
    if len(names) > 8:
        names = names[:4] + [".…"] + names[-2:]
    return "".join(names) or "value"


# The plain addresses almost every list consists of, which email-validator accepts unchanged
# (but lowercased): checking them with one regular expression instead of the full validator is
# 5x faster on a large import. Conservative on purpose — no quoting, no IDNA (`xn--`, or any
# `--`), a letters-only top-level domain that is not a special-use name, RFC 5321 lengths —
# everything else goes through email-validator. tests/test_ingest_files.py checks both agree.
_PLAIN_EMAIL = re.compile(r"(?=.{1,254}$)(?=[^@]{1,64}@)[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*"
                          r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{1,63})")
_SPECIAL_USE = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def normalize_email(value: str) -> str:
    text = value.strip().lower()
    plain = _PLAIN_EMAIL.fullmatch(text)
    if plain is not None and "--" not in text.partition("@")[2] and plain.group(1) not in _SPECIAL_USE:
        return text
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def normalize_phone(value: str, country: Optional[str]) -> str:
    try:
        number = phonenumbers.parse(value, (country or "").upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"'{value}' is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"'{value}' is not a valid phone number" + ("" if country else " (add a country or a +prefix)"))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


Problem = tuple[str, str]  # (field, message); field "line" when the whole line is unreadable
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes the codec could not decode (surrogateescape)


def check_encoding(name: Optional[str]) -> Optional[str]:
    """The codec to read files with (None: UTF-8, BOM accepted); ValueError for a name Python
    does not know or for a codec that does not decode bytes to text (base64, rot13, …)."""
    if name is None:
        return None
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown encoding '{name}' (e.g. utf-8, cp1252, latin-1, utf-16)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"'{name}' is not a text encoding")
    return "utf-8-sig" if info.name == "utf-8" else info.name


def _records(path: Path, encoding: Optional[str] = None,
             hint: str = SAVE_AS_UTF8) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
    """(line number, record or None, parse error) for CSV or JSONL — the shape the product
    catalog reads; a problem with a field of its own names the field in the message."""
    for line, record, problem in read_records(path, encoding, hint):
        if problem is None:
            yield line, record, None
        else:
            yield line, None, problem[1] if problem[0] == "line" else f"{problem[0]}: {problem[1]}"


def read_records(path: Path, encoding: Optional[str] = None,
                 hint: str = USE_ENCODING_OPTION) -> Iterator[tuple[int, Optional[dict], Optional[Problem]]]:
    """(line number, record or None, (field, problem)) for CSV or JSONL. The file is decoded
    with `encoding` (default UTF-8, BOM accepted) without failing on bad bytes: a line holding
    bytes the codec cannot decode is one bad line, named, and the other lines are kept.
    A UTF-8 file is read a block at a time (a million-row file never sits in memory whole);
    another codec reads the whole file first, so that a file it cannot decode at all is one
    error and no records."""
    with path.open("rb") as f:
        binary = _binary_kind(f.read(4))
    if binary:
        yield 1, None, ("line", f"this is {binary}, not CSV or JSONL: {SAVE_AS_UTF8}")
        return
    label = "UTF-8" if encoding is None else encoding
    if encoding is not None:
        hint = f"is the file really {encoding}? Name its encoding with --encoding"
    codec = check_encoding(encoding) or "utf-8-sig"
    if codec == "utf-8-sig":  # with surrogateescape, UTF-8 decoding never fails
        lines: Iterator[str] = _utf8_lines(path)
    else:
        data = path.read_bytes()
        try:
            text = data.decode(codec, "surrogateescape")
        except UnicodeDecodeError as exc:  # e.g. an odd trailing byte in UTF-16
            yield data[:exc.start].count(b"\n") + 1, None, ("line", f"not valid {label} ({exc.reason}): {hint}")
            return
        del data
        lines = _split_lines(text.replace("\r\n", "\n").replace("\r", "\n"))
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    yield from (_jsonl_records(lines, label, hint) if is_jsonl else _csv_records(lines, label, hint))


_READ_BLOCK = 1 << 20  # bytes a UTF-8 file is read by


def _utf8_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file (BOM accepted, bad bytes kept as surrogate escapes, CR LF and
    CR read as LF), each with its "\n" but the last: what decoding the whole file and splitting
    it on "\n" gives (`_split_lines`), a block at a time."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("surrogateescape")
    line: list[str] = []  # the line being read, in pieces (a line can be longer than a block)
    held = ""
    with path.open("rb") as f:
        while True:
            block = f.read(_READ_BLOCK)
            text = held + decoder.decode(block, final=not block)
            held = ""
            if block and text.endswith("\r"):  # perhaps the first half of a CR LF: wait for the next block
                text, held = text[:-1], "\r"
            pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if len(pieces) > 1:
                yield "".join(line) + pieces[0] + "\n"
                for piece in pieces[1:-1]:
                    yield piece + "\n"
                line = []
            line.append(pieces[-1])
            if not block:
                break
    if "".join(line):
        yield "".join(line)


def _split_lines(text: str) -> Iterator[str]:
    """The lines of `text` split on "\n" only, each with its "\n" but the last."""
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            if start < len(text):
                yield text[start:]
            return
        yield text[start:end + 1]
        start = end + 1


def _binary_kind(data: bytes) -> Optional[str]:
    """Spreadsheets handed over instead of their CSV export: say so instead of listing garbage."""
    if data.startswith(b"PK\x03\x04"):
        return "an Excel workbook (.xlsx) or another ZIP file"
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        return "an old Excel workbook (.xls)"
    return None


def _undecodable(text: str, label: str, hint: str) -> Optional[str]:
    found = _UNDECODABLE.search(text)
    if found is None:
        return None
    return f"not valid {label} (byte 0x{ord(found.group()) - 0xdc00:02x} at character {found.start() + 1}): {hint}"


def _jsonl_records(lines: Iterable[str], label: str,
                   hint: str) -> Iterator[tuple[int, Optional[dict], Optional[Problem]]]:
    # Lines split on \n only: str.splitlines() also splits on U+2028, U+0085 … which JSON allows raw in strings.
    for number, line in enumerate(lines, 1):
        if line.endswith("\n"):
            line = line[:-1]
        if not line.strip():
            continue
        problem = _undecodable(line, label, hint)
        if problem:
            yield number, None, ("line", problem)
            continue
        record, problem = _parse_json_line(line)
        yield number, record, None if problem is None else ("line", problem)


def _parse_json_line(line: str) -> tuple[Optional[dict], Optional[str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, f"nested far deeper than {MAX_DEPTH} levels"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, f"not valid JSON ({_show(str(exc), 120)})"
    if not isinstance(record, dict):
        return None, "each line must be a JSON object"
    return record, None


def _csv_records(lines: Iterable[str], label: str,
                 hint: str) -> Iterator[tuple[int, Optional[dict], Optional[Problem]]]:
    """csv.DictReader's records, made here for speed (a million-row file), each with the line
    it starts on: the first row is the header, blank rows are skipped, a short row's missing
    cells are None, the keys stripped. Nothing is lost without a word: a header naming a column
    twice, a row with more cells than the header (other than empty ones, Excel's trailing
    commas) and broken quoting (`"a"b`, a quote never closed, which took every later row into
    one cell) are errors naming their line."""
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        yield 1, None, ("line", f"not valid CSV ({exc})")
        return
    problem = _undecodable(",".join(header), label, hint)
    if problem:  # every row's keys would be garbled: nothing can be read
        yield 1, None, ("header", problem)
        return
    keys = [k.strip() for k in header]
    twice = next((k for i, k in enumerate(keys) if k and k in keys[:i]), None)
    if twice is not None:  # which of the two cells is the contact's? Neither can be guessed
        columns = [str(i + 1) for i, k in enumerate(keys) if k == twice]
        yield 1, None, ("header", f"the column '{_show(twice)}' appears more than once "
                                  f"(columns {', '.join(columns)}): rename or remove one")
        return
    width = len(keys)
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over csv.field_size_limit(), broken quoting: one bad record
            if "unexpected end of data" in str(exc):
                yield first, None, ("line", "a quoted cell is never closed: nothing from this line to the end "
                                            "of the file could be read")
                return
            yield first, None, ("line", f"not valid CSV ({exc})")
            continue
        if not row:
            continue
        if len(row) < width:
            row = row + [None] * (width - len(row))
        elif len(row) > width and any(cell.strip() for cell in row[width:]):
            yield first, None, ("line", f"{len(row)} cells, but the header names {width} columns")
            continue
        clean = dict(zip(keys, row))
        # one search over the row; the cell named only when there is something to name
        bad = (_undecodable_cell(clean, label, hint)
               if _UNDECODABLE.search("\x1f".join(v for v in row[:width] if v)) else None)
        yield first, None if bad else clean, bad


def _undecodable_cell(record: dict, label: str, hint: str) -> Optional[Problem]:
    """The first cell holding bytes the codec could not decode, named by its column."""
    for key, value in record.items():
        problem = _undecodable(value, label, hint) if isinstance(value, str) else None
        if problem:
            return key, problem
    return None


class ImportedConsent(NamedTuple):
    status: str
    at: Optional[datetime] = None  # when it was given, per the file (None: at the import)
    source: Optional[str] = None  # where it was given, per the file


def _clean_contact(record: dict) -> tuple[dict, dict[str, ImportedConsent], list[tuple[str, str]],
                                          list[tuple[str, str]]]:
    """(contact fields, consent per channel, [(field, error)], [(field, problem)]): an error
    skips the row; a problem names an optional field that was left out (`_triage_core`) —
    a warning when the row is imported."""
    errors: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    consents: dict[str, ImportedConsent] = {}
    proof: dict[str, dict[str, Any]] = {}
    attributes: dict[str, Any] = {}
    for key, raw in record.items():
        value = raw.strip() if isinstance(raw, str) else raw
        if value in ("", None):
            continue
        if key in _CORE_FIELDS:  # the common cells first: a million-row import checks ten million
            fields[key] = value
        elif key in CONSENT_COLUMNS:
            given = _CONSENT_GIVEN.get(str(value).lower())
            if given is None:
                errors.append((key, f"'{_show(value)}' is not one of {', '.join(CONSENT_VALUES)}"))
            else:
                consents[CONSENT_COLUMNS[key]] = given
        elif key in CONSENT_AT:
            try:
                proof.setdefault(CONSENT_AT[key], {})["at"] = parse_timestamp(value)
            except ValueError as exc:
                errors.append((key, str(exc)))
        elif key in CONSENT_SOURCE:
            problem = text_problem(value) if isinstance(value, str) else f"must be text, not {_show(value)}"
            if problem:
                errors.append((key, problem))
            else:
                proof.setdefault(CONSENT_SOURCE[key], {})["source"] = " ".join(value.split())[:MAX_SOURCE_LENGTH]
        elif key == "attributes" and isinstance(value, dict):
            problem = value_problem(value, ("attributes",))
            if problem:
                errors.append(problem)
            # a null changes nothing here either, as a top-level null or an empty cell does
            attributes.update((k, v) for k, v in value.items() if v is not None)
        else:
            value, problem = _attribute(key, value)
            if problem:
                errors.append(problem)
            attributes[key] = value
    for channel, given in proof.items():
        if channel not in consents:
            column = next(k for k, c in CONSENT_COLUMNS.items() if c == channel)
            errors.append((f"{column}_{next(iter(given))}", f"needs a {column} column value (granted, revoked, pending)"))
        else:
            consents[channel] = consents[channel]._replace(**given)
    core_errors, warnings = _triage_core(fields)
    fields["attributes"] = attributes
    if core_errors or errors:  # the row is skipped: all that is wrong with it is listed, for the fix
        return fields, consents, core_errors + errors + warnings, []
    return fields, consents, [], warnings


_CORE_FIELDS = frozenset(CORE_FIELDS)
_CONSENT_GIVEN = {status: ImportedConsent(status) for status in CONSENT_VALUES}  # a consent without time or source


# What the warning about a left-out field adds to the field's own problem.
LEFT_OUT = "left out, the contact is imported without it"
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
_STAGE_OR_NONE = frozenset((*STAGES, None))


def _triage_core(fields: dict[str, Any], *, named: bool = False) -> tuple[list[tuple[str, str]],
                                                                          list[tuple[str, str]]]:
    """The core fields of an import row checked and normalized in place: (errors, warnings).

    A value the store must refuse — the wrong kind (an object for a name), text it cannot keep
    (NUL, a lone surrogate), a non-finite score — is an error of the row, as every hostile value
    is. A well-formed value that is merely not valid (a phone number that is no number, an
    unknown time zone, country, locale or lifecycle stage, a score that is no number) is left
    out with a warning and the person is kept — unless it was the row's only identifier: a row
    that names nobody is an error, its bad identifiers named. `named`: the person is named
    outside `fields` (a Segment message's userId / anonymousId), so none of them is needed."""
    problems = _core_problems(fields)
    if "locale" in fields and not _LOCALE.match(fields["locale"]):
        problems.append(("locale", f"'{_show(fields['locale'])}' is not a locale (a language code: de, de-DE, pt_BR)",
                         False))
        del fields["locale"]
    if fields.get("lifecycle_stage") not in _STAGE_OR_NONE:
        problem = _stage_problem(fields)
        if problem:
            problems.append(("lifecycle_stage", problem, False))
            del fields["lifecycle_stage"]
    identified = named or fields.get("external_id") or fields.get("email") or fields.get("phone")  # MATCH_ORDER
    if not problems and identified:  # the common row: nothing to sort out
        return [], []
    errors = [(f, m) for f, m, refused in problems if refused]
    if not identified:
        named = [(f, m) for f, m, refused in problems if f in MATCH_ORDER and not refused]
        errors = (named or [("email", "required (contacts are matched by e-mail)")]) + errors
        problems = [p for p in problems if p[0] not in MATCH_ORDER]
    return errors, [(f, m) for f, m, refused in problems if not refused]


def _stage_problem(fields: dict[str, Any]) -> Optional[str]:
    """None for one of STAGES (in any case, stored lowercase), else what is wrong."""
    stage = fields["lifecycle_stage"].lower()
    if stage in STAGES:
        fields["lifecycle_stage"] = stage
        return None
    hint = did_you_mean(stage, STAGES)
    return (f"'{_show(fields['lifecycle_stage'])}' is not a lifecycle stage ({', '.join(STAGES)})"
            + (f"; {hint}" if hint else ""))


def _attribute(key: str, value: Any) -> tuple[Any, Optional[tuple[str, str]]]:
    """A column that is not a core field, typed for conditions, and what is wrong with it.
    An attribute lives inside `attributes`, one level down: its own nesting starts at 1."""
    if text_problem(key):
        return value, (_json_text(key), f"the column name {text_problem(key)}")
    typed = _coerce(value)
    if isinstance(value, str) and isinstance(typed, float) and not math.isfinite(typed):
        return value, (key, f"'{_show(value)}' is too large a number (it overflows to Infinity)")
    if isinstance(typed, (dict, list)):
        return typed, value_problem(typed, (key,), 1)
    problem = _scalar_problem(typed)  # a cell's text or number: value_problem's answer, without its walk
    return typed, (_field_path((key,)), problem) if problem else None


def _core_problems(fields: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Normalize the core fields in place: [(field, problem, refused)], each bad field removed
    from `fields`. `refused`: a value of the wrong kind or one the store cannot keep; else a
    well-formed value that is not valid (`_triage_core` tells them apart)."""
    problems: list[tuple[str, str, bool]] = []

    def bad(key: str, message: str, refused: bool = False) -> None:
        problems.append((key, message, refused))
        del fields[key]

    if "email" in fields:
        try:
            fields["email"] = normalize_email(str(fields["email"]))
        except ValueError as exc:
            bad("email", str(exc), isinstance(fields["email"], (dict, list, bool)))
    for key in NAME_FIELDS + TEXT_FIELDS:
        if key in fields:
            problem = _text_field(fields, key)
            if problem:
                problems.append((key, problem, True))
                fields.pop(key, None)
    if "external_id" in fields:
        fields["external_id"] = fields["external_id"].strip()
        if len(fields["external_id"]) > MAX_EXTERNAL_ID_LENGTH:
            bad("external_id", f"longer than {MAX_EXTERNAL_ID_LENGTH} characters")
        elif not fields["external_id"]:
            del fields["external_id"]
    if "country" in fields:
        fields["country"] = fields["country"].upper()
        if len(fields["country"]) != 2:
            bad("country", f"'{_show(fields['country'])}' is not a two-letter ISO country code")
    if "phone" in fields:
        try:
            fields["phone"] = normalize_phone(fields["phone"], fields.get("country"))
        except ValueError as exc:
            bad("phone", str(exc))
    if "timezone" in fields:
        try:
            ZoneInfo(fields["timezone"])
        except Exception:
            bad("timezone", f"'{_show(fields['timezone'])}' is not an IANA time zone (e.g. Europe/Berlin)")
    if "score" in fields:
        try:
            fields["score"] = _score(fields["score"])
        except ValueError as exc:
            # NaN and Infinity are refused as every non-finite number is; a word is just no score
            bad("score", str(exc), _non_finite_or_not_a_value(fields["score"]))
    return problems


def _non_finite_or_not_a_value(value: Any) -> bool:
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)


def _text_field(fields: dict[str, Any], key: str) -> Optional[str]:
    """Make fields[key] storable text (names cleaned by clean_name); the problem, or None."""
    value = fields[key]
    if isinstance(value, (dict, list, bool)):
        return f"must be text, not {_show(value)}"
    text = clean_name(value) if key in NAME_FIELDS else str(value)
    if text is None:  # a name of nothing but control characters: as if the cell were empty
        del fields[key]
        return None
    fields[key] = text
    return text_problem(text)


def _score(value: Any) -> float:
    """A finite number: NaN or Infinity would sort and compare wrongly in every condition."""
    try:
        score = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        score = math.nan
    if not math.isfinite(score):
        raise ValueError(f"'{_show(value)}' is not a (finite) number")
    return score


def _coerce(value: Any) -> Any:
    """CSV cells are text; numbers and booleans become numbers and booleans for conditions."""
    if not isinstance(value, str):
        return value
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    digits = value.lstrip("-")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        return value  # 01234 is an identifier (ZIP code, customer number), not the number 1234
    try:
        number = int(value) if value.lstrip("-").isdigit() else float(value) if _is_float(value) else value
    except ValueError:
        return value
    if number == 0 and isinstance(number, float) and any(c in "123456789" for c in value.lower().split("e")[0]):
        return value  # 1e-400 underflows to 0: kept as the text it is, not changed into another number
    return number


def _is_float(value: str) -> bool:
    try:
        float(value)
        return "." in value or "e" in value.lower()
    except ValueError:
        return False


def refuse_erased(conn: Any, entries: list[tuple[str, int]], source: str,
                  result: "ImportResult | TrackResult") -> set[str]:
    """The privacy hook of every ingest: the addresses among `entries` ((e-mail, line)) that
    belong to an erased person (nurture.privacy.tombstones). Each such entry is an error of its
    line, field `email`, and counted in `result.erased`; the caller stores none of them."""
    refused = erased_among(conn, {email for email, _ in entries})
    for email, line in entries:
        if email in refused:
            result.errors.append(RowError(source, line, "email", ERASED_REFUSAL))
            result.erased += 1
    return refused


# Rows per transaction of `import contacts`, events per transaction of `track FILE`: a file
# streams through in slices this big, so a process's memory stays flat however long the file
# is (docs/import.md, "A large file"). Large enough that a slice's SQL is set-based.
IMPORT_CHUNK = 20_000
TRACK_CHUNK = 20_000
# A contact file larger than this is read and checked in a process of its own while this one
# writes the slice before (`_slices_read_aside`): on two cores that overlaps the per-row Python
# of reading and checking (~30–45 µs a row) with the writing (more). Not from a process that
# runs threads: a fork copies their locks in whatever state they are.
READ_ASIDE_BYTES = 4 << 20
# How often a slice is written when each try loses a race for an identifier (`import_contacts`).
RACE_ATTEMPTS = 3

Key = tuple[str, str]  # (kind, value): an import row's first identifier in MATCH_ORDER


@dataclass
class _ImportRow:
    """One contact of the slice being read: its rows of the file merged (later values win)."""
    fields: dict
    consents: dict[str, ImportedConsent]
    touch: Optional[Touch]  # utm_* / click id columns: the contact's lead source (nurture.sources)
    line: int  # the latest line of the contact
    seen: bool  # an earlier slice of this file has a row of the contact (written, and counted, there)


class _FileKeys:
    """What an import keeps of the rows of earlier slices: the latest line of each row key and
    which key claimed each e-mail, for the file-wide check that one e-mail is not on two rows
    with different keys. Flat dicts of strings and ints — ~150 bytes a contact, ~150 MB at a
    million rows — instead of the rows themselves."""

    def __init__(self) -> None:
        self.lines: dict[str, dict[str, int]] = {kind: {} for kind in MATCH_ORDER}
        self.email_of: dict[str, str] = {}  # e-mail -> the external_id of the key that claimed it

    def line(self, key: Key) -> Optional[int]:
        return self.lines[key[0]].get(key[1])

    def claimant(self, email: str) -> Optional[Key]:
        """The key of the earlier row that holds `email`, if any. (An external_id needs no such
        check: a row that has one is keyed by it.)"""
        external_id = self.email_of.get(email)
        if external_id is not None:
            return "external_id", external_id
        return ("email", email) if email in self.lines["email"] else None

    def claim(self, key: Key, email: Optional[str], line: int) -> None:
        self.lines[key[0]][key[1]] = line
        if email and key[0] == "external_id" and email not in self.email_of:
            self.email_of[email] = key[1]


def import_contacts(store: Store, path: Path, *, now: Optional[datetime] = None, policy_version: str = "",
                    encoding: Optional[str] = None, keep_attributes: Optional[list[str]] = None,
                    consent_at: Optional[datetime] = None) -> ImportResult:
    """Upsert the file's contacts (the columns: nurture.import_columns, docs/import.md). A row
    is matched to a contact by the first of MATCH_ORDER it has a value for that a contact
    holds — `external_id`, then `email`, then `phone` — and a row may lack an e-mail when it has
    an external_id or a phone (docs/ingest-segment.md). A bad optional field is left out with a
    warning and the contact kept (`_triage_core`); a column whose name is close to a known
    one is a warning once per file (it is still stored as the attribute it names).
    `encoding`: the file's codec (default UTF-8, BOM accepted). `keep_attributes`
    (policies.yaml, data minimization): the attributes kept; other columns are dropped and
    named in `result.dropped_columns`. `consent_at`: when the file's consents were given, for
    rows without a `consent_<channel>_at` of their own (default: `now`); not after `now`.

    The file is read and written in slices of IMPORT_CHUNK contacts, each in a transaction of
    its own: what a failure midway leaves is the slices written before it, and a rerun of the
    file upserts the same contacts again (docs/import.md, "A large file"). The same contact
    twice — in one slice or in two — ends as one row with the later values would: later
    values win, an empty cell changes nothing, attributes merge."""
    now = now or datetime.now(timezone.utc)
    if consent_at is not None and consent_at > now:
        raise ValueError(f"consent_at {consent_at.isoformat()} lies in the future: a consent is given before it is "
                         "imported")
    read = ImportResult()  # what reading the file found: errors, warnings, dropped columns
    slices = _contact_slices(path, encoding, now, keep_attributes, read)
    if path.stat().st_size > READ_ASIDE_BYTES and threading.active_count() == 1:  # (forking threads is unsafe)
        slices = _slices_read_aside(slices, read)
    result = ImportResult()  # what writing found: the rows the database refuses
    refused_keys: set[Key] = set()

    def write(batch: dict[Key, _ImportRow], earlier: Optional[Future]) -> tuple[ImportResult, set[Key]]:
        """One slice into a result and refused keys of its own, merged in file order (_SlicesInOrder)."""
        def once() -> tuple[ImportResult, set[Key]]:
            written, refused = ImportResult(), set(refused_keys)
            with gc_paused():  # a slice allocates ~10 containers a row, all freed by reference counting
                _write_contacts(store, batch, refused, file=path.name, now=now, consent_at=consent_at,
                                policy_version=policy_version, result=written, earlier=earlier)
            return written, refused

        try:
            written, refused = _despite_lost_races(once)
        except _Rematched as again:  # written as two slices, the second from that row on
            written, refused = ImportResult(), set(refused_keys)  # (what the rolled-back try found: gone)
            keys = list(batch)
            cut = keys.index(again.key)
            first = write({k: batch[k] for k in keys[:cut]}, earlier)
            rest = write({k: batch[k] for k in keys[cut:]}, None)
            for part, part_refused in (first, rest):
                _add_imported(written, part)
                refused |= part_refused
        return written, refused

    def merge(written: ImportResult, refused: set[Key]) -> None:
        _add_imported(result, written)
        refused_keys.update(refused)

    try:
        _SlicesInOrder(store.dialect == "postgresql", write, merge).run(slices)
    finally:
        slices.close()  # a failed write stops the reading process at once
    result.errors = read.errors + result.errors  # the file's own problems first, as they were found
    result.warnings, result.dropped_columns = read.warnings + result.warnings, read.dropped_columns
    for warning in result.warnings:
        if isinstance(warning, ColumnWarning) and warning.field in result.dropped_columns:
            warning.message = warning.message.replace("is stored as an attribute",
                                                      "is not kept (policies.yaml keep_attributes)")
    result.warnings.sort(key=lambda w: w.line)
    return result


def _despite_lost_races(write: Any) -> Any:
    """`write()` of one slice, again when it lost a race: on PostgreSQL another writer (`nurture
    web`, a second import) may take an e-mail or external id of the slice after the slice read
    who holds them, and the slice's insert or update then fails with a unique violation — rolled
    back and written again, it matches that contact. (SQLite's writers take turns: never.)"""
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            return write()
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION or attempt == RACE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _contact_slices(path: Path, encoding: Optional[str], now: datetime, keep_attributes: Optional[list[str]],
                    read: ImportResult) -> Iterator[dict[Key, _ImportRow]]:
    """The file's good rows checked and merged per contact, IMPORT_CHUNK contacts at a time;
    the problems of the rows (errors, warnings, dropped columns) go to `read`."""
    columns_seen: set[str] = set()
    header_line = None if path.suffix.lower() in JSONL_SUFFIXES else 1  # column warnings: CSV at its header
    keys = _FileKeys()
    batch: dict[Key, _ImportRow] = {}
    batch_start = 0  # the first line of the slice being read
    for line, record, problem in read_records(path, encoding):
        if problem:
            read.errors.append(RowError(path.name, line, *problem))
            continue
        if not columns_seen.issuperset(record):  # a CSV: once, at its first row; JSONL: at each new key
            _warn_near_misses(record, columns_seen, path.name, header_line or line, read)
        fields, consents, errors, warnings = _clean_contact(record)
        errors += [(f"consent_{channel}_at", f"lies in the future ({c.at.isoformat()}): a consent is given before "
                                             "it is imported") for channel, c in consents.items()
                   if c.at is not None and c.at > now]
        key = None if errors else next((k, fields[k]) for k in MATCH_ORDER if fields.get(k))
        email = fields.get("email")
        if key is not None and email:  # unique: two rows naming one e-mail with different keys conflict
            other = keys.claimant(email)
            if other not in (None, key):
                errors.append(("email", f"'{_show(email)}' is also on line {keys.line(other)} with another "
                                        f"{other[0]} ('{_show(other[1])}')"))
        if errors:
            read.errors.extend(RowError(path.name, line, f, m) for f, m in errors + warnings)
            continue
        if warnings:
            read.warnings.extend(RowError(path.name, line, f, f"{m} — {LEFT_OUT}") for f, m in warnings)
        if not batch:
            batch_start = line
        previous_line = keys.line(key)
        keys.claim(key, email, line)
        if keep_attributes is not None:
            dropped = set(fields["attributes"]) - set(keep_attributes)
            read.dropped_columns |= dropped
            fields["attributes"] = {k: v for k, v in fields["attributes"].items() if k not in dropped}
        touch = touch_of_columns(record)
        previous = batch.get(key)
        if previous is None:
            batch[key] = _ImportRow(fields, consents, touch, line,
                                    seen=previous_line is not None and previous_line < batch_start)
        else:  # the same contact twice: later values win, attributes merge, the later row's touch wins —
            # and an empty cell changes nothing, as it would if the rows came in two slices (or files)
            fields = {**previous.fields, **fields,
                      "attributes": {**previous.fields["attributes"], **fields["attributes"]}}
            previous.fields, previous.consents = fields, {**previous.consents, **consents}
            previous.touch, previous.line = touch if touch is not None else previous.touch, line
        if len(batch) >= IMPORT_CHUNK:
            yield batch
            batch = {}
    if batch:
        yield batch


def _slices_read_aside(slices: Iterator[dict[Key, _ImportRow]], read: ImportResult) -> Iterator[dict[Key, _ImportRow]]:
    """`slices` produced in a forked process, one slice ahead of the caller (the pipe holds
    one); `read` receives what that process found when it is done. The child touches no
    database connection and leaves by os._exit (multiprocessing's), closing none."""
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    reader = context.Process(target=_send_slices, args=(slices, read, sending), daemon=True)
    reader.start()
    sending.close()
    try:
        while True:
            with gc_paused():  # unpickling a slice: 20,000 rows of dicts (4× faster without collections)
                kind, payload = receiving.recv()
            if kind == "slice":
                yield payload
            elif kind == "error":
                raise payload
            else:
                read.errors, read.warnings, read.dropped_columns = payload
                return
    finally:
        receiving.close()
        if reader.is_alive():
            reader.kill()
        reader.join()


def _send_slices(slices: Iterator[dict[Key, _ImportRow]], read: ImportResult, sending: Any) -> None:
    gc.disable()  # this short-lived process builds the slices' rows; nothing it makes is cyclic garbage
    try:
        for batch in slices:
            sending.send(("slice", batch))
        sending.send(("done", (read.errors, read.warnings, read.dropped_columns)))
    except BrokenPipeError:  # the importing process stopped (an error of its own): so does this one
        pass
    except Exception as exc:  # noqa: BLE001 - handed over, raised in the importing process
        try:
            sending.send(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled
            sending.send(("error", RuntimeError(f"reading the file failed: {exc!r}")))
    finally:
        sending.close()


def _add_imported(total: ImportResult, part: ImportResult) -> None:
    """What writing one slice found (`part`) added to `total`."""
    for name in ("created", "updated", "consents", "erased", "touches", "skipped_consents"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.errors.extend(part.errors)
    total.warnings.extend(part.warnings)


class _Rematched(Exception):
    """A row of a slice matched a contact by an identifier an earlier row of the slice changes
    (both matched that contact): the later row is written in a slice after the earlier's (as if
    the slice had ended between them), matched against the contact as the earlier row left it
    — an e-mail that row moved away is free."""

    def __init__(self, key: Key):
        super().__init__(key)
        self.key = key


class _StaleRead(Exception):
    """A slice written beside the one before it matched an existing contact: what it read may
    predate that slice's commit, so it is written again after it."""


class _SlicesInOrder:
    """Writes an import's slices, each in a transaction of its own, committed in file order.
    On PostgreSQL a slice is written in a thread beside the one before it when nothing can tie
    them: no identifier (external_id, e-mail, phone) on both, and the later slice matches no
    existing contact (a slice of new contacts: a first import). The server then inserts one
    slice while this process prepares the next — on two cores the writer's Python and the
    server's work had taken turns (~46 µs a row: 1,000,000 rows in 45–56 s). The later slice
    waits for the earlier one's commit before its own and rolls back if that failed, so what a
    failure leaves is still the slices before it; one that did match a contact is written
    again after the earlier one's commit (`_StaleRead`): every slice sees what it would had
    they been written one after the other. Two slices at most are written at once. On SQLite
    one at a time: its one writer would only queue them."""

    def __init__(self, concurrent: bool, write: Any, merge: Any):
        self.concurrent, self.write, self.merge = concurrent, write, merge
        # Whether the last slice written created contacts only. One that updated some (a rerun
        # of a file, a list of known people) makes the next wait instead of being written beside
        # it: that one would most likely match contacts too, read too early, and be written twice.
        self.new_contacts = True

    def run(self, slices: Iterator[dict[Key, _ImportRow]]) -> None:
        if not self.concurrent:
            for batch in slices:
                self.merge(*self.write(batch, None))
            return
        # (the pool starts its threads at the first submit, after the first slice was read: a
        # read-aside process is forked from a process without threads)
        # (leaving the pool waits for a slice under way: it commits, or rolls back if the one
        # before it failed, before an error here reaches the caller)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="import-slice") as pool:
            earlier: Optional[Future] = None
            earlier_identifiers: set[Key] = set()
            for batch in slices:
                identifiers = {(kind, row.fields[kind]) for row in batch.values()
                               for kind in MATCH_ORDER if row.fields.get(kind)}
                if earlier is not None and not (self.new_contacts and earlier_identifiers.isdisjoint(identifiers)):
                    self._settle(earlier)
                    earlier = None
                later = pool.submit(self._slice, batch, earlier)
                if earlier is not None:
                    self._settle(earlier)
                earlier, earlier_identifiers = later, identifiers
            if earlier is not None:
                self._settle(earlier)

    def _settle(self, done: Future) -> None:
        written, refused = done.result()
        self.new_contacts = written.updated == 0
        self.merge(written, refused)

    def _slice(self, batch: dict[Key, _ImportRow], earlier: Optional[Future]) -> tuple[ImportResult, set[Key]]:
        try:
            return self.write(batch, earlier)
        except _StaleRead:
            assert earlier is not None
            earlier.result()  # (its error, if it failed: this slice is not written either)
            return self.write(batch, None)


def _write_contacts(store: Store, batch: dict[Key, _ImportRow], refused_keys: set[Key], *, file: str,
                    now: datetime, consent_at: Optional[datetime], policy_version: str, result: ImportResult,
                    earlier: Optional[Future] = None) -> None:
    """One slice of an import, in its own transaction: erased people refused, rows matched to
    contacts (MATCH_ORDER), new contacts inserted and matched ones updated, then the slice's
    lead sources and consents written. The keys refused here (errors of `result`) are added to
    `refused_keys`: a later slice's row of one of them is counted as a first. `earlier`: the
    slice before it, when written beside this one (_SlicesInOrder): this one commits after it,
    and raises _StaleRead if it matches a contact before that slice has committed."""
    good = dict(batch)

    def refuse(key: Key, field: str, message: str) -> None:
        result.errors.append(RowError(file, good[key].line, field, message))
        refused_keys.add(key)
        del good[key]
        matched.pop(key, None)

    matched: dict[Key, int] = {}
    with store.engine.begin() as conn:
        # (READ COMMITTED: each statement sees what had committed when it began)
        read_after_earlier = earlier is None or earlier.done()
        erased_emails = refuse_erased(
            conn, [(r.fields["email"], r.line) for r in good.values() if r.fields.get("email")], file, result)
        for key in [k for k, r in good.items() if r.fields.get("email") in erased_emails]:
            refused_keys.add(key)
            del good[key]
        holders = _all_holders(conn, good)
        # an address a contact is also known by (contact_identity) is that contact's, as over
        # /v1/* and /events: a second contact holding it would split the person
        secondary = second_addresses(conn, [r.fields["email"] for r in good.values()
                                            if r.fields.get("email") and r.fields["email"] not in holders["email"]])
        holders["email"].update(secondary)
        matched.update(_match_contacts(good, holders))
        if matched and not read_after_earlier:
            raise _StaleRead()
        again = _rematched(good, matched, holders)
        if again is not None:
            raise _Rematched(again)
        gone = erased_contacts(conn, matched.values())
        for key in [k for k, cid in matched.items() if cid in gone]:
            refuse(key, key[0], ERASED_REFUSAL)
            result.erased += 1
        # a row without an e-mail would create a contact with its phone: not with an erased person's
        by_phone = {k: r.fields["phone"] for k, r in good.items()
                    if k not in matched and r.fields.get("phone") and not r.fields.get("email")}
        erased_numbers = erased_phones(conn, by_phone.values()) if by_phone else set()
        for key in [k for k, phone in by_phone.items() if phone in erased_numbers]:
            refuse(key, "phone", ERASED_REFUSAL)
            result.erased += 1
        for key in [k for k, cid in matched.items()
                    if good[k].fields.get("email") and holders["email"].get(good[k].fields["email"], cid) != cid]:
            refuse(key, "email", f"'{_show(good[key].fields['email'])}' belongs to another contact than the one of "
                                 f"{key[0]} '{_show(key[1])}'")
        existing: dict[int, dict] = {}
        external_ids: dict[int, Optional[str]] = {}
        for part in chunks(sorted(set(matched.values())), 5000):
            for cid, attributes, external_id in conn.execute(
                    select(contact_t.c.id, contact_t.c.attributes, contact_t.c.external_id)
                    .where(ids_in(contact_t.c.id, part))):
                existing[cid], external_ids[cid] = attributes, external_id
        # A row matched by e-mail naming another external id than its contact has: the same
        # conflict as two such rows in one file, not a new id for the contact.
        for key in [k for k, cid in matched.items() if good[k].fields.get("external_id")
                    and external_ids.get(cid) not in (None, good[k].fields["external_id"])
                    and _matched_by(good[k].fields, holders) == "email"]:
            refuse(key, "email", f"'{_show(good[key].fields['email'])}' belongs to a contact with another "
                                 f"external_id ('{_show(external_ids[matched[key]])}')")
        _join_phone_rows(good, matched)
        inserts, updates = [], []
        inserted: list[Key] = []  # the keys of `inserts`, in order
        for key, row in good.items():
            fields = row.fields
            if key in matched:
                cid = matched[key]
                values = {k: fields[k] for k in CORE_FIELDS if k in fields}
                if secondary.get(values.get("email")) == cid:
                    del values["email"]  # one of its addresses already: its own e-mail stays
                updates.append({"cid": cid, **values, "updated_at": now,
                                "attributes": {**(existing.get(cid) or {}), **fields["attributes"]}})
            else:
                inserts.append({**_NEW_CONTACT, **fields})
                inserted.append(key)
            if not row.seen or key in refused_keys:  # a contact on several slices counts once, as in one
                result.created += key not in matched
                result.updated += key in matched
        before = conn.execute(select(func.max(contact_t.c.id))).scalar() or 0
        created = _insert_contacts(conn, inserts, now)
        # Updates touch only the columns the file has, grouped by that column set.
        groups: dict[tuple, list[dict]] = {}
        for u in updates:
            groups.setdefault(tuple(sorted(u)), []).append(u)
        for names, rows in groups.items():
            # (a contact erased since it was read above has no identifier left and is never written to again)
            stmt = contact_t.update().where(contact_t.c.id == bindparam("cid"), or_(
                contact_t.c.email.is_not(None), contact_t.c.external_id.is_not(None),
                contact_t.c.phone.is_not(None))).values({k: bindparam(k) for k in names if k != "cid"})
            write_many(conn, stmt, rows)
        wanted = {k: r for k, r in good.items() if r.consents or r.touch is not None}
        ids = _written_ids(conn, wanted, matched, inserted, before, created)
        result.touches += record_import_touches(
            conn, [(ids[k], r.touch) for k, r in wanted.items() if r.touch is not None and k in ids], now)
        entries = []
        # A grant without a time says only that it was given once, somewhere: it never outranks
        # a revocation on record (in Nurture, or earlier in this file), which the ledger would
        # otherwise date before this import's "now". A time the file gives is a claim it makes.
        # (A new contact has no ledger yet: only matched ones are looked up.)
        untimed = [(ids[k], channel) for k, r in wanted.items() if k in ids and k in matched and consent_at is None
                   for channel, given in r.consents.items() if given.status == "granted" and given.at is None]
        revoked = standing_revocations(conn, untimed) if untimed else {}
        for key, row in wanted.items():
            if key not in ids:
                continue
            for channel, given in row.consents.items():
                if given.status == "granted" and given.at is None and (ids[key], channel) in revoked:
                    column = f"consent_{channel}"
                    result.warnings.append(RowError(
                        file, row.line, column,
                        f"revoked in Nurture on {revoked[(ids[key], channel)].isoformat()}: not re-granted by a "
                        f"'granted' without a time (give {column}_at or --consent-at: when it was given again)"))
                    result.skipped_consents += 1
                    continue
                # An import moves a list from another tool: 'granted' there was confirmed there, at
                # the time and on the source the file names (else: --consent-at or now, by this import).
                source = f"import:{file}" + (f" ({given.source})" if given.source else "")
                entries.append(dict(contact_id=ids[key], channel=channel, status=given.status, source=source,
                                    at=given.at or consent_at or now, policy_version=policy_version,
                                    confirmed=given.status == "granted"))
        result.consents += append_consents(conn, entries)
        if earlier is not None:
            earlier.result()  # committed (or its error, raised here: this transaction rolls back)


def _insert_contacts(conn: Any, rows: list[dict], now: datetime) -> Optional[dict[Key, int]]:
    """New contacts (rows of _NEW_CONTACT's columns), created and updated `now`. On PostgreSQL
    the slice is one statement over one JSON parameter (INSERT … SELECT FROM jsonb_to_recordset):
    an executemany of 20,000 rows with a JSONB column costs ~75 µs a row in SQLAlchemy's and
    the driver's per-row work (write_many's arrays cannot carry JSON), this ~10 — and it
    returns the new contacts' ids by their key (None on SQLite: see `_written_ids`)."""
    if not rows:
        return {}
    if conn.dialect.name != "postgresql":
        write_many(conn, contact_t.insert(), [{**row, "created_at": now, "updated_at": now} for row in rows])
        return None
    created = conn.execute(_INSERT_NEW_CONTACTS, {"rows": rows, "now": now})
    return {next((kind, value) for kind, value in zip(MATCH_ORDER, values) if value): cid
            for cid, *values in created.all()}


# A new contact's row: every column the import may set, so the slice's rows share one shape.
_NEW_CONTACT = {"email": None, "external_id": None, "phone": None, "first_name": None, "last_name": None,
                "timezone": None, "country": None, "locale": None, "lifecycle_stage": "lead", "score": 0.0,
                "attributes": {}}


def _insert_new_contacts() -> Any:
    """PostgreSQL's insert of a slice's new contacts: `rows` (one JSONB parameter) and `now`
    are execution parameters, not values bound into the statement — SQLAlchemy's statement
    objects hold reference cycles, and a slice bound into one (~20 MB at 20,000 rows) would
    wait for the cyclic collector, which a long import keeps paused."""
    names = list(_NEW_CONTACT)
    source = func.jsonb_to_recordset(bindparam("rows", type_=JSONB)).table_valued(
        *(column(name, contact_t.c[name].type) for name in names)).render_derived(with_types=True)
    now = bindparam("now", type_=contact_t.c.created_at.type)
    return (contact_t.insert().from_select([*names, "created_at", "updated_at"],
                                           select(*(source.c[name] for name in names), now, now))
            .returning(contact_t.c.id, *(contact_t.c[kind] for kind in MATCH_ORDER)))


_INSERT_NEW_CONTACTS = _insert_new_contacts()


def _warn_near_misses(record: dict, seen: set[str], file: str, line: int, result: ImportResult) -> None:
    """A warning for each column of `record` not in `seen` that is not a known column but close
    to one (nurture.import_columns.near_miss); every column is added to `seen`."""
    for column in record:
        if column in seen:
            continue
        seen.add(column)
        suggestion = near_miss(column)
        if suggestion is not None:
            result.warnings.append(ColumnWarning(file, line, column, f"column '{column}' is stored as an attribute; "
                                                                     f"did you mean '{suggestion}'?"))


def _written_ids(conn: Any, rows: dict[Key, _ImportRow], matched: dict[Key, int], inserted: list[Key],
                 before: int, created: Optional[dict[Key, int]] = None) -> dict[Key, int]:
    """Row key -> the contact a slice wrote the row to, for the rows whose consents and lead
    source follow; `inserted`: the keys of the new contacts in the order they were inserted,
    `before`: the highest contact id before. A contact erased while this import ran gets no
    id, and nothing is written about them.
    On SQLite the slice's transaction has held the write lock since its first statement
    (store.db: BEGIN IMMEDIATE), so nobody erased a matched contact since it was read, and the
    new contacts are the ids above `before` — SQLite gives a new row the highest id plus one
    (an AUTOINCREMENT table, migration 0029: the highest ever handed out, above `before` when
    the newest contacts were deleted — then they are read by id), so when the highest is now
    `before` + len(inserted), the i-th insert has `before` + 1 + i."""
    if conn.dialect.name != "sqlite":
        # New contacts by the insert's RETURNING (nobody else sees them before the commit);
        # matched ones as matched, but for one erased meanwhile (read again: another
        # transaction may have committed its erasure since). Not by their identifiers again:
        # a later row of the slice may have moved the e-mail a row was matched by, and that
        # row's consent was then not written at all.
        ids = {key: cid for key, cid in (created or {}).items() if key in rows}
        gone = erased_contacts(conn, [matched[key] for key in rows if key in matched])
        ids.update((key, matched[key]) for key in rows if key in matched and matched[key] not in gone)
        return ids
    ids = {key: matched[key] for key in rows if key in matched}
    if len(ids) == len(rows):
        return ids
    if (conn.execute(select(func.max(contact_t.c.id))).scalar() or 0) == before + len(inserted):
        ids.update((key, before + 1 + i) for i, key in enumerate(inserted) if key in rows)
        return ids
    columns = [contact_t.c[kind] for kind in MATCH_ORDER]
    for cid, *values in conn.execute(select(contact_t.c.id, *columns).where(contact_t.c.id > before)):
        key = next((kind, value) for kind, value in zip(MATCH_ORDER, values) if value)
        if key in rows:
            ids[key] = cid
    return ids


def _holders(conn: Any, kind: str, values: list[str]) -> dict[str, int]:
    """value -> the contact holding it in column `kind` (the lowest id when several hold a phone)."""
    column = contact_t.c[kind]
    found: dict[str, int] = {}
    for part in chunks(sorted(set(values)), 5000):
        for value, cid in conn.execute(select(column, contact_t.c.id).where(texts_in(column, part))
                                       .order_by(contact_t.c.id.desc())):
            found[value] = cid
    return found


def _all_holders(conn: Any, rows: dict[Key, _ImportRow]) -> dict[str, dict[str, int]]:
    """Per kind of MATCH_ORDER: value -> the contact holding it, for the values of `rows`."""
    return {kind: _holders(conn, kind, [r.fields[kind] for r in rows.values() if r.fields.get(kind)])
            for kind in MATCH_ORDER}


def _rematched(rows: dict[Key, _ImportRow], matched: dict[Key, int],
               holders: dict[str, dict[str, int]]) -> Optional[Key]:
    """The first key of `rows` (in their order) matched to a contact by an identifier that an
    earlier row of `rows`, matched to the same contact, changes (an e-mail it moves away), or
    None. Rows that agree on it — a shared phone, say — match that contact row by row too."""
    written: dict[int, dict[str, str]] = {}  # contact -> the identifiers earlier rows give it
    for key, row in rows.items():
        cid = matched.get(key)
        if cid is None:
            continue
        fields = row.fields
        via = _matched_by(fields, holders)
        assert via is not None  # (matched)
        given = written.setdefault(cid, {})
        if given.get(via, fields[via]) != fields[via]:
            return key
        given.update((kind, fields[kind]) for kind in MATCH_ORDER if fields.get(kind))
    return None


def _join_phone_rows(rows: dict[Key, _ImportRow], matched: dict[Key, int]) -> None:
    """A row known by its phone only that no contact holds yet joins the earlier row of the
    slice whose contact gets that phone (later values win, attributes merge), in place of
    `rows`: written one after the other, the earlier row's contact would hold the phone when
    the later row is matched — the lowest id among them, so a matched one before a new one,
    a new one in file order. (A rerun then matches both rows to that contact again.)"""
    owner: dict[str, tuple[tuple[int, int], Key]] = {}  # phone -> (the rank of its contact's id, its row)
    for order, key in enumerate(list(rows)):
        row = rows[key]
        phone = row.fields.get("phone")
        if not phone:
            continue
        if key[0] == "phone" and key not in matched and phone in owner:
            earlier = owner[phone][1]
            first = rows[earlier]
            rows[earlier] = _ImportRow(
                {**first.fields, **row.fields, "attributes": {**first.fields["attributes"], **row.fields["attributes"]}},
                {**first.consents, **row.consents}, row.touch if row.touch is not None else first.touch, row.line,
                first.seen)
            del rows[key]
            continue
        rank = (0, matched[key]) if key in matched else (1, order)
        if phone not in owner or rank < owner[phone][0]:
            owner[phone] = (rank, key)


def _match_contacts(rows: dict[Key, _ImportRow], holders: dict[str, dict[str, int]]) -> dict[Key, int]:
    """Row key -> the contact of the row, by MATCH_ORDER: the first identifier of the row that a
    contact holds decides. Rows no contact matches are left out."""
    matched: dict[Key, int] = {}
    for key, row in rows.items():
        kind = _matched_by(row.fields, holders)
        if kind is not None:
            matched[key] = holders[kind][row.fields[kind]]
    return matched


def _matched_by(fields: dict[str, Any], holders: dict[str, dict[str, int]]) -> Optional[str]:
    """The identifier (a kind of MATCH_ORDER) by which a row's fields match a contact: the first
    the row has that a contact holds; None when no contact holds any."""
    return next((kind for kind in MATCH_ORDER if fields.get(kind) and fields[kind] in holders[kind]), None)


def _clean_event(record: Any) -> tuple[Optional[dict], list[tuple[str, str]]]:
    if not isinstance(record, dict):
        return None, [("record", "must be a JSON object")]
    errors = []
    for key in ("event_id", "email", "event", "timestamp"):
        if record.get(key) in (None, ""):
            errors.append((key, "required"))
    for key in ("event_id", "event"):
        problem = _identifier_problem(record.get(key)) or (reserved_problem(record.get(key)) if key == "event" else None)
        if problem:
            errors.append((key, problem))
    props = record.get("properties", {})
    if props is None:
        props = {}
    if not isinstance(props, dict):
        errors.append(("properties", "must be a JSON object"))
    else:
        problem = value_problem(props, ("properties",))
        if problem:
            errors.append(problem)
    occurred = None
    if record.get("timestamp") not in (None, ""):
        try:
            occurred = parse_timestamp(record["timestamp"])
        except ValueError as exc:
            errors.append(("timestamp", str(exc)))
    email = None
    if record.get("email") not in (None, ""):
        if not isinstance(record["email"], str):  # [], {}, 0, false: no address (it was no error)
            errors.append(("email", f"must be text, not {_show(record['email'])}"))
        else:
            try:
                email = normalize_email(record["email"])
            except ValueError as exc:
                errors.append(("email", str(exc)))
    if errors:
        return None, errors
    return {"event_id": str(record["event_id"]), "email": email, "name": str(record["event"]),
            "properties": props, "occurred_at": occurred}, []


def _identifier_problem(value: Any) -> Optional[str]:
    """event_id and event are text (a whole number is taken as its digits). An object, array,
    boolean or fraction would be silently turned into a string like "{'a': 1}" and match nothing."""
    if value in (None, "") or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    if not isinstance(value, str):
        return f"must be a string, not {_show(value)}"
    return text_problem(value)


def track_records(store: Store, records: list[tuple[int, Any]], *, source: str = "track",
                  now: Optional[datetime] = None, create_contacts: bool = True) -> TrackResult:
    """Insert events; unknown e-mail addresses become new contacts (an event from a form is
    how many contacts first appear). UTM parameters and click ids found in a page URL property
    are added to the stored properties under their own names, and the contacts' first and last
    touch follow the stored events (nurture.sources), in the same transaction."""
    with store.engine.begin() as conn:
        return track_in(conn, records, source=source, now=now, create_contacts=create_contacts)


def track_in(conn: Any, records: list[tuple[int, Any]], *, source: str = "track",
             now: Optional[datetime] = None, create_contacts: bool = True) -> TrackResult:
    """`track_records` inside the caller's transaction: every record checked (a bad one is an
    error of its line), the good ones written by `write_events`."""
    now = now or datetime.now(timezone.utc)
    result = TrackResult()
    clean: list[dict] = []
    for line, record in records:
        event, errors = _clean_event(record)
        if errors:
            result.errors.extend(RowError(source, line, f, m) for f, m in errors)
        else:
            clean.append({**event, "line": line})
    return write_events(conn, clean, source=source, now=now, create_contacts=create_contacts, result=result)


# write_events' statements, built once: id lists as one array parameter on PostgreSQL.
_IDS_BY_EMAIL = select(contact_t.c.email, contact_t.c.id).where(texts_in(contact_t.c.email, ()))
# An address that is no contact's own e-mail but one a contact is also known by: a second
# e-mail an identify over /v1/* recorded (nurture.identities.find_by_identity reads both).
_IDS_BY_SECOND_EMAIL = select(identity_t.c.value, identity_t.c.contact_id).where(
    identity_t.c.kind == "email", texts_in(identity_t.c.value, ()))
_KNOWN_EVENTS = select(event_t.c.event_id).where(texts_in(event_t.c.event_id, ()))


def write_events(conn: Any, clean: list[dict], *, source: str, now: datetime, create_contacts: bool = True,
                 result: Optional[TrackResult] = None) -> TrackResult:
    """The one writer of events, in the caller's transaction: erased people refused, contacts
    found (or created) by e-mail, events already stored counted as duplicates, lead sources
    kept. `clean` holds events as `_clean_event` makes them — {event_id, email (normalized),
    name, properties (storable), occurred_at (aware), line} — for callers that build them
    from values they checked themselves (the CRM pull stores a batch's deals, their events and
    its cursor in one transaction, nurture.crm). With `create_contacts` False, an event of an
    address no contact has is not stored; it is counted in `unknown`. An event may instead name
    its contact by `contact_id` (email None): one its caller resolved from other identifiers
    (nurture.identities, the Segment-compatible API)."""
    result = result or TrackResult()
    refused = refuse_erased(conn, [(e["email"], e["line"]) for e in clean if e["email"]], source, result)
    clean = [e for e in clean if not e["email"] or e["email"] not in refused]
    emails = sorted({e["email"] for e in clean if e.get("contact_id") is None})
    ids: dict[str, int] = {}
    for part in chunks(emails, 5000):
        ids.update(dict(conn.execute(_IDS_BY_EMAIL, {"texts_email": list(part)}).all()))
    missing = [e for e in emails if e not in ids]
    if missing:  # the person, not a second contact of the same address (as /v1/* finds them)
        second = second_addresses(conn, missing)
        gone = erased_contacts(conn, second.values()) if second else set()
        for e in [e for e in clean if e.get("contact_id") is None and second.get(e["email"]) in gone]:
            result.errors.append(RowError(source, e["line"], "email", ERASED_REFUSAL))
            result.erased += 1
        clean = [e for e in clean if e.get("contact_id") is not None or second.get(e["email"]) not in gone]
        ids.update((e, cid) for e, cid in second.items() if cid not in gone)
        missing = [e for e in missing if e not in second]
    if missing and create_contacts:
        # An address another transaction creates meanwhile (the same lead delivered twice at
        # once, a page's first calls, an import beside the web server) is skipped, not a
        # UniqueViolation: PostgreSQL waits for that transaction and the read below finds its
        # contact. (SQLite: this transaction holds the write lock since its first read.)
        insert_ignore(conn, contact_t, [{"email": e, "lifecycle_stage": "lead", "score": 0.0, "attributes": {},
                                         "created_at": now, "updated_at": now} for e in missing], ("email",))
        for part in chunks(missing, 5000):
            ids.update(dict(conn.execute(_IDS_BY_EMAIL, {"texts_email": list(part)}).all()))
    elif missing:
        result.unknown += sum(1 for e in clean if e.get("contact_id") is None and e["email"] not in ids)
        clean = [e for e in clean if e.get("contact_id") is not None or e["email"] in ids]
    known_ids: set[str] = set()
    event_ids = [e["event_id"] for e in clean]
    for part in chunks(event_ids, 5000):
        known_ids.update(r[0] for r in conn.execute(_KNOWN_EVENTS, {"texts_event_id": list(part)}))
    rows, seen, touches = [], set(), []
    for e in clean:
        if e["event_id"] in known_ids or e["event_id"] in seen:
            result.duplicates += 1  # a re-sent event changes nothing, its touch included
            continue
        seen.add(e["event_id"])
        properties, found = e["properties"], extract_touch(e["properties"])
        if found.from_url:  # every event's UTMs are kept where conditions and reports read them
            properties = {**properties, **found.from_url}
        contact_id = e["contact_id"] if e.get("contact_id") is not None else ids[e["email"]]
        rows.append({"event_id": e["event_id"], "contact_id": contact_id, "name": e["name"],
                     "properties": properties, "occurred_at": e["occurred_at"], "received_at": now})
        if found.touch is not None:
            touches.append(TouchCandidate(contact_id, found.touch, e["occurred_at"], e["event_id"]))
    writing_events(conn)  # (PostgreSQL: a tick's cursor never passes an id this transaction holds)
    insert_ignore(conn, event_t, rows, ("event_id",))
    result.inserted += len(rows)
    result.inserted_ids += [r["event_id"] for r in rows]
    result.touches += record_event_touches(conn, touches)
    return result


def second_addresses(conn: Any, emails: list[str]) -> dict[str, int]:
    """e-mail -> the contact known by it in contact_identity, for the `emails` no contact has
    as its own address; in one query per 5,000 addresses."""
    found: dict[str, int] = {}
    for part in chunks(sorted(set(emails)), 5000):
        found.update(conn.execute(_IDS_BY_SECOND_EMAIL, {"texts_value": list(part)}).all())
    return found


def track_file(store: Store, path: Path, *, now: Optional[datetime] = None,
               encoding: Optional[str] = None) -> TrackResult:
    """Track a JSONL file. `encoding`: the file's codec (default UTF-8, BOM accepted). The file
    streams through `track_records` TRACK_CHUNK events at a time, each slice its own
    transaction: a failure midway keeps the slices before it, and a rerun stores only what is
    missing (events are idempotent by event_id)."""
    now = now or datetime.now(timezone.utc)  # one receipt time for the whole file
    with gc_paused():  # parsing and writing allocate ~10 containers an event, freed by reference counting
        return _track_file(store, path, now, encoding)


def _track_file(store: Store, path: Path, now: datetime, encoding: Optional[str]) -> TrackResult:
    result = TrackResult()
    batch: list[tuple[int, Any]] = []
    for line, record, problem in read_records(path, encoding):
        if problem:
            result.errors.append(RowError(path.name, line, *problem))
            continue
        batch.append((line, record))
        if len(batch) >= TRACK_CHUNK:
            _add_tracked(result, track_records(store, batch, source=path.name, now=now))
            batch = []
    if batch:
        _add_tracked(result, track_records(store, batch, source=path.name, now=now))
    result.errors.sort(key=lambda e: e.line)
    return result


def _add_tracked(total: TrackResult, part: TrackResult) -> None:
    """`part` (one slice of a file) added to `total`."""
    total.inserted += part.inserted
    total.duplicates += part.duplicates
    total.erased += part.erased
    total.touches += part.touches
    total.unknown += part.unknown
    total.errors += part.errors
    total.inserted_ids += part.inserted_ids

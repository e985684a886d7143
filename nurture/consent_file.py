"""Consent changes in bulk: `nurture consent grant|revoke --file FILE`.

A CSV or JSONL file names one contact per row — by `external_id`, `email` or `phone`, tried in
that order (MATCH_ORDER, as `import contacts` matches) — with optional `channel`, `purpose`,
`at` (when it was given or withdrawn) and `source` columns. Every row is checked first (a bad
one is an error of its line and field, and the others are kept); then the rows are written in
batches of BATCH_SIZE, one transaction each, through the ledger's one writer,
`record_consent`, with the same meaning as a single `consent grant|revoke`: a grant is
confirmed, the policy version is stamped, the source is the CLI's (here `cli:<file>`, plus
the row's `source`). A row whose contact nobody is is reported by its line and skipped: bulk
consent never creates contacts. A row recorded with an `at` before a row already on record
(an import's grant stamped with its own time, say) does not become the current state: it is
reported by its line (`outranked`), not counted as granted or revoked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Optional

from nurture.consent_ledger import current_state, record_consent
from nurture.identities import find_by_identity
from nurture.ingest import (MATCH_ORDER, MAX_EXTERNAL_ID_LENGTH, MAX_SOURCE_LENGTH, RowError, _show, normalize_email,
                            normalize_phone, parse_timestamp, read_records, text_problem)
from nurture.spec.errors import did_you_mean
from nurture.spec.models import CONSENT_CHANNELS, PURPOSES
from nurture.store.db import Store

BATCH_SIZE = 1000  # rows per transaction: a crash loses at most one batch, and no lock is held long


class ConsentRow(NamedTuple):
    line: int
    identifiers: tuple[tuple[str, str], ...]  # (kind, normalized value) in MATCH_ORDER
    channel: str
    purpose: str
    at: datetime
    source: Optional[str]


@dataclass
class ConsentFileResult:
    recorded: int = 0  # ledger rows appended
    errors: list[RowError] = field(default_factory=list)  # bad rows, skipped
    unknown: list[RowError] = field(default_factory=list)  # rows naming no known contact, skipped
    # Rows recorded (among `recorded`) whose `at` lies before a row already on record: the later
    # row stays the current state (a revocation dated before an import's grant does not revoke it).
    outranked: list[RowError] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return len({error.line for error in self.errors})


def read_consent_rows(path: Path, *, channel: Optional[str], purpose: str, at: datetime, now: datetime,
                      encoding: Optional[str] = None) -> tuple[list[ConsentRow], list[RowError]]:
    """The file's rows checked: (good rows, errors by line and field). `channel`, `purpose` and
    `at` are the defaults of rows without a column of their own."""
    rows: list[ConsentRow] = []
    errors: list[RowError] = []
    for line, record, problem in read_records(path, encoding):
        if problem:
            errors.append(RowError(path.name, line, *problem))
            continue
        row, problems = _row(line, record, channel, purpose, at, now)
        if problems:
            errors.extend(RowError(path.name, line, f, m) for f, m in problems)
        else:
            rows.append(row)
    return rows, errors


def _row(line: int, record: dict, channel: Optional[str], purpose: str, at: datetime,
         now: datetime) -> tuple[Optional[ConsentRow], list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    cell = {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items() if v not in (None, "")}
    identifiers = []
    for kind in MATCH_ORDER:
        if cell.get(kind) in (None, ""):
            continue
        try:
            identifiers.append((kind, _identifier(kind, cell[kind], cell.get("country"))))
        except ValueError as exc:
            problems.append((kind, str(exc)))
    if not identifiers and not problems:
        problems.append(("email", "required: name the contact by email, phone or external_id"))
    channel = _choice(cell, "channel", channel, CONSENT_CHANNELS, problems)
    purpose = _choice(cell, "purpose", purpose, PURPOSES, problems) or purpose
    when = at
    if "at" in cell:
        try:
            when = parse_timestamp(cell["at"])
        except ValueError as exc:
            problems.append(("at", str(exc)))
    if when > now:
        problems.append(("at", f"lies in the future ({when.isoformat()}): record a consent change once it happened"))
    source = None
    if "source" in cell:
        value = cell["source"]
        problem = text_problem(value) if isinstance(value, str) else f"must be text, not {_show(value)}"
        if problem:
            problems.append(("source", problem))
        else:
            source = " ".join(value.split())[:MAX_SOURCE_LENGTH]
    if problems:
        return None, problems
    return ConsentRow(line, tuple(identifiers), channel, purpose, when, source), []  # type: ignore[arg-type]


def _identifier(kind: str, value: Any, country: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"must be text, not {_show(value)}")
    text = str(value)
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    if kind == "email":
        return normalize_email(text)
    if kind == "phone":
        return normalize_phone(text, country if isinstance(country, str) else None)
    if len(text) > MAX_EXTERNAL_ID_LENGTH:
        raise ValueError(f"longer than {MAX_EXTERNAL_ID_LENGTH} characters")
    return text


def _choice(cell: dict, column: str, default: Optional[str], allowed: tuple[str, ...],
            problems: list[tuple[str, str]]) -> Optional[str]:
    """The row's `column` (lowercased) when it has one, else `default`; one of `allowed`."""
    value = cell.get(column, default)
    if value is None:
        problems.append((column, f"required: a {column} column or --{column} ({', '.join(allowed)})"))
        return None
    text = str(value).lower()
    if text not in allowed:
        hint = did_you_mean(text, allowed)
        problems.append((column, f"'{_show(value)}' is not one of {', '.join(allowed)}"
                                 + (f"; {hint}" if hint else "")))
        return None
    return text


def record_consent_file(store: Store, path: Path, status: str, *, channel: Optional[str], purpose: str,
                        at: datetime, now: datetime, policy_version: str = "",
                        encoding: Optional[str] = None) -> ConsentFileResult:
    """Append one ledger row with `status` per good row of the file whose contact is known
    (found by `find_by_identity`, as the single grant/revoke finds it), BATCH_SIZE rows per
    transaction. Bad rows and unknown contacts are reported by line, never created."""
    rows, errors = read_consent_rows(path, channel=channel, purpose=purpose, at=at, now=now, encoding=encoding)
    result = ConsentFileResult(errors=errors)
    for start in range(0, len(rows), BATCH_SIZE):
        with store.engine.begin() as conn:
            for row in rows[start:start + BATCH_SIZE]:
                cid = next((found for kind, value in row.identifiers
                            if (found := find_by_identity(conn, kind, value)) is not None), None)
                if cid is None:
                    kind, value = row.identifiers[0]
                    who = f"{kind.replace('_', ' ')} {_show(value)}"
                    result.unknown.append(RowError(path.name, row.line, kind, f"no contact with {who} (not created)"))
                    continue
                source = f"cli:{path.name}" + (f" ({row.source})" if row.source else "")
                written = record_consent(conn, cid, row.channel, status, purpose=row.purpose, source=source,
                                         at=row.at, policy_version=policy_version, confirmed=status == "granted")
                result.recorded += 1
                latest = current_state(conn, cid, row.channel, row.purpose)
                if latest is not None and latest.id != written:
                    result.outranked.append(RowError(
                        path.name, row.line, "at",
                        f"{status} at {row.at.isoformat()}, but a later {latest.status} "
                        f"({latest.recorded_at.isoformat()}) stays the current state of {row.channel}/{row.purpose} "
                        f"(give a later `at`, or none: now)"))
    return result

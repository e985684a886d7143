"""`nurture import deals FILE`: deals from a CRM export (CSV or JSONL) for projects without a
CRM integration — the same rows, events and lifecycle moves as a pull (nurture.crm.deals),
with `crm` "import".

Columns (names in any case): `deal_id`, `email` (the deal's contact), `stage` — `won`, `lost`
or the name of an open pipeline stage — `amount` (a finite number ≥ 0, dot as decimal
separator; required for a won deal), `currency` (the project's, policies.yaml `currency`:
Nurture converts nothing, so another is an error naming both codes), `closed_at` (ISO 8601;
required for a won or lost deal, and not in the future), and optionally `pipeline` and
`name`. A bad row is named `file:line: field: message` and skipped, the good rows are kept;
the same deal twice in a file: the later row wins. Importing the file again adds nothing,
and a corrected export updates the deals it names (a new stage is a `deal_stage_changed`).
The format is written up in docs/crm.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from nurture.crm.deals import (MAX_AMOUNT, MAX_ID_LENGTH, MAX_STAGE_LENGTH, CrmContact, DealSnapshot, DealsResult,
                               apply_deals, attach_waiting)
from nurture.ingest import (MAX_NAME_LENGTH, RowError, normalize_email, parse_timestamp, read_records, refuse_erased)
from nurture.file_cells import amount_cell, blank, show, text_cell
from nurture.store.db import Store

CRM = "import"
WON, LOST = "won", "lost"


@dataclass
class DealImport:
    """What an import did: `deals` as the engine counts them, `superseded` rows of the file that
    lost to a later row of the same deal, `errors` by line and field, `erased` rows refused."""
    deals: DealsResult = field(default_factory=DealsResult)
    superseded: int = 0
    erased: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return len({e.line for e in self.errors})


def _text(value: Any, limit: int, what: str = "") -> str:
    return text_cell(value, limit)


def parse_amount(value: Any) -> float:
    """A deal's amount (nurture.file_cells.amount_cell), at most MAX_AMOUNT."""
    return amount_cell(value, example="1200.00", negative="an amount is zero or more", maximum=MAX_AMOUNT,
                       over="not a deal's amount", overflow_note=False)


def clean_deal_row(record: dict, currency: str, now: datetime) -> tuple[Optional[DealSnapshot], list[tuple[str, str]]]:
    """(the deal of one file row, or None; [(field, problem)])."""
    errors: list[tuple[str, str]] = []
    values: dict[str, Any] = {}

    def check(name: str, rule) -> None:
        try:
            values[name] = rule(record.get(name))
        except ValueError as exc:
            errors.append((name, str(exc)))

    def required(limit: int, hint: str = ""):
        def rule(value: Any) -> str:
            if blank(value):
                raise ValueError("required" + hint)
            return _text(value, limit)
        return rule

    def optional(limit: int):
        return lambda value: None if blank(value) else _text(value, limit)

    def email(value: Any) -> str:
        if blank(value):
            raise ValueError("required (the deal's contact, matched by e-mail)")
        if not isinstance(value, str):
            raise ValueError(f"must be text, not {show(value)}")
        return normalize_email(value)

    check("deal_id", required(MAX_ID_LENGTH))
    check("email", email)
    check("stage", required(MAX_STAGE_LENGTH, " (won, lost or the name of an open stage)"))
    check("pipeline", optional(MAX_STAGE_LENGTH))
    check("name", optional(MAX_NAME_LENGTH))
    stage = values.get("stage")
    outcome = stage.lower() if isinstance(stage, str) and stage.lower() in (WON, LOST) else "open"
    if outcome != "open":
        values["stage"] = outcome
    check("amount", lambda v: None if blank(v) and outcome != WON else
          parse_amount(v) if not blank(v) else _raise("required for a won deal (its revenue)"))
    check("currency", lambda v: _currency(v, currency, values.get("amount") is not None))
    check("closed_at", lambda v: _closed_at(v, outcome, now))
    if errors:
        return None, errors
    return DealSnapshot(deal_id=values["deal_id"], stage=values["stage"], outcome=outcome,  # type: ignore[arg-type]
                        modified_at=now, contacts=(CrmContact(values["email"]),), name=values["name"],
                        pipeline=values["pipeline"], amount=values["amount"], currency=values["currency"],
                        closed_at=values["closed_at"]), []


def _raise(message: str) -> Any:
    raise ValueError(message)


def _currency(value: Any, project_currency: str, needed: bool) -> Optional[str]:
    if blank(value):
        if needed:
            raise ValueError(f"required with an amount (the ISO 4217 code of the amount, here {project_currency})")
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value.strip()):
        raise ValueError(f"'{show(value)}' is not a three-letter ISO 4217 code such as {project_currency}")
    code = value.strip().upper()
    if code != project_currency:
        raise ValueError(f"{code} is not the project's currency {project_currency} (policies.yaml `currency`): "
                         f"Nurture converts no currencies; export the deals in {project_currency}")
    return code


def _closed_at(value: Any, outcome: str, now: datetime) -> Optional[datetime]:
    if blank(value):
        if outcome != "open":
            raise ValueError(f"required for a {outcome} deal (when it closed, ISO 8601, e.g. 2026-03-01T10:00:00Z)")
        return None
    moment = parse_timestamp(value)
    if outcome != "open" and moment > now:
        raise ValueError(f"lies in the future ({moment.isoformat()}): a {outcome} deal closed before it is imported")
    return moment


def import_deals(store: Store, path: Path, *, currency: str, now: Optional[datetime] = None,
                 encoding: Optional[str] = None) -> DealImport:
    """Store the file's deals (see the module docstring). `currency`: the project's."""
    now = now or datetime.now(timezone.utc)
    result = DealImport()
    good: dict[str, tuple[int, DealSnapshot]] = {}
    for line, record, problem in read_records(path, encoding):
        if problem:
            result.errors.append(RowError(path.name, line, *problem))
            continue
        record = {str(k).strip().lower(): v for k, v in record.items()}  # Deal_ID, Email: exports vary
        deal, errors = clean_deal_row(record, currency, now)
        if deal is None:
            result.errors.extend(RowError(path.name, line, f, m) for f, m in errors)
            continue
        if deal.deal_id in good:
            result.superseded += 1
        good[deal.deal_id] = (line, deal)
    with store.engine.begin() as conn:
        attach_waiting(conn, CRM, now=now, currency=currency, result=result.deals)
        refused = refuse_erased(conn, [(d.contacts[0].email, line) for line, d in good.values()], path.name, result)
        deals = [d for _, d in good.values() if d.contacts[0].email not in refused]
        if deals:
            apply_deals(conn, CRM, deals, now=now, currency=currency, result=result.deals)
    result.errors.sort(key=lambda e: e.line)
    return result

"""Ad spend: `nurture import spend FILE` — what was paid per day, source, medium and campaign,
read from a CSV or JSONL export of the ad platforms, checked row by row, and kept in
`ad_spend`, where the report divides it by the leads and customers of each source (CAC). This
module owns the file's rules (`clean_spend_row`) and the upsert (`import_spend`): a key
(day, source, medium, campaign) seen again — later in the same file or in a later import —
replaces its amount, so importing a corrected export is safe and idempotent. Amounts are in the
project's currency (`policies.yaml` `currency`); Nurture converts nothing, so a row in another
currency is an error of its own. The format is written up in docs/report.md, "Ad spend".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from nurture.conversions.event_fields import MAX_VALUE
from nurture.file_cells import amount_cell, blank, show, text_cell
from nurture.ingest import MAX_YEAR, MIN_YEAR, RowError, read_records
from nurture.runtime.sql import chunks
from nurture.store.db import Store
from nurture.store.tables import spend_t

# A longer source, medium or campaign is pasted text, not a name; it is refused, not cut, since
# two names cut to the same prefix would silently add up.
MAX_NAME_LENGTH = 200
Key = tuple[date, str, str, str]  # day, source, medium, campaign



@dataclass
class SpendResult:
    """What an import did: `imported` keys written, of which `replaced` were already stored;
    `superseded` rows of the file lost to a later row with the same key; `total` is the sum
    of the amounts written, in `currency`."""
    imported: int = 0
    replaced: int = 0
    superseded: int = 0
    total: float = 0.0
    currency: str = ""
    errors: list[RowError] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        """Rows skipped (a row with two bad fields is one row)."""
        return len({e.line for e in self.errors})


def clean_spend_row(record: dict, currency: str) -> tuple[Optional[dict], list[tuple[str, str]]]:
    """(the row for `ad_spend` without its import columns, or None; [(field, problem)])."""
    errors: list[tuple[str, str]] = []
    row: dict[str, Any] = {}
    for name, check in (("date", _day), ("source", _required_name), ("medium", _optional_name),
                        ("campaign", _required_name), ("amount", _amount)):
        try:
            row[name] = check(record.get(name))
        except ValueError as exc:
            errors.append((name, str(exc)))
    try:
        row["currency"] = _currency(record.get("currency"), currency)
    except ValueError as exc:
        errors.append(("currency", str(exc)))
    if errors:
        return None, errors
    row["day"] = row.pop("date")
    row["source"], row["medium"] = row["source"].lower(), row["medium"].lower()
    return row, []


def _day(value: Any) -> date:
    """YYYY-MM-DD; a full ISO timestamp counts as the date written in it (ad platforms export
    in the account's time zone: 2026-03-01T23:30:00-05:00 is spend of 1 March)."""
    if blank(value):
        raise ValueError("required (YYYY-MM-DD)")
    if not isinstance(value, str):
        raise ValueError(f"expected a date as text, YYYY-MM-DD, not {show(value)}")
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
        else:
            day = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).date()
    except ValueError:
        raise ValueError(f"'{show(text)}' is not a date (YYYY-MM-DD, e.g. 2026-03-01)") from None
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise ValueError(f"'{show(text)}' is outside the years {MIN_YEAR}–{MAX_YEAR}")
    return day


def _name(value: Any) -> str:
    return text_cell(value, MAX_NAME_LENGTH)


def _required_name(value: Any) -> str:
    if blank(value):
        raise ValueError("required")
    return _name(value)


def _optional_name(value: Any) -> str:
    return "" if blank(value) else _name(value)


def _amount(value: Any) -> float:
    """A finite number ≥ 0 (nurture.file_cells.amount_cell)."""
    if blank(value):
        raise ValueError("required (a number such as 12.50)")
    return amount_cell(value, example="12.50", maximum=MAX_VALUE, over="more is a typo, not a day's spend",
                       negative="spend is zero or more; a refund is a lower amount for the same day")


def _currency(value: Any, project_currency: str) -> str:
    if blank(value):
        raise ValueError(f"required (the ISO 4217 code of the amount, here {project_currency})")
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value.strip()):
        raise ValueError(f"'{show(value)}' is not a three-letter ISO 4217 code such as {project_currency}")
    code = value.strip().upper()
    if code != project_currency:
        raise ValueError(f"{code} is not the project's currency {project_currency} (policies.yaml `currency`): "
                         f"Nurture converts no currencies; export the spend in {project_currency}")
    return code


def import_spend(store: Store, path: Path, *, currency: str, now: Optional[datetime] = None,
                 encoding: Optional[str] = None) -> SpendResult:
    """Upsert the file's spend rows into `ad_spend`; a bad row is named by line and field and
    skipped, the good rows are kept. `currency`: the project's (policies.yaml)."""
    now = now or datetime.now(timezone.utc)
    result = SpendResult(currency=currency)
    good: dict[Key, dict] = {}
    for line, record, problem in read_records(path, encoding):
        if problem:
            result.errors.append(RowError(path.name, line, *problem))
            continue
        record = {str(k).strip().lower(): v for k, v in record.items()}  # Date, Amount: exports vary
        row, errors = clean_spend_row(record, currency)
        if errors:
            result.errors.extend(RowError(path.name, line, f, m) for f, m in errors)
            continue
        key = (row["day"], row["source"], row["medium"], row["campaign"])
        if key in good:  # the same key twice in one file: the later row wins
            result.superseded += 1
        good[key] = {**row, "imported_from": path.name, "imported_at": now}
    if not good:
        return result
    result.total = math.fsum(r["amount"] for r in good.values())  # each ≤ MAX_VALUE: finite
    with store.engine.begin() as conn:
        keys = list(good)
        stored: set[Key] = set()
        columns = (spend_t.c.day, spend_t.c.source, spend_t.c.medium, spend_t.c.campaign)
        for part in chunks(keys, 500):
            stored.update(tuple(r) for r in conn.execute(select(*columns).where(tuple_(*columns).in_(list(part)))))
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(spend_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "source", "medium", "campaign"],
            set_={k: stmt.excluded[k] for k in ("amount", "currency", "imported_from", "imported_at")})
        for part in chunks(list(good.values()), 1000):
            conn.execute(stmt, list(part))
    result.imported, result.replaced = len(good), len(stored & set(keys))
    return result

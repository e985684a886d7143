"""The product catalog: the `product` table, `nurture import products FILE` (CSV or JSONL,
upsert by sku), and the read side templates use for cross-sell
(`catalog.related(category, exclude=sku)`, best `rank` first).

Columns: sku, name, category, price (required); url, image_url, consumption_days (how long
one unit lasts: the re-order cycle), active (default true), rank (lower shows first); other
columns are kept as attributes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import select

from nurture.ingest import RowError, _records
from nurture.runtime.sql import chunks
from nurture.store.db import Store
from nurture.store.models import Product  # noqa: F401  (the table; re-exported here)
from nurture.store.tables import product_t


_CORE = ("sku", "name", "category", "price", "url", "image_url", "consumption_days", "active", "rank")


@dataclass
class ProductImport:
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)


def _clean(record: dict) -> tuple[dict, list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []
    row: dict[str, Any] = {"attributes": {}}
    for key, raw in record.items():
        value = raw.strip() if isinstance(raw, str) else raw
        if value in ("", None):
            continue
        if key in _CORE:
            row[key] = value
        else:
            row["attributes"][key] = value
    for key in ("sku", "name", "category", "price"):
        if key not in row:
            errors.append((key, "required"))
    for key, kind in (("price", float), ("consumption_days", int), ("rank", int)):
        if key in row:
            try:
                row[key] = kind(row[key])
                if row[key] < 0:
                    raise ValueError
            except (TypeError, ValueError):
                errors.append((key, f"'{row[key]}' is not a {'number' if kind is float else 'whole number'} ≥ 0"))
    if "active" in row:
        text = str(row["active"]).lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            errors.append(("active", f"'{row['active']}' is not true or false"))
        row["active"] = text in ("true", "1", "yes")
    for key in ("sku", "name", "category"):
        if key in row:
            row[key] = str(row[key])
    return row, errors


def import_products(store: Store, path: Path, *, now: Optional[datetime] = None) -> ProductImport:
    """Upsert products by sku; a bad row is reported by line and field, good rows are kept."""
    now = now or datetime.now(timezone.utc)
    result = ProductImport()
    good: dict[str, dict] = {}
    for line, record, problem in _records(path):
        if problem:
            result.errors.append(RowError(path.name, line, "line", problem))
            continue
        row, errors = _clean(record)
        if errors:
            result.errors.extend(RowError(path.name, line, f, m) for f, m in errors)
            continue
        good[row["sku"]] = row
    with store.engine.begin() as conn:
        existing: set[str] = set()
        for part in chunks(list(good)):
            existing.update(r[0] for r in conn.execute(select(product_t.c.sku).where(product_t.c.sku.in_(part))))
        defaults = {"url": None, "image_url": None, "consumption_days": None, "active": True, "rank": 1000}
        inserts = [{**defaults, **row, "updated_at": now} for sku, row in good.items() if sku not in existing]
        if inserts:
            conn.execute(product_t.insert(), inserts)
        for sku in existing:
            row = good[sku]
            conn.execute(product_t.update().where(product_t.c.sku == sku)
                         .values({**{k: v for k, v in row.items() if k != "sku"}, "updated_at": now}))
        result.created, result.updated = len(inserts), len(existing)
    return result


class CatalogView:
    """What templates see as `catalog`: read-only lookups, cached per instance (one tick)."""

    def __init__(self, store: Store):
        self._store = store
        self._cache: dict[tuple, list[dict]] = {}

    def related(self, category: Any, exclude: Any = None, limit: int = 3) -> list[dict]:
        key = (str(category or ""), str(exclude or ""), int(limit))
        if key not in self._cache:
            with self._store.reading() as conn:
                rows = conn.execute(
                    select(product_t.c.sku, product_t.c.name, product_t.c.category, product_t.c.price,
                           product_t.c.url, product_t.c.image_url, product_t.c.consumption_days)
                    .where(product_t.c.category == key[0], product_t.c.active.is_(True),
                           product_t.c.sku != key[1])
                    .order_by(product_t.c.rank, product_t.c.sku).limit(key[2])).mappings().all()
            self._cache[key] = [dict(r) for r in rows]
        return self._cache[key]

    def product(self, sku: Any) -> Optional[dict]:
        with self._store.reading() as conn:
            row = conn.execute(select(product_t).where(product_t.c.sku == str(sku or ""))).mappings().first()
        return dict(row) if row else None


def install_catalog(library: Any, store: Store) -> None:
    """Make `catalog` available to a TemplateLibrary's templates (HTML and text)."""
    view = CatalogView(store)
    for env in (library.html_env, library.text_env, getattr(library, "derived_text_env", None)):
        if env is not None:
            env.globals["catalog"] = view

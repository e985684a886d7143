"""The product catalog: the `product` table, `nurture import products FILE` (CSV or JSONL,
upsert by sku), and the read side templates use: cross-sell (`catalog.related(category,
exclude=sku)`, best `rank` first) and product and category names in the reader's language
(`catalog.name(sku, default)`, `catalog.category_name(category)`).

Columns: sku, name, category, price (required); url, image_url, consumption_days (how long
one unit lasts: the re-order cycle), active (default true), rank (lower shows first); other
columns are kept as attributes.

A product's name in another language is the column `name_<locale>` (`name_de`, `name_de_AT`),
its category's label `category_<locale>` (`category_de: Kaffee`): kept as attributes like any
other column, no schema of their own. In a template, `catalog` answers in the language of the
contact being rendered (the locale that picks its translations/ catalog, nurture.rendering.i18n):
`name_de_AT`, else `name_de`, else `name` — the `category` key itself when no label exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from jinja2 import pass_context
from jinja2.runtime import Context
from sqlalchemy import select

from nurture.file_cells import amount_cell, whole_number_cell
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


MAX_PRICE = 1e12  # as a deal's amount and a spend row: more is a typo, not a price


def _price(value: Any) -> float:
    return amount_cell(value, example="18.90", negative="a price is zero or more", maximum=MAX_PRICE,
                       over="not a product's price", overflow_note=False)


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
    # Checked here, not by the database: PostgreSQL refuses a rank over 2**31-1 that SQLite
    # stores, and stores a NaN price that SQLite refuses — either would end the whole import.
    for key, cell in (("price", _price), ("consumption_days", whole_number_cell), ("rank", whole_number_cell)):
        if key in row:
            try:
                row[key] = cell(row[key])
            except ValueError as problem:
                errors.append((key, str(problem)))
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
    """The catalog's read side, cached per instance (one tick). `locale` (Babel's form, `de_AT`)
    picks the names a row shows; None shows `name` and the category key."""

    def __init__(self, store: Store):
        self._store = store
        self._cache: dict[tuple, list[dict]] = {}
        self._products: dict[str, Optional[dict]] = {}
        self._categories: dict[str, dict] = {}

    def related(self, category: Any, exclude: Any = None, limit: int = 3, locale: Optional[str] = None) -> list[dict]:
        key = (str(category or ""), str(exclude or ""), int(limit))
        if key not in self._cache:
            with self._store.reading() as conn:
                rows = conn.execute(
                    select(product_t.c.sku, product_t.c.name, product_t.c.category, product_t.c.price,
                           product_t.c.url, product_t.c.image_url, product_t.c.consumption_days,
                           product_t.c.attributes)
                    .where(product_t.c.category == key[0], product_t.c.active.is_(True),
                           product_t.c.sku != key[1])
                    .order_by(product_t.c.rank, product_t.c.sku).limit(key[2])).mappings().all()
            self._cache[key] = [dict(r) for r in rows]
        return [{**{k: v for k, v in row.items() if k != "attributes"}, "name": _localized(row, "name", locale)}
                for row in self._cache[key]]

    def name(self, sku: Any, default: Any = None, locale: Optional[str] = None) -> Any:
        """The catalog's name of `sku` in `locale`; `default` (the event's own `product_name`)
        for a sku the catalog does not have."""
        row = self._product_names(sku)
        return _localized(row, "name", locale) if row else default

    def category_name(self, category: Any, locale: Optional[str] = None) -> Any:
        """The label of a category key in `locale` (`category_de` of its products), else the key."""
        key = str(category or "")
        if key not in self._categories:
            labels: dict = {}
            with self._store.reading() as conn:
                for (attributes,) in conn.execute(select(product_t.c.attributes)
                                                  .where(product_t.c.category == key)
                                                  .order_by(product_t.c.rank, product_t.c.sku).limit(50)):
                    for name, value in (attributes or {}).items():
                        if name.startswith("category_") and value:
                            labels.setdefault(name, value)
            self._categories[key] = labels
        return _localized({"category": category, "attributes": self._categories[key]}, "category", locale)

    def product(self, sku: Any) -> Optional[dict]:
        with self._store.reading() as conn:
            row = conn.execute(select(product_t).where(product_t.c.sku == str(sku or ""))).mappings().first()
        return dict(row) if row else None

    def _product_names(self, sku: Any) -> Optional[dict]:
        key = str(sku or "")
        if key not in self._products:
            with self._store.reading() as conn:
                row = conn.execute(select(product_t.c.name, product_t.c.attributes)
                                   .where(product_t.c.sku == key)).mappings().first()
            self._products[key] = dict(row) if row else None
        return self._products[key]


def _localized(row: dict, column: str, locale: Optional[str]) -> Any:
    """`row[column]` in `locale`: the attribute `<column>_de_AT`, else `<column>_de`, else the column."""
    attributes = row.get("attributes") or {}
    if locale:
        for candidate in dict.fromkeys((locale, locale.split("_")[0])):
            value = attributes.get(f"{column}_{candidate}")
            if value:
                return value
    return row.get(column)


class _TemplateCatalog:
    """`catalog` as templates see it: the view's lookups in the language of the contact being
    rendered (the one its words are translated into), so a template writes no locale."""

    def __init__(self, view: CatalogView, library: Any):
        self._view = view
        self._localizer = getattr(library, "localizer", None)

    def _locale(self, context: Context) -> Optional[str]:
        return self._localizer.locale_of(context) if self._localizer is not None else None

    @pass_context
    def related(self, context: Context, category: Any, exclude: Any = None, limit: int = 3) -> list[dict]:
        return self._view.related(category, exclude, limit, locale=self._locale(context))

    @pass_context
    def name(self, context: Context, sku: Any, default: Any = None) -> Any:
        return self._view.name(sku, default, locale=self._locale(context))

    @pass_context
    def category_name(self, context: Context, category: Any) -> Any:
        return self._view.category_name(category, locale=self._locale(context))

    def product(self, sku: Any) -> Optional[dict]:
        return self._view.product(sku)


def install_catalog(library: Any, store: Store) -> None:
    """Make `catalog` available to a TemplateLibrary's templates (HTML and text)."""
    view = _TemplateCatalog(CatalogView(store), library)
    for env in (library.html_env, library.text_env, getattr(library, "derived_text_env", None)):
        if env is not None:
            env.globals["catalog"] = view

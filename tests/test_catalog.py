"""The product catalog: `nurture import products FILE` (upsert by sku, row errors by line and
field) and the cross-sell lookup templates use."""
from __future__ import annotations

import os

from sqlalchemy import select

from nurture.catalog import CatalogView, import_products
from nurture.store.tables import product_t
from tests.conftest import REPO


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_import_upserts_by_sku_and_reports_bad_rows(store, tmp_path):
    first = _write(tmp_path / "p.csv", "sku,name,category,price,consumption_days,colour\n"
                                       "A,Beans,coffee,18.9,20,brown\n"
                                       "B,Frother,coffee,cheap,,\n"
                                       ",Nameless,coffee,3,,\n")
    result = import_products(store, first)
    assert (result.created, result.updated) == (1, 0)
    assert [str(e) for e in result.errors] == ["p.csv:3: price: 'cheap' is not a number (write it without a currency sign, e.g. 18.90)",
                                               "p.csv:4: sku: required"]
    again = _write(tmp_path / "p.jsonl", '{"sku": "A", "name": "Beans 1kg", "category": "coffee", "price": 21}\n'
                                         '{"sku": "C", "name": "Tea", "category": "tea", "price": 9.5, "rank": 1}\n')
    result = import_products(store, again)
    assert (result.created, result.updated, result.errors) == (1, 1, [])
    with store.engine.connect() as conn:
        rows = conn.execute(select(product_t.c.sku, product_t.c.name, product_t.c.price, product_t.c.attributes)
                            .order_by(product_t.c.sku)).all()
    assert [tuple(r) for r in rows] == [("A", "Beans 1kg", 21.0, {}), ("C", "Tea", 9.5, {})]


def test_a_rank_beyond_int4_or_a_nan_price_is_a_row_error_and_the_good_rows_are_kept(store, tmp_path):
    # PostgreSQL refused rank 3000000000 (int4) and stored price NaN, SQLite the other way round:
    # either way the whole file ended in an "internal error"
    csv = _write(tmp_path / "p.csv", "sku,name,category,price,rank,consumption_days\n"
                                     "big,Big,c,5,3000000000,\n"
                                     "nan,NaN,c,nan,1,\n"
                                     "long,Long,c,5,1,2147483648\n"
                                     "ok,OK,c,5,2147483647,30\n")
    jsonl = _write(tmp_path / "p.jsonl", '{"sku": "jnan", "name": "N", "category": "c", "price": NaN}\n'
                                         '{"sku": "jinf", "name": "I", "category": "c", "price": 1, "rank": 1e400}\n'
                                         '{"sku": "jok", "name": "J", "category": "c", "price": 2.5, "rank": 7.0}\n')
    result = import_products(store, csv)
    assert (result.created, [str(e) for e in result.errors]) == (1, [
        "p.csv:2: rank: '3000000000' is over 2,147,483,647, the largest number this field holds",
        "p.csv:3: price: 'nan' is not a number (write it without a currency sign, e.g. 18.90)",
        "p.csv:4: consumption_days: '2147483648' is over 2,147,483,647, the largest number this field holds"])
    result = import_products(store, jsonl)
    assert (result.created, [str(e) for e in result.errors]) == (1, [
        "p.jsonl:1: price: nan is not a finite number", "p.jsonl:2: rank: 'inf' is not a whole number ≥ 0"])
    with store.engine.connect() as conn:
        rows = conn.execute(select(product_t.c.sku, product_t.c.price, product_t.c.rank, product_t.c.consumption_days)
                            .order_by(product_t.c.sku)).all()
    assert [tuple(r) for r in rows] == [("jok", 2.5, 7, None), ("ok", 5.0, 2147483647, 30)]


def test_a_price_over_a_trillion_is_a_row_error_like_a_deals_amount(store, tmp_path):
    # 1e26 was imported, and every buyer of the category then got cross_sell `failed`: the
    # shipped template's `price | money` could not format it
    csv = _write(tmp_path / "p.csv", "sku,name,category,price\n"
                                     "big,Gold grinder,coffee,99999999999999999999999999\n"
                                     "top,Top,coffee,1000000000000\n")
    result = import_products(store, csv)
    assert (result.created, [str(e) for e in result.errors]) == (1, [
        "p.csv:2: price: 99999999999999999999999999 is over 1,000,000,000,000: not a product's price"])


def test_related_products_come_from_the_same_category_best_rank_first(store, tmp_path):
    import_products(store, _write(tmp_path / "p.csv", "sku,name,category,price,rank,active\n"
                                                      "A,Beans,coffee,18.9,5,true\n"
                                                      "B,Frother,coffee,39,1,true\n"
                                                      "C,Grinder,coffee,59,2,true\n"
                                                      "D,Old mill,coffee,9,0,false\n"
                                                      "E,Tea,tea,5,1,true\n"))
    view = CatalogView(store)
    assert [p["sku"] for p in view.related("coffee", exclude="A")] == ["B", "C"]
    assert [p["sku"] for p in view.related("coffee", limit=1)] == ["B"]
    assert view.related("garden") == []


def test_cli_import_products_exits_non_zero_on_bad_rows(tmp_path):
    bad = _write(tmp_path / "bad.csv", "sku,name,category\nA,Beans,coffee\n")
    env = {**os.environ, "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    from tests.cli_inproc import run_cli
    run = run_cli(["--project", str(REPO), "import", "products", str(bad)], env, cwd=tmp_path)
    assert run.returncode == 1
    assert "bad.csv:2: price: required" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout

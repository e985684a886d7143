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
    assert [str(e) for e in result.errors] == ["p.csv:3: price: 'cheap' is not a number ≥ 0",
                                               "p.csv:4: sku: required"]
    again = _write(tmp_path / "p.jsonl", '{"sku": "A", "name": "Beans 1kg", "category": "coffee", "price": 21}\n'
                                         '{"sku": "C", "name": "Tea", "category": "tea", "price": 9.5, "rank": 1}\n')
    result = import_products(store, again)
    assert (result.created, result.updated, result.errors) == (1, 1, [])
    with store.engine.connect() as conn:
        rows = conn.execute(select(product_t.c.sku, product_t.c.name, product_t.c.price, product_t.c.attributes)
                            .order_by(product_t.c.sku)).all()
    assert [tuple(r) for r in rows] == [("A", "Beans 1kg", 21.0, {}), ("C", "Tea", 9.5, {})]


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

"""Specification: `nurture import spend FILE` (issue 12, item 2). Ad spend per day, source,
medium and campaign from CSV or JSONL, in the project's currency: a bad row is named
`file:line: field: message` and skipped while the good rows are kept (exit 1); a key seen
again — later in the file or in a later import — replaces its amount, so re-importing a
corrected export is safe; never a traceback. On SQLite and PostgreSQL; the CLI in-process."""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.spend import import_spend
from nurture.store.tables import spend_t
from tests.conftest import utc, write_project

NOW = utc(2026, 3, 4, 10, 0)

CSV = """date,source,medium,campaign,amount,currency,impressions
2026-03-01,Google,CPC,Spring Sale,120.50,EUR,10000
2026-03-01,facebook,paid_social,Spring Sale,80,eur,
2026-03-02T23:30:00-05:00, newsletter_partner ,,Spring Sale,250,EUR,
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spend_rows(store) -> list[tuple]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(spend_t.c.day, spend_t.c.source, spend_t.c.medium, spend_t.c.campaign,
                                   spend_t.c.amount, spend_t.c.currency, spend_t.c.imported_from)
                            .order_by(spend_t.c.day, spend_t.c.source, spend_t.c.medium)).all()
        conn.rollback()
    return [tuple(r) for r in rows]


def errors(result) -> list[str]:
    return [str(e) for e in result.errors]


# ---------------------------------------------------------------- the file


def test_a_csv_export_is_imported_with_source_and_medium_lowercased_and_the_summary_counted(store, tmp_path):
    result = import_spend(store, write(tmp_path, "spend.csv", CSV), currency="EUR", now=NOW)
    assert (result.imported, result.replaced, result.superseded, errors(result)) == (3, 0, 0, [])
    assert result.total == pytest.approx(450.50)
    assert spend_rows(store) == [
        (date(2026, 3, 1), "facebook", "paid_social", "Spring Sale", 80.0, "EUR", "spend.csv"),
        (date(2026, 3, 1), "google", "cpc", "Spring Sale", 120.5, "EUR", "spend.csv"),
        # a timestamp is the date written in it, not its UTC date (4 March 04:30 UTC)
        (date(2026, 3, 2), "newsletter_partner", "", "Spring Sale", 250.0, "EUR", "spend.csv"),
    ]


def test_a_jsonl_export_with_numbers_and_capitalised_column_names_is_imported(store, tmp_path):
    lines = [{"Date": "2026-03-01", "Source": "linkedin", "Campaign": "B2B Q1", "Amount": 99.9, "Currency": "EUR"},
             {"date": "2026-03-02", "source": "linkedin", "medium": None, "campaign": 2026, "amount": 0,
              "currency": "EUR"}]
    path = write(tmp_path, "spend.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    result = import_spend(store, path, currency="EUR", now=NOW)
    assert (result.imported, errors(result)) == (2, [])
    assert [r[:5] for r in spend_rows(store)] == [(date(2026, 3, 1), "linkedin", "", "B2B Q1", 99.9),
                                                  (date(2026, 3, 2), "linkedin", "", "2026", 0.0)]


BAD = [
    ("date", "2026-13-01", "'2026-13-01' is not a date (YYYY-MM-DD"),
    ("date", "01/03/2026", "'01/03/2026' is not a date"),
    ("date", "", "required (YYYY-MM-DD)"),
    ("date", "9999-01-01", "outside the years 1900–2999"),
    ("source", "", "required"),
    ("campaign", "   ", "required"),
    ("source", "x" * 201, "longer than 200 characters"),
    ("amount", "12,50", "'12,50' has a comma: use a dot as the decimal separator (write 12.50)"),
    ("amount", "1,234.56", "without thousands separators"),
    ("amount", "-5", "-5 is negative"),
    ("amount", "NaN", "'NaN' is not a number"),
    ("amount", "Infinity", "'Infinity' is not a number"),
    ("amount", "1e999", "1e999 is not a finite number (it overflows to Infinity)"),
    ("amount", "1e308", "1e308 is over 1,000,000,000,000: more is a typo, not a day's spend"),
    ("amount", "€12", "'€12' is not a number (write it without a currency sign"),
    ("amount", "", "required (a number such as 12.50)"),
    ("currency", "EURO", "'EURO' is not a three-letter ISO 4217 code such as EUR"),
    ("currency", "", "required (the ISO 4217 code of the amount, here EUR)"),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # parsing: one backend is enough
@pytest.mark.parametrize("field, value, message", BAD, ids=[f"{f}={v[:12]!r}" for f, v, _ in BAD])
def test_a_bad_field_is_named_by_file_line_and_field_and_the_good_rows_are_kept(store, tmp_path, field, value,
                                                                                 message):
    good = {"date": "2026-03-01", "source": "google", "medium": "cpc", "campaign": "brand", "amount": "10",
            "currency": "EUR"}
    bad = {**good, "campaign": "other", field: value}
    header = ",".join(good)
    text = "\n".join([header, ",".join(good.values()), ",".join(f'"{v}"' for v in bad.values())]) + "\n"
    result = import_spend(store, write(tmp_path, "spend.csv", text), currency="EUR", now=NOW)
    [error] = errors(result)
    assert error.startswith(f"spend.csv:3: {field}: ") and message in error, error
    assert result.imported == 1 and result.bad_rows == 1
    assert [r[3] for r in spend_rows(store)] == ["brand"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # parsing: one backend is enough
@pytest.mark.parametrize("value, message", [
    (True, "must be a number, not True"), ("twelve", "'twelve' is not a number"), ({"v": 1}, "must be a number"),
    (float("nan"), "nan is not a finite number"), (10 ** 400, "overflows to Infinity"),
])
def test_a_jsonl_amount_that_is_not_a_finite_number_is_refused(store, tmp_path, value, message):
    line = {"date": "2026-03-01", "source": "google", "campaign": "brand", "amount": value, "currency": "EUR"}
    path = write(tmp_path, "spend.jsonl", json.dumps(line) + "\n")
    result = import_spend(store, path, currency="EUR", now=NOW)
    [error] = errors(result)
    assert error.startswith("spend.jsonl:1: amount: ") and message in error, error
    assert spend_rows(store) == []


def test_another_currency_is_an_error_of_its_row_naming_both_codes(store, tmp_path):
    text = CSV.replace("120.50,EUR", "120.50,USD")
    result = import_spend(store, write(tmp_path, "spend.csv", text), currency="EUR", now=NOW)
    assert errors(result) == ["spend.csv:2: currency: USD is not the project's currency EUR (policies.yaml "
                              "`currency`): Nurture converts no currencies; export the spend in EUR"]
    assert [r[1] for r in spend_rows(store)] == ["facebook", "newsletter_partner"]


def test_a_row_with_several_bad_fields_names_each_and_counts_once(store, tmp_path):
    path = write(tmp_path, "spend.csv", "date,source,campaign,amount,currency\nyesterday,,x,-1,USD\n")
    result = import_spend(store, path, currency="EUR", now=NOW)
    assert [e.field for e in result.errors] == ["date", "source", "amount", "currency"]
    assert (result.bad_rows, result.imported) == (1, 0)


def test_the_same_key_twice_in_one_file_the_later_row_wins(store, tmp_path):
    text = CSV + "2026-03-01,GOOGLE,cpc,Spring Sale,130,EUR,\n"
    result = import_spend(store, write(tmp_path, "spend.csv", text), currency="EUR", now=NOW)
    assert (result.imported, result.superseded) == (3, 1)
    assert result.total == pytest.approx(460.0)
    assert [r[4] for r in spend_rows(store) if r[1] == "google"] == [130.0]


def test_a_re_import_replaces_the_amounts_of_its_keys_and_keeps_the_others(store, tmp_path):
    import_spend(store, write(tmp_path, "spend.csv", CSV), currency="EUR", now=NOW)
    corrected = write(tmp_path, "corrected.csv", "date,source,medium,campaign,amount,currency\n"
                                                 "2026-03-01,google,cpc,Spring Sale,125,EUR\n"
                                                 "2026-03-01,google,,Spring Sale,5,EUR\n")  # no medium: another key
    result = import_spend(store, corrected, currency="EUR", now=NOW)
    assert (result.imported, result.replaced) == (2, 1)
    assert [(r[1], r[2], r[4], r[6]) for r in spend_rows(store) if r[0] == date(2026, 3, 1)] == [
        ("facebook", "paid_social", 80.0, "spend.csv"), ("google", "", 5.0, "corrected.csv"),
        ("google", "cpc", 125.0, "corrected.csv")]
    again = import_spend(store, corrected, currency="EUR", now=NOW)
    assert (again.imported, again.replaced) == (2, 2) and len(spend_rows(store)) == 4


# ---------------------------------------------------------------- the command


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`nurture …` in this process (main(), as the console script runs it): (exit code, stdout, stderr)."""
    from nurture.cli import main
    root = write_project(tmp_path / "shop", {}, policies='version: "1"\ncurrency: EUR\n')
    monkeypatch.setenv("NURTURE_PROJECT", str(root))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{root / 'cli.db'}")
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    monkeypatch.delenv("NURTURE_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "300")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["nurture", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, out + err
        return exit_.value.code or 0, out, err
    run.root = root
    return run


def test_the_command_prints_a_summary_and_exits_0(cli, tmp_path):
    path = write(tmp_path, "spend.csv", CSV.replace("120.50", "1120.50"))
    code, out, err = cli("import", "spend", str(path))
    assert (code, err) == (0, "")
    assert out.strip() == "imported spend.csv: 3 row(s), 0 replaced, 0 bad row(s) skipped, total 1,450.50 EUR"
    code, out, _ = cli("import", "spend", str(path))
    assert code == 0 and "3 row(s), 3 replaced" in out


def test_the_command_names_bad_rows_on_stderr_keeps_the_good_ones_and_exits_1(cli, tmp_path):
    path = write(tmp_path, "spend.csv", CSV + "2026-03-03,google,cpc,brand,\"12,50\",EUR,\n"
                                              "2026-03-03,google,cpc,brand,12.5,USD,\n")
    code, out, err = cli("import", "spend", str(path))
    assert code == 1
    assert err.splitlines() == [
        "spend.csv:5: amount: '12,50' has a comma: use a dot as the decimal separator (write 12.50)",
        "spend.csv:6: currency: USD is not the project's currency EUR (policies.yaml `currency`): Nurture "
        "converts no currencies; export the spend in EUR"]
    assert "3 row(s), 0 replaced, 2 bad row(s) skipped, total 450.50 EUR" in out


def test_the_command_answers_usage_errors_without_a_traceback(cli, tmp_path):
    code, _, err = cli("import", "spend", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv: no such file" in err
    code, _, err = cli("import", "spend", str(write(tmp_path, "s.csv", CSV)), "--encoding", "klingon")
    assert code == 2 and "unknown encoding 'klingon'" in err
    code, _, err = cli("import", "spend", str(write(tmp_path, "s.png", "")))
    assert code == 0  # an empty file: nothing to import
    (cli.root / "journeys" / "policies.yaml").write_text("currency: euro\n", encoding="utf-8")
    code, out, err = cli("import", "spend", str(write(tmp_path, "s.csv", CSV)))
    assert code == 1 and "policies.yaml has errors" in err and "currency 'euro' is not an ISO 4217 code" in err
    assert "imported" not in out

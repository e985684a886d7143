"""Specification: `nurture import deals FILE` (issue 13, item 2) — deals from a CRM export (CSV
or JSONL) become the same rows and events a HubSpot pull makes (`crm` "import"), so shops
without a CRM integration get deal revenue too. A bad row is named `file:line: field: message`
and skipped while the good rows are kept (exit 1); importing again adds nothing; never a
traceback. On SQLite and PostgreSQL; the CLI in-process."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.crm.deal_file import import_deals
from nurture.privacy.tombstones import ERASED_REASON, subject_hash
from nurture.store.tables import contact_t, deal_t, event_t, suppression_t
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, contact_row

NOW = utc(2026, 3, 4, 10, 0)

CSV = """deal_id,email,stage,amount,currency,closed_at,pipeline,name
D-1,ann@example.com,won,1200.50,EUR,2026-03-01T09:00:00Z,sales,Annual plan
D-2,bob@example.com,Proposal,800,eur,,sales,Pilot
D-3,ann@example.com,LOST,300,EUR,2026-02-20,,
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rows(store, table, *columns, where=None):
    with store.engine.connect() as conn:
        stmt = select(*(columns or (table,)))
        if where is not None:
            stmt = stmt.where(where)
        found = conn.execute(stmt).all()
        conn.rollback()
    return found


def deal_events(store):
    return [(r.event_id, r.contact_id, r.name, r.properties, r.occurred_at)
            for r in rows(store, event_t, where=event_t.c.name.like("deal_%"))]


def errors(result) -> list[str]:
    return [str(e) for e in result.errors]


# ---------------------------------------------------------------- the file


def test_a_crm_export_becomes_deals_and_their_events(store, tmp_path):
    ann, bob = add_contact(store, "ann@example.com"), add_contact(store, "bob@example.com")
    result = import_deals(store, write(tmp_path, "deals.csv", CSV), currency="EUR", now=NOW)
    assert errors(result) == []
    d = result.deals
    assert (d.read, d.new, d.events, d.won, d.lost, d.revenue, d.without_contact) == (3, 3, 5, 1, 1, 1200.5, 0)
    events = {e[0]: e for e in deal_events(store)}
    assert events["deal:import:D-1:won"][1:] == (ann, "deal_won", {
        "deal_id": "D-1", "crm": "import", "pipeline": "sales", "name": "Annual plan", "amount": 1200.5,
        "currency": "EUR", "value": 1200.5}, utc(2026, 3, 1, 9))
    assert events["deal:import:D-2:created"][1:3] == (bob, "deal_created")
    assert events["deal:import:D-3:lost"][4] == utc(2026, 2, 20)  # a date is midnight UTC
    stored = {r.deal_id: r for r in rows(store, deal_t)}
    assert (stored["D-2"].stage, stored["D-2"].outcome, stored["D-2"].currency) == ("Proposal", "open", "EUR")
    assert (stored["D-3"].stage, stored["D-3"].outcome) == ("lost", "lost")
    assert (contact_row(store, ann).lifecycle_stage, contact_row(store, bob).lifecycle_stage) == \
        ("customer", "opportunity")


def test_jsonl_with_numbers_and_capitalised_column_names_is_read(store, tmp_path):
    ann = add_contact(store, "ann@example.com")
    lines = [{"Deal_ID": 4711, "Email": "ANN@example.com", "Stage": "won", "Amount": 99, "Currency": "EUR",
              "Closed_At": "2026-03-02T12:00:00+01:00"}]
    result = import_deals(store, write(tmp_path, "deals.jsonl", "\n".join(map(json.dumps, lines)) + "\n"),
                          currency="EUR", now=NOW)
    assert (errors(result), result.deals.won, result.deals.revenue) == ([], 1, 99.0)
    [won] = [e for e in deal_events(store) if e[2] == "deal_won"]
    assert (won[0], won[1], won[4]) == ("deal:import:4711:won", ann, utc(2026, 3, 2, 11))


BAD = [
    ("deal_id", "", "required"),
    ("email", "not-an-address", "An email address must have an @-sign."),
    ("email", "", "required (the deal's contact, matched by e-mail)"),
    ("stage", "", "required (won, lost or the name of an open stage)"),
    ("stage", "x" * 101, "longer than 100 characters"),
    ("amount", "12,50", "'12,50' has a comma: use a dot as the decimal separator (write 12.50)"),
    ("amount", "-5", "-5 is negative (an amount is zero or more)"),
    ("amount", "€ 12", "'€ 12' is not a number (write it without a currency sign, e.g. 1200.00)"),
    ("amount", "1e400", "1e400 is not a finite number"),
    ("amount", "5e12", "5e12 is over 1,000,000,000,000: not a deal's amount"),
    ("amount", "", "required for a won deal (its revenue)"),
    ("currency", "EURO", "'EURO' is not a three-letter ISO 4217 code such as EUR"),
    ("currency", "", "required with an amount (the ISO 4217 code of the amount, here EUR)"),
    ("closed_at", "yesterday", "'yesterday' is not an ISO 8601 timestamp"),
    ("closed_at", "", "required for a won deal (when it closed, ISO 8601, e.g. 2026-03-01T10:00:00Z)"),
    ("closed_at", "2026-04-01T00:00:00Z", "lies in the future (2026-04-01T00:00:00+00:00): a won deal closed before "
                                          "it is imported"),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # parsing: one backend is enough
@pytest.mark.parametrize("field, value, message", BAD)
def test_a_bad_field_is_named_by_file_line_and_field_and_the_good_rows_are_kept(store, tmp_path, field, value,
                                                                                 message):
    add_contact(store, "ann@example.com")
    good = {"deal_id": "G-1", "email": "ann@example.com", "stage": "won", "amount": "10", "currency": "EUR",
            "closed_at": "2026-03-01T00:00:00Z"}
    bad = {**good, "deal_id": "B-1", field: value}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(good), lineterminator="\n")
    writer.writeheader()
    writer.writerows([good, bad])
    text = out.getvalue()
    result = import_deals(store, write(tmp_path, "deals.csv", text), currency="EUR", now=NOW)
    assert errors(result) == [f"deals.csv:3: {field}: {message}"]
    assert [r.deal_id for r in rows(store, deal_t)] == ["G-1"]
    assert result.deals.won == 1 and result.bad_rows == 1


def test_another_currency_is_an_error_naming_both_codes(store, tmp_path):
    text = "deal_id,email,stage,amount,currency,closed_at\nD-9,ann@example.com,won,10,usd,2026-03-01\n"
    result = import_deals(store, write(tmp_path, "deals.csv", text), currency="EUR", now=NOW)
    assert errors(result) == ["deals.csv:2: currency: USD is not the project's currency EUR (policies.yaml "
                              "`currency`): Nurture converts no currencies; export the deals in EUR"]
    assert rows(store, deal_t) == []


def test_importing_again_adds_nothing_and_a_corrected_export_moves_the_stage(store, tmp_path):
    add_contact(store, "ann@example.com")
    bob = add_contact(store, "bob@example.com")
    path = write(tmp_path, "deals.csv", CSV)
    import_deals(store, path, currency="EUR", now=NOW)
    before = deal_events(store)
    again = import_deals(store, path, currency="EUR", now=NOW)
    assert (again.deals.read, again.deals.events, again.deals.won, again.deals.revenue) == (3, 0, 0, 0.0)
    assert deal_events(store) == before
    corrected = write(tmp_path, "deals2.csv", CSV.replace("D-2,bob@example.com,Proposal,800,eur,",
                                                          "D-2,bob@example.com,won,850,EUR,2026-03-03T08:00:00Z"))
    later = import_deals(store, corrected, currency="EUR", now=NOW)
    assert (later.deals.changed, later.deals.stage_changes, later.deals.won, later.deals.revenue) == (1, 1, 1, 850.0)
    [changed] = [e for e in deal_events(store) if e[2] == "deal_stage_changed"]
    assert (changed[0], changed[1], changed[3]["from"], changed[3]["to"], changed[4]) == \
        ("deal:import:D-2:stage:won", bob, "Proposal", "won", utc(2026, 3, 3, 8))
    assert import_deals(store, corrected, currency="EUR", now=NOW).deals.events == 0


def test_the_same_deal_twice_in_a_file_the_later_row_wins(store, tmp_path):
    add_contact(store, "ann@example.com")
    text = ("deal_id,email,stage,amount,currency,closed_at\nD-1,ann@example.com,Proposal,5,EUR,\n"
            "D-1,ann@example.com,Negotiation,7,EUR,\n")
    result = import_deals(store, write(tmp_path, "deals.csv", text), currency="EUR", now=NOW)
    assert result.superseded == 1
    [row] = rows(store, deal_t)
    assert (row.stage, row.amount) == ("Negotiation", 7.0)


def test_a_deal_of_an_unknown_address_waits_for_its_contact_and_no_contact_is_created(store, tmp_path):
    path = write(tmp_path, "deals.csv", "deal_id,email,stage,amount,currency,closed_at\n"
                                        "D-1,zoe@example.com,won,70,EUR,2026-03-01T00:00:00Z\n")
    first = import_deals(store, path, currency="EUR", now=NOW)
    assert (first.deals.without_contact, first.deals.examples, first.deals.events) == (1, [("D-1", "zoe@example.com")],
                                                                                        0)
    assert rows(store, contact_t) == []
    zoe = add_contact(store, "zoe@example.com")
    again = import_deals(store, path, currency="EUR", now=NOW)
    assert (again.deals.attached, again.deals.won, again.deals.revenue) == (1, 1, 70.0)
    assert {e[1] for e in deal_events(store)} == {zoe}


def test_a_row_of_an_erased_person_is_refused(store, tmp_path):
    with store.engine.begin() as conn:
        conn.execute(suppression_t.insert().values(address=subject_hash("eve@example.com"), reason=ERASED_REASON,
                                                   created_at=NOW))
    path = write(tmp_path, "deals.csv", "deal_id,email,stage,amount,currency,closed_at\n"
                                        "D-1,eve@example.com,won,70,EUR,2026-03-01T00:00:00Z\n")
    result = import_deals(store, path, currency="EUR", now=NOW)
    assert result.erased == 1 and errors(result)[0].startswith("deals.csv:2: email: erased at the person's request")
    assert rows(store, deal_t) == [] and rows(store, contact_t) == []


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
    path = write(tmp_path, "deals.csv", CSV)
    code, out, err = cli("import", "deals", str(path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "imported deals.csv: 3 deal(s) (3 new, 0 changed), 0 event(s) added (0 stage change(s), 0 won, 0 lost), "
        "revenue 0.00 EUR, 0 bad row(s) skipped",
        "deals without a known contact: 3 (kept, no events), e.g. D-1 (ann@example.com), D-2 (bob@example.com), "
        "D-3 (ann@example.com); import those contacts and the next `import deals` or `crm pull` attaches them"]
    contacts = write(tmp_path, "contacts.csv", "email\nann@example.com\nbob@example.com\n")
    assert cli("import", "contacts", str(contacts))[0] == 0
    code, out, _ = cli("import", "deals", str(path))
    assert code == 0 and "5 event(s) added (0 stage change(s), 1 won, 1 lost), revenue 1,200.50 EUR" in out


def test_the_command_names_bad_rows_on_stderr_keeps_the_good_ones_and_exits_1(cli, tmp_path):
    path = write(tmp_path, "deals.csv", CSV + "D-4,cat@example.com,won,\"12,50\",EUR,2026-03-01\n"
                                              "D-5,cat@example.com,won,12.5,USD,2026-03-01\n")
    code, out, err = cli("import", "deals", str(path))
    assert code == 1
    assert err.splitlines() == [
        "deals.csv:5: amount: '12,50' has a comma: use a dot as the decimal separator (write 12.50)",
        "deals.csv:6: currency: USD is not the project's currency EUR (policies.yaml `currency`): Nurture "
        "converts no currencies; export the deals in EUR"]
    assert "imported deals.csv: 3 deal(s)" in out and "2 bad row(s) skipped" in out


def test_the_command_answers_usage_errors_without_a_traceback(cli, tmp_path):
    code, _, err = cli("import", "deals", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv: no such file" in err
    code, _, err = cli("import", "deals", str(write(tmp_path, "d.csv", CSV)), "--encoding", "klingon")
    assert code == 2 and "unknown encoding 'klingon'" in err
    (cli.root / "journeys" / "policies.yaml").write_text("currency: euro\n", encoding="utf-8")
    code, out, err = cli("import", "deals", str(write(tmp_path, "d.csv", CSV)))
    assert code == 1 and "policies.yaml has errors" in err and "imported" not in out

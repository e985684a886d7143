"""Specification: an import that keeps people, and consent in bulk (issue 15 item 8).

A column whose name is close to a known one (`time_zone`, `E-Mail`, `first name`) is named once
per file with the column it probably means, and still stored as the attribute it names. A bad
optional field (a phone that is no number, an unknown time zone, locale, country, lifecycle
stage, a score that is no number) is left out with a warning naming line and field, and the
person is kept; a row whose only identifier is bad is still an error. `--consent-at` dates the
file's consents that carry no `consent_<channel>_at` of their own. `consent grant|revoke
--file` records many contacts' consent through the ledger's one writer, naming bad rows and
unknown contacts by line. SQLite only: nothing here differs between the backends."""
from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from nurture import consent_file
from nurture.cli import app
from nurture.cli.invocation import CliError
from nurture.import_columns import CONSENT_COLUMNS, near_miss
from nurture.ingest import import_contacts
from nurture.spec.models import CONSENT_CHANNELS
from nurture.store.db import open_store
from nurture.store.tables import consent_t, contact_t
from tests.conftest import utc, write_project

NOW = utc(2026, 5, 4, 10)


@pytest.fixture
def store(sqlite_template, tmp_path):
    path = tmp_path / "nurture.db"
    shutil.copyfile(sqlite_template, path)
    s = open_store(f"sqlite:///{path}")
    yield s
    s.dispose()


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def people(store) -> dict:
    with store.reading() as conn:
        return {r.email or r.external_id: r for r in conn.execute(select(contact_t))}


def ledger(store) -> list:
    with store.reading() as conn:
        return conn.execute(select(consent_t, contact_t.c.email)
                            .join(contact_t, contact_t.c.id == consent_t.c.contact_id).order_by(consent_t.c.id)).all()


# ---------------------------------------------------------------- near-miss columns


@pytest.mark.parametrize("column, meant", [
    ("time_zone", "timezone"), ("tz", "timezone"), ("language", "locale"), ("lang", "locale"),
    ("firstname", "first_name"), ("first name", "first_name"), ("E-Mail", "email"), ("mail", "email"),
    ("mobile", "phone"), ("phone_number", "phone"), ("consent-email", "consent_email"), ("timezne", "timezone"),
    ("utm_campain", "utm_campaign"), ("plan", None), ("company", None), ("email2", None), ("timezone", None),
])
def test_a_column_close_to_a_known_one_is_a_near_miss(column, meant):
    assert near_miss(column) == meant


def test_a_near_miss_column_is_named_once_per_file_and_still_stored_as_an_attribute(store, tmp_path):
    path = write(tmp_path, "list.csv", "email,time_zone,First Name,plan\n"
                                       "ann@example.com,Europe/Berlin,Ann,pro\nbob@example.com,UTC,Bob,basic\n")
    result = import_contacts(store, path, now=NOW)
    assert result.errors == []
    assert [str(w) for w in result.warnings] == [
        "list.csv:1: column 'time_zone' is stored as an attribute; did you mean 'timezone'?",
        "list.csv:1: column 'First Name' is stored as an attribute; did you mean 'first_name'?",
    ]
    ann = people(store)["ann@example.com"]
    assert ann.timezone is None and ann.attributes == {"time_zone": "Europe/Berlin", "First Name": "Ann", "plan": "pro"}


def test_a_jsonl_near_miss_is_named_at_the_first_line_that_has_it(store, tmp_path):
    path = write(tmp_path, "list.jsonl", json.dumps({"email": "ann@example.com"}) + "\n"
                 + json.dumps({"email": "bob@example.com", "lang": "de"}) + "\n"
                 + json.dumps({"email": "cy@example.com", "lang": "fr"}) + "\n")
    warnings = import_contacts(store, path, now=NOW).warnings
    assert [(w.line, w.field) for w in warnings] == [(2, "lang")]


@pytest.mark.parametrize("channel", CONSENT_CHANNELS)
def test_every_consent_channel_has_its_columns(store, tmp_path, channel):
    assert CONSENT_COLUMNS[f"consent_{channel}"] == channel
    path = write(tmp_path, "list.csv", f"email,consent_{channel},consent_{channel}_at\n"
                                       "ann@example.com,granted,2025-01-02T03:04:05Z\n")
    result = import_contacts(store, path, now=NOW)
    assert (result.errors, result.warnings, result.consents) == ([], [], 1)
    (row,) = ledger(store)
    assert (row.channel, row.recorded_at) == (channel, utc(2025, 1, 2, 3, 4, 5))


# ---------------------------------------------------------------- a bad optional field


def test_a_bad_optional_field_is_left_out_with_a_warning_and_the_person_is_kept(store, tmp_path):
    path = write(tmp_path, "list.csv", "email,phone,timezone,locale,country,score,lifecycle_stage\n"
                                       "ann@example.com,12345,Mars/Olympus,de-DE,DE,7,MQL\n"
                                       "bob@example.com,+4915112345678,UTC,German!,Germany,high,engaged\n")
    result = import_contacts(store, path, now=NOW)
    assert result.errors == [] and (result.created, result.updated) == (2, 0)
    assert [(w.line, w.field) for w in result.warnings] == [
        (2, "phone"), (2, "timezone"), (3, "country"), (3, "score"), (3, "locale"), (3, "lifecycle_stage")]
    assert str(result.warnings[0]).startswith("list.csv:2: phone: '12345' is not a valid phone number")
    assert str(result.warnings[0]).endswith("left out, the contact is imported without it")
    ann, bob = people(store)["ann@example.com"], people(store)["bob@example.com"]
    assert (ann.phone, ann.timezone, ann.locale, ann.lifecycle_stage, ann.score) == (None, None, "de-DE", "mql", 7.0)
    assert (bob.phone, bob.country, bob.locale, bob.score, bob.lifecycle_stage) == ("+4915112345678", None, None, 0.0,
                                                                                     "lead")


def test_a_left_out_field_keeps_the_value_the_contact_already_has(store, tmp_path):
    import_contacts(store, write(tmp_path, "a.csv", "email,timezone\nann@example.com,Europe/Berlin\n"), now=NOW)
    again = import_contacts(store, write(tmp_path, "b.csv", "email,timezone,plan\nann@example.com,Berlin,pro\n"),
                            now=NOW + timedelta(hours=1))
    assert (again.updated, [w.field for w in again.warnings]) == (1, ["timezone"])
    ann = people(store)["ann@example.com"]
    assert (ann.timezone, ann.attributes) == ("Europe/Berlin", {"plan": "pro"})


def test_a_bad_identifier_is_left_out_when_the_row_has_another_and_an_error_when_it_has_none(store, tmp_path):
    path = write(tmp_path, "list.csv", "external_id,email,phone\n"
                                       "u1,not-an-address,\n"
                                       ",also-bad,12345\n"
                                       ",,12345\n")
    result = import_contacts(store, path, now=NOW)
    assert [(w.line, w.field) for w in result.warnings] == [(2, "email")]
    assert [(e.line, e.field) for e in result.errors] == [(3, "email"), (3, "phone"), (4, "phone")]
    assert not any("left out" in e.message for e in result.errors)  # the row is skipped, not imported without it
    assert list(people(store)) == ["u1"]


def test_hostile_values_are_still_errors_of_the_row(store, tmp_path):
    path = write(tmp_path, "list.jsonl", json.dumps({"email": "ann@example.com", "first_name": {"html": "<b>"}}) + "\n"
                 + '{"email": "bob@example.com", "score": NaN, "timezone": "Nowhere"}\n')
    result = import_contacts(store, path, now=NOW)
    assert [(e.line, e.field) for e in result.errors] == [(1, "first_name"), (2, "score"), (2, "timezone")]
    assert result.warnings == [] and people(store) == {}


# ---------------------------------------------------------------- --consent-at


def test_consent_at_dates_the_consents_without_a_time_of_their_own(store, tmp_path):
    path = write(tmp_path, "list.csv", "email,consent_email,consent_email_at,consent_email_source,consent_sms\n"
                                       "ann@example.com,granted,2024-06-01T00:00:00Z,fair,granted\n"
                                       "bob@example.com,granted,,web form,revoked\n")
    result = import_contacts(store, path, now=NOW, consent_at=utc(2025, 1, 15))
    assert result.errors == [] and result.consents == 4
    assert [(r.email, r.channel, r.recorded_at, r.confirmed_at, r.source) for r in ledger(store)] == [
        ("ann@example.com", "email", utc(2024, 6, 1), utc(2024, 6, 1), "import:list.csv (fair)"),
        ("ann@example.com", "sms", utc(2025, 1, 15), utc(2025, 1, 15), "import:list.csv"),
        ("bob@example.com", "email", utc(2025, 1, 15), utc(2025, 1, 15), "import:list.csv (web form)"),
        ("bob@example.com", "sms", utc(2025, 1, 15), None, "import:list.csv"),
    ]
    with pytest.raises(ValueError, match="lies in the future"):
        import_contacts(store, path, now=NOW, consent_at=NOW + timedelta(days=1))


# ---------------------------------------------------------------- the CLI


def cli(root, *args):
    """(exit code, stdout + stderr) of `nurture ARGS` in the project at `root`, as main() ends it."""
    env = {"NURTURE_PROJECT": str(root), "NURTURE_DATABASE_URL": f"sqlite:///{root / 'cli.db'}",
           "NURTURE_DATA_DIR": str(root / ".nurture"), "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    if isinstance(result.exception, CliError):
        return result.exception.code, result.output + str(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.fixture
def shop(tmp_path, sqlite_template):
    root = write_project(tmp_path / "shop", {})
    shutil.copyfile(sqlite_template, root / "cli.db")
    return root


def test_the_cli_shows_the_first_warnings_counts_the_rest_and_exits_0(shop, tmp_path):
    rows = "".join(f"p{i}@example.com,x,Nowhere/{i}\n" for i in range(25))
    code, out = cli(shop, "import", "contacts", str(write(tmp_path, "list.csv", "email,tz,timezone\n" + rows)))
    assert code == 0, out
    assert "warning: list.csv:1: column 'tz' is stored as an attribute; did you mean 'timezone'?" in out
    assert "warning: list.csv:2: timezone: 'Nowhere/0' is not an IANA time zone" in out
    assert out.count("warning: ") == 20 and "… and 6 more warning(s)" in out
    assert "25 created, 0 updated, 0 consent record(s), 0 bad row(s) skipped, 26 warning(s)" in out

    code, out = cli(shop, "import", "contacts", str(write(tmp_path, "tz.csv", "email,timezone\nx@example.com,UTC\n")),
                    "--consent-at", "2999-01-01T00:00:00Z")
    assert code == 2 and "--consent-at: 2999-01-01T00:00:00+00:00 lies in the future" in out


def test_bulk_consent_records_every_known_contact_through_the_ledger(shop, tmp_path, monkeypatch):
    monkeypatch.setattr(consent_file, "BATCH_SIZE", 2)  # several transactions
    cli(shop, "import", "contacts", str(write(tmp_path, "people.csv", "email,phone,external_id\n"
                                                                     "ann@example.com,,\n,+4915112345678,\n,,crm-7\n")))
    grants = write(tmp_path, "grants.csv", "email,phone,external_id,channel,at,source,purpose\n"
                                           "ANN@example.com,,,,2025-03-01T09:00:00Z,fair stand,\n"
                                           ",+49 151 12345678,,sms,,,\n"
                                           ",,crm-7,whatsapp,,,transactional\n"
                                           "nobody@example.com,,,,,,\n"
                                           "not-an-address,,,,,,\n"
                                           "ann@example.com,,,fax,yesterday,,\n")
    code, out = cli(shop, "consent", "grant", "--file", str(grants), "--channel", "email", "--at", "2025-04-01")
    assert code == 1, out
    assert "grants.csv: 3 consent(s) granted, 1 unknown contact(s) skipped (not created), 2 bad row(s) skipped" in out
    assert "warning: grants.csv:5: email: no contact with email nobody@example.com (not created)" in out
    assert "grants.csv:6: email: " in out and "grants.csv:7: channel: 'fax' is not one of" in out
    assert "grants.csv:7: at: 'yesterday' is not an ISO 8601 timestamp" in out
    store = open_store(f"sqlite:///{shop / 'cli.db'}")
    rows = [(r.channel, r.purpose, r.status, r.source, r.recorded_at, r.confirmed_at, r.policy_version)
            for r in ledger(store)]
    march, april = utc(2025, 3, 1, 9), utc(2025, 4, 1)
    assert rows == [
        ("email", "marketing", "granted", "cli:grants.csv (fair stand)", march, march, "test-1"),
        ("sms", "marketing", "granted", "cli:grants.csv", april, april, "test-1"),
        ("whatsapp", "transactional", "granted", "cli:grants.csv", april, april, "test-1"),
    ]
    assert "nobody@example.com" not in people(store)

    stops = write(tmp_path, "stop.jsonl", '{"email": "ann@example.com"}\n')
    code, out = cli(shop, "consent", "revoke", "--file", str(stops), "--channel", "email")
    assert code == 0 and "1 consent(s) revoked" in out
    assert (ledger(store)[-1].status, ledger(store)[-1].confirmed_at) == ("revoked", None)
    store.dispose()


def test_bulk_consent_refuses_a_second_way_of_naming_the_contact_and_a_future_time(shop, tmp_path):
    path = write(tmp_path, "grants.csv", "email\nann@example.com\n")
    code, out = cli(shop, "consent", "grant", "ann@example.com", "--file", str(path), "--channel", "email")
    assert code == 2 and "--file names its contacts itself: leave out EMAIL" in out
    code, out = cli(shop, "consent", "grant", "--phone", "+4915112345678", "--file", str(path))
    assert code == 2 and "leave out --phone" in out
    code, out = cli(shop, "consent", "revoke", "--file", str(path), "--channel", "email", "--at", "2999-01-01")
    assert code == 2 and "--at: 2999-01-01T00:00:00+00:00 lies in the future" in out
    code, out = cli(shop, "consent", "grant", "--file", str(path))
    assert code == 1 and "grants.csv:2: channel: required: a channel column or --channel" in out
    code, out = cli(shop, "consent", "grant", "ann@example.com")
    assert code == 2 and "--channel is required" in out


def test_a_single_consent_with_a_future_at_is_refused_like_the_file_one(shop, tmp_path):
    """`consent revoke EMAIL --at 2062-…` (a typo for 2026) hid the revocation until 2062; a grant
    dated half a year ahead outranked every revocation recorded before that date. Both are
    refused like `--file --at <future>`, and nothing is recorded."""
    cli(shop, "import", "contacts", str(write(tmp_path, "p.csv", "email,phone\nann@example.com,+4915112345678\n")))
    code, out = cli(shop, "consent", "grant", "ann@example.com", "--channel", "sms", "--at", "2026-01-01T00:00:00Z")
    assert code == 0, out
    for verb in ("revoke", "grant"):
        code, out = cli(shop, "consent", verb, "ann@example.com", "--channel", "sms", "--at", "2062-12-07T10:00:00Z")
        assert code == 2 and "--at: 2062-12-07T10:00:00+00:00 lies in the future" in out, (verb, out)
        code, out = cli(shop, "consent", verb, "--phone", "+4915112345678", "--channel", "sms", "--at", "2999-01-01")
        assert code == 2 and "--at: 2999-01-01T00:00:00+00:00 lies in the future" in out, (verb, out)
    store = open_store(f"sqlite:///{shop / 'cli.db'}")
    assert [(r.status, r.recorded_at) for r in ledger(store)] == [("granted", utc(2026, 1, 1))]
    store.dispose()


def test_an_import_without_consent_times_does_not_undo_a_revocation_and_says_so(shop, tmp_path):
    """Ann's SMS and ads consents are revoked; a week later the same stale CRM export (`granted`,
    no time) is imported again to update names. It re-granted both, silently."""
    code, out = cli(shop, "import", "contacts", str(write(tmp_path, "crm.csv",
                    "email,phone,consent_sms,consent_ads\nann@example.com,+4915112345678,granted,granted\n")),
                    "--consent-at", "2026-01-01T00:00:00Z")
    assert code == 0, out
    for channel in ("sms", "ads"):
        assert cli(shop, "consent", "revoke", "ann@example.com", "--channel", channel)[0] == 0
    code, out = cli(shop, "import", "contacts", str(write(tmp_path, "crm2.csv",
                    "email,first_name,consent_sms,consent_ads\nann@example.com,Ann,granted,granted\n")))
    assert code == 0, out
    assert "warning: crm2.csv:2: consent_sms: revoked in Nurture on " in out
    assert "warning: crm2.csv:2: consent_ads: revoked in Nurture on " in out
    assert "0 created, 1 updated, 0 consent record(s) (2 not re-granted: revoked in Nurture), 0 bad row(s) skipped, " \
           "2 warning(s)" in out
    store = open_store(f"sqlite:///{shop / 'cli.db'}")
    assert [(r.channel, r.status) for r in ledger(store)][-2:] == [("sms", "revoked"), ("ads", "revoked")]
    assert people(store)["ann@example.com"].first_name == "Ann"
    store.dispose()


def test_a_bulk_revoke_dated_before_a_later_grant_is_reported_not_claimed(shop, tmp_path):
    """Contacts imported `granted` (no time: the import's), then the old tool's opt-outs with the
    dates they happened: the CLI said "2 consent(s) revoked" while both stayed granted."""
    cli(shop, "import", "contacts", str(write(tmp_path, "list.csv",
        "email,consent_email\nann@example.com,granted\nbo@example.com,granted\ncy@example.com,granted\n")))
    code, out = cli(shop, "consent", "revoke", "--file", str(write(tmp_path, "stops.csv",
                    "email,at\nann@example.com,2025-06-01T00:00:00Z\nbo@example.com,2025-07-01T00:00:00Z\n"
                    "cy@example.com,\n")), "--channel", "email")
    assert code == 0, out
    assert "stops.csv: 1 consent(s) revoked, 2 recorded but not current (a later row on record outranks it)" in out
    assert "warning: stops.csv:2: at: revoked at 2025-06-01T00:00:00+00:00, but a later granted (" in out
    assert "stays the current state of email/marketing (give a later `at`, or none: now)" in out
    assert "warning: stops.csv:3: at: revoked at 2025-07-01T00:00:00+00:00" in out and "stops.csv:4" not in out

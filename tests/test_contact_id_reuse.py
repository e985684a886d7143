"""Contact ids only grow: a contact's id outlives the contact — in the links of the mail it was
sent (signed preference and unsubscribe links, valid for a year), in the audience and CRM-list
memberships left for the next sync to remove, in conversion deliveries, erasure records and
merges (no foreign key) — so once the newest contacts were deleted (the purge of never-confirmed
sign-ups) a new contact must not get one of their ids. SQLite handed out max(id) + 1 until
migration 0029 made `contact` an AUTOINCREMENT table; PostgreSQL's sequence never goes back."""
from __future__ import annotations

import email
import email.policy
import json
import re
import sqlite3
from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.double_opt_in import hygiene, request_opt_in
from nurture.privacy.export import export_contact
from nurture.privacy.retention import purge
from nurture.send.system_mail import SYSTEM_JOURNEY
from nurture.store.tables import consent_t, contact_t, suppression_t
from tests.conftest import utc
from tests.engine_fixtures import add_contact, set_consent, subscriber
from tests.test_event_id_reuse import _upgrade
from tests.test_privacy_erase import hubspot  # noqa: F401  (fixture)
from tests.test_retention import HUBSPOT_LIST, _policies
from tests.test_web_site import SYSTEM_TEMPLATES, running_site

NOW = utc(2026, 6, 1, 12)
DAY = timedelta(days=1)


def _ledger(store, contact_id):
    with store.reading() as conn:
        return conn.execute(select(consent_t.c.channel, consent_t.c.status, consent_t.c.source)
                            .where(consent_t.c.contact_id == contact_id).order_by(consent_t.c.id)).all()


def test_a_purged_sign_ups_preference_link_shows_and_changes_nothing_of_the_next_sign_up(make_runtime, store):
    """Maybe signed up and never confirmed; the confirmation mail carried her preference link.
    Retention purged her after 30 days and Nina signed up. On SQLite Nina got Maybe's id, and
    Maybe's old link opened Nina's preference center (her address on the page) and one click
    on it unsubscribed Nina."""
    rt = make_runtime({}, templates=SYSTEM_TEMPLATES)
    with running_site(rt, NOW - 60 * DAY) as site:
        maybe = add_contact(store, "maybe@example.com", at=NOW - 60 * DAY)
        with store.engine.begin() as conn:
            assert request_opt_in(conn, rt.project.policies, maybe, source="test:signup", now=NOW - 60 * DAY) == "pending"
        assert hygiene(rt, NOW - 60 * DAY + timedelta(minutes=5))["confirm:sent"] == 1
        [eml] = (rt.data_dir / "outbox" / "email" / SYSTEM_JOURNEY).glob("*.eml")
        html = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default).get_body(("html",)).get_content()
        link = re.search(r'href="([^"]*/u/[^"]+)"', html).group(1)
        assert "maybe@example.com" in site.http.get(link).text  # her own page, while she is a contact

        assert purge(store, _policies(pending_contacts="30d"), NOW, rt.data_dir).counts["pending_contacts:contacts"] == 1
        nina = add_contact(store, "nina@example.com", at=NOW, first_name="Nina")
        set_consent(store, nina, status="pending", at=NOW, confirmed=False)

        site.at(NOW + timedelta(hours=1))
        page = site.http.get(link)
        assert page.status_code == 400 and "We have no record of this address any more" in page.text
        assert "nina@example.com" not in page.text
        clicked = site.http.post(link, content="List-Unsubscribe=One-Click",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert clicked.status_code == 400
    assert nina != maybe
    assert _ledger(store, nina) == [("email", "pending", "test")]
    with store.reading() as conn:
        assert conn.execute(select(suppression_t.c.contact_id)).all() == []


def test_a_purged_sign_ups_crm_membership_is_not_the_next_sign_ups(make_runtime, store, hubspot):
    """Maybe (never confirmed) was synced into a HubSpot list; the purge leaves her acknowledged
    membership for the next sync to remove. On SQLite Nina, the next sign-up, got Maybe's id:
    Nina's export listed Maybe's membership (Maybe's address and HubSpot record id), and the
    sync took Maybe's row for Nina's — one in-place update of "Nina's" record, where Maybe
    leaves the list and Nina joins it."""
    from nurture.registry import IntegrationContext
    from nurture.segments.sync import sync_segments
    from tests.test_privacy_erase import TOKEN
    rt = make_runtime({}, segments=HUBSPOT_LIST)
    context = IntegrationContext(rt.project.root, rt.data_dir, {**rt.env, "NURTURE_HUBSPOT_TOKEN": TOKEN,
                                                                 "NURTURE_HUBSPOT_BASE_URL": hubspot.url})
    subscriber(store, "fan@example.com", attributes={"fan": True})  # (a contact before Maybe's id)
    maybe = add_contact(store, "maybe@example.com", at=NOW - 60 * DAY, attributes={"fan": True})
    set_consent(store, maybe, status="pending", at=NOW - 60 * DAY, confirmed=False)
    [report] = sync_segments(store, rt.project, NOW - 59 * DAY, context)
    assert report.added == 2

    assert purge(store, _policies(pending_contacts="30d"), NOW, rt.data_dir).counts["pending_contacts:contacts"] == 1
    nina = add_contact(store, "nina@example.com", at=NOW, attributes={"fan": True})
    set_consent(store, nina, status="pending", at=NOW, confirmed=False)
    doc = export_contact(store, rt.project, "nina@example.com", data_dir=rt.data_dir, now=NOW)
    assert doc["audiences"] == [] and "maybe@example.com" not in json.dumps(doc)

    [report] = sync_segments(store, rt.project, NOW, context)
    assert (report.status, report.removed, report.added, report.updated) == ("ok", 1, 1, 0)
    assert hubspot.members("45") == {"fan@example.com", "nina@example.com"}


def test_an_import_after_the_newest_contacts_were_deleted_gives_each_row_its_own_contact(store, tmp_path):
    """On SQLite a slice's new contacts are then not max(id) + 1 onwards: each consent still
    goes to its own row's contact."""
    from nurture.ingest import import_contacts
    add_contact(store, "ann@example.com")
    newest = add_contact(store, "bob@example.com")
    with store.engine.begin() as conn:
        conn.execute(contact_t.delete().where(contact_t.c.id == newest))
    path = tmp_path / "list.csv"
    path.write_text("email,consent_email\ncat@example.com,granted\ndan@example.com,revoked\n")
    result = import_contacts(store, path, now=NOW)
    assert result.errors == []
    with store.reading() as conn:
        held = conn.execute(select(contact_t.c.id, contact_t.c.email, consent_t.c.status)
                            .join(consent_t, consent_t.c.contact_id == contact_t.c.id).order_by(contact_t.c.id)).all()
    assert [(email, status) for _, email, status in held] == [("cat@example.com", "granted"),
                                                               ("dan@example.com", "revoked")]
    assert all(cid > newest for cid, _, _ in held)


# ---------------------------------------------------------------- migration 0029


def _contact_ddl(path) -> str:
    raw = sqlite3.connect(path)
    try:
        return raw.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'contact'").fetchone()[0]
    finally:
        raw.close()


def test_a_new_sqlite_database_hands_out_no_contact_id_twice(tmp_path):
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateTable

    from nurture.store.db import open_store
    assert "PRIMARY KEY AUTOINCREMENT" in str(CreateTable(contact_t).compile(dialect=sqlite.dialect()))  # the model
    store = open_store(f"sqlite:///{tmp_path / 'new.db'}")  # the migrations
    try:
        assert "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT" in _contact_ddl(tmp_path / "new.db")
        add_contact(store, "ann@example.com")
        newest = add_contact(store, "bob@example.com")
        with store.engine.begin() as conn:
            conn.execute(contact_t.delete().where(contact_t.c.id == newest))
        assert add_contact(store, "cat@example.com") == newest + 1
    finally:
        store.dispose()


# Every column that holds a contact id: a row written before the upgrade that names contact 40,
# deleted since (a purge) — or never kept (a reference left dangling by a database written with
# SQLite's foreign keys off). Those without a foreign key outlive the contact by design.
_AT = "'2026-05-31 12:00:00.000000'"
HELD = {
    "segment_membership": "INSERT INTO segment_membership (segment, target, contact_id, contact_version, fingerprint, "
                          f"payload, acked_at) VALUES ('fans', 'hubspot:45', 40, {_AT}, 'x', '{{}}', {_AT})",
    "conversion_delivery": "INSERT INTO conversion_delivery (target, destination, conversion, event_pk, contact_id, "
                           f"status, attempts, created_at, updated_at) VALUES ('csv:buys', 'csv', 'purchase', 7, 40, "
                           f"'sent', 1, {_AT}, {_AT})",
    "erasure": "INSERT INTO erasure (contact_id, actor, reason, outcome, removed, pending, requested_at) "
               f"VALUES (40, 'cli:x', 'request', 'erased', '{{}}', '[]', {_AT})",
    "merge_from": "INSERT INTO contact_merge (from_contact_id, into_contact_id, reason, merged_at, counts) "
                  f"VALUES (40, :ann, 'identify', {_AT}, '{{}}')",
    "merge_into": "INSERT INTO contact_merge (from_contact_id, into_contact_id, reason, merged_at, counts) "
                  f"VALUES (:ann, 40, 'identify', {_AT}, '{{}}')",
    "event": "INSERT INTO event (event_id, contact_id, name, properties, occurred_at, received_at) "
             f"VALUES ('e1', 40, 'signup', '{{}}', {_AT}, {_AT})",
    "consent": "INSERT INTO consent (contact_id, channel, purpose, status, source, policy_version, recorded_at) "
               f"VALUES (40, 'email', 'marketing', 'pending', 'test', '', {_AT})",
    "suppression": f"INSERT INTO suppression (contact_id, reason, created_at) VALUES (40, 'manual', {_AT})",
    "enrollment": "INSERT INTO enrollment (contact_id, journey, version, step_id, status, holdout, entered_at, "
                  f"revenue, defer_count, state) VALUES (40, 'pro', 'v1', 'wait', 'active', 0, {_AT}, 0, 0, '{{}}')",
    "message": "INSERT INTO message (contact_id, journey, step_id, attempt_key, channel, purpose, template, status, "
               f"due_at, attempts, created_at) VALUES (40, 'double_opt_in', 'confirm', 'consent:1', 'email', "
               f"'transactional', 'system/confirm', 'sent', {_AT}, 1, {_AT})",
    "handover": "INSERT INTO handover (contact_id, journey, step_id, stage, score, note, destination, status, "
                f"attempts, sla_due_at, created_at) VALUES (40, 'pro', 'handover', 'mql', 50, '', 'file', "
                f"'delivered', 1, {_AT}, {_AT})",
    "deal": "INSERT INTO deal (crm, deal_id, contact_id, stage, outcome, modified_at, created_at, updated_at) "
            f"VALUES ('hubspot', 'd1', 40, 'won', 'won', {_AT}, {_AT}, {_AT})",
    "contact_touch": f"INSERT INTO contact_touch (contact_id, touch, source, occurred_at) VALUES (40, 'first', 'g', {_AT})",
    "contact_identity": "INSERT INTO contact_identity (contact_id, kind, value, first_seen_at) "
                        f"VALUES (40, 'anonymous_id', 'a1', {_AT})",
}


def test_every_column_holding_a_contact_id_is_listed():
    """A column added later that holds contact ids gets a migration and list of its own; this
    one is the schema 0029 runs on."""
    from nurture.store.sqlite_rebuild import HELD_CONTACT_IDS
    columns = {(t.name, c.name) for t in contact_t.metadata.sorted_tables for c in t.columns
               if c.name.endswith("contact_id")}
    listed = {(m.group(2), m.group(1)) for sql in HELD_CONTACT_IDS
              for m in [re.fullmatch(r"SELECT max\((\w+)\) FROM (\w+)", sql)]}
    assert listed == columns and {t for t, _ in columns} == {re.match(r"INSERT INTO (\w+)", s).group(1)
                                                              for s in HELD.values()}


def _database_at_0028(path) -> tuple[int, int]:
    """A SQLite database at 0028 (contact ids handed out again) with two contacts; their ids."""
    from sqlalchemy import create_engine

    from nurture.store.db import open_store
    engine = create_engine(f"sqlite:///{path}")  # (SQLite's foreign keys off, as migrate runs 0019)
    _upgrade(engine, "0028")
    engine.dispose()
    store = open_store(f"sqlite:///{path}", auto_migrate=False)  # (the schema at 0028)
    try:
        return add_contact(store, "ann@example.com"), add_contact(store, "bob@example.com")
    finally:
        store.dispose()


@pytest.mark.parametrize("held", sorted(HELD))
def test_a_contact_id_another_table_holds_is_not_handed_out_again_after_the_upgrade(tmp_path, held):
    from nurture.store.db import open_store
    path = tmp_path / "old.db"
    ann, _ = _database_at_0028(path)
    raw = sqlite3.connect(path)  # (SQLite's foreign keys off: a reference may dangle)
    raw.execute(HELD[held], {"ann": ann})
    raw.commit()
    raw.close()
    store = open_store(f"sqlite:///{path}")  # migrates to the head
    try:
        assert add_contact(store, "new@example.com") == 41
    finally:
        store.dispose()


def test_migration_0029_rebuilds_contact_with_its_rows_indexes_and_references_above_a_purged_contact(tmp_path):
    """The newest contact purged before the upgrade, its membership left for the next sync:
    after the upgrade the next contact's id is above it, and every row, index and foreign key
    is as it was."""
    from nurture.store.db import open_store
    path = tmp_path / "old.db"
    ann, bob = _database_at_0028(path)
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA foreign_keys=ON")
    raw.execute("INSERT INTO consent (contact_id, channel, purpose, status, source, policy_version, recorded_at) "
                f"VALUES (?, 'email', 'marketing', 'granted', 'test', '', {_AT})", (ann,))
    raw.execute(HELD["segment_membership"].replace("40", str(bob)))
    raw.execute("DELETE FROM contact WHERE id = ?", (bob,))  # the purge, before the upgrade
    raw.commit()
    indexes = raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'contact' "
                          "ORDER BY name").fetchall()
    rows = raw.execute("SELECT * FROM contact").fetchall()
    raw.close()
    assert len(indexes) == 3

    store = open_store(f"sqlite:///{path}")
    try:
        assert "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT" in _contact_ddl(path)
        raw = sqlite3.connect(path)
        assert raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'contact' "
                           "ORDER BY name").fetchall() == indexes
        assert raw.execute("SELECT * FROM contact").fetchall() == rows
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE sql LIKE '%__before_0029%'").fetchone() == (0,)
        assert "REFERENCES contact (id)" in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'consent'").fetchone()[0]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        raw.close()
        new = add_contact(store, "new@example.com")
        assert new == bob + 1
        with store.engine.begin() as conn:
            conn.execute(contact_t.delete().where(contact_t.c.id == new))
        assert add_contact(store, "newer@example.com") == new + 1
    finally:
        store.dispose()


def test_migration_0029_goes_down_again_with_the_rows_and_references(tmp_path):

    from nurture.store.db import open_store
    from tests.test_event_id_reuse import _downgrade
    path = tmp_path / "db.db"
    store = open_store(f"sqlite:///{path}")
    ann = add_contact(store, "ann@example.com")
    set_consent(store, ann)
    store.dispose()
    _downgrade(f"sqlite:///{path}", "0028")  # (as an author's alembic run: foreign keys off)
    assert "AUTOINCREMENT" not in _contact_ddl(path) and "PRIMARY KEY (id)" in _contact_ddl(path)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT id, email FROM contact").fetchall() == [(ann, "ann@example.com")]
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    raw.close()

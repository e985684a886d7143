"""Event ids only grow: a journey trigger reads new events past its cursor (`event.id >
last_event_pk`), so an id handed out again after the newest events were deleted (retention,
a never-confirmed contact's removal) would be behind every cursor and never start a journey.
SQLite hands out max(rowid) + 1 unless the table is AUTOINCREMENT (migration 0019);
PostgreSQL's sequence never goes back. Message ids too (0020): a message's id names it
outside the database."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.privacy.retention import purge
from nurture.runtime import run_tick
from nurture.store.tables import enrollment_t
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, subscriber
from tests.test_retention import _policies

NOW = utc(2026, 6, 1, 12)
DAY = timedelta(days=1)
PRO = journey_yaml("pro", """
- id: wait
  wait: 1d
""", trigger="{event: signup, where: {property: {plan: {in: [pro]}}}}")


def test_an_event_tracked_after_the_newest_events_were_purged_still_starts_its_journey(make_runtime, store):
    rt = make_runtime({"pro": PRO})
    ann, bob, cat = (subscriber(store, f"{n}@example.com") for n in ("ann", "bob", "cat"))
    add_event(store, ann, "signup", NOW - DAY, {"plan": "pro"})
    old = add_event(store, bob, "signup", NOW - 400 * DAY, {"plan": "free"})  # backfilled: newest id, old time
    run_tick(rt, "pro", NOW - DAY)  # ann enters; the trigger's cursor passes bob's free signup
    assert purge(store, _policies(events="90d"), NOW, rt.data_dir).counts["events:events"] == 1
    new = add_event(store, cat, "signup", NOW, {"plan": "pro"})
    run_tick(rt, "pro", NOW + timedelta(minutes=1))
    with store.reading() as conn:
        entered = {r.contact_id for r in conn.execute(select(enrollment_t.c.contact_id))}
    assert entered == {ann, cat}
    assert new > old


def test_a_message_after_the_newest_messages_were_purged_gets_an_id_never_used(make_runtime, store):
    """A message's id names it outside the database — its Message-ID, its .eml file, the SMTP
    hand-over journal's lines — so the id of a purged message is never handed out again
    (SQLite: migration 0020). Here retention removes the whole message log of a quiet shop."""
    from nurture.store.tables import message_t
    rt = make_runtime({"hello": journey_yaml("hello", "- id: mail\n  send: {channel: email, template: hello, subject: Hi}")})
    ann, cat = subscriber(store, "ann@example.com"), subscriber(store, "cat@example.com")
    add_event(store, ann, "signup", NOW - 100 * DAY)
    run_tick(rt, "hello", NOW - 100 * DAY + timedelta(minutes=1))
    run_tick(rt, "hello", NOW - 99 * DAY)  # the journey is over for ann
    with store.reading() as conn:
        (old,) = conn.execute(select(message_t.c.id, message_t.c.status)).all()
    assert old.status == "sent"
    assert purge(store, _policies(messages="90d"), NOW, rt.data_dir).counts["messages:messages"] == 1
    add_event(store, cat, "signup", NOW)
    run_tick(rt, "hello", NOW + timedelta(minutes=1))
    with store.reading() as conn:
        (new,) = conn.execute(select(message_t.c.id, message_t.c.contact_id)).all()
    assert new.contact_id == cat and new.id > old.id


def _config():
    from alembic.config import Config

    from nurture.store.db import MIGRATIONS
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(engine, revision):
    from alembic import command
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _downgrade(url: str, revision: str) -> None:
    """Back to `revision`, as an author's alembic run does it: a plain engine, SQLite's foreign keys off."""
    from alembic import command
    from sqlalchemy import create_engine
    plain = create_engine(url)
    cfg = _config()
    with plain.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    plain.dispose()


def test_migrations_0019_and_0020_rebuild_a_sqlite_database_with_its_rows_ids_indexes_and_references(tmp_path):
    import sqlite3

    from nurture.store.db import make_engine, open_store
    from tests.engine_fixtures import add_contact
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    _upgrade(engine, "0018")
    engine.dispose()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA foreign_keys=ON")
    before = {"indexes": raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name").fetchall()}
    raw.close()
    store = open_store(f"sqlite:///{path}", auto_migrate=False)  # (the schema at 0018)
    ann = add_contact(store, "ann@example.com")
    first = add_event(store, ann, "signup", NOW - DAY, {"plan": "pro"})
    top = add_event(store, ann, "page_view", NOW - DAY)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO enrollment (contact_id, journey, version, step_id, status, holdout, "
                             "entered_at, revenue, defer_count, state) VALUES (?, 'pro', 'v1', 'wait', 'active', 0, "
                             "'2026-05-31 12:00:00.000000', 0, 0, '{}')", (ann,))
        enrollment = conn.exec_driver_sql("SELECT max(id) FROM enrollment").scalar()
        conn.exec_driver_sql("INSERT INTO message (enrollment_id, contact_id, journey, step_id, attempt_key, channel, "
                             "purpose, template, status, due_at, attempts, created_at) VALUES (?, ?, 'pro', 'mail', "
                             "'send', 'email', 'marketing', 'hello', 'sent', '2026-05-31 12:00:00.000000', 1, "
                             "'2026-05-31 12:00:00.000000')", (enrollment, ann))
        message = conn.exec_driver_sql("SELECT max(id) FROM message").scalar()
        conn.exec_driver_sql("INSERT INTO journeycursor (journey, last_event_pk, updated_at) "
                             "VALUES ('pro', ?, '2026-05-31 12:00:00.000000')", (top,))  # a trigger read past it
        conn.exec_driver_sql("DELETE FROM event WHERE id = ?", (top,))  # the newest row gone before the upgrade
    store.dispose()

    store = open_store(f"sqlite:///{path}")  # migrates to the head
    try:
        raw = sqlite3.connect(path)
        tables = dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
        for table in ("event", "enrollment", "consent", "contact_merge", "message"):  # (0019, 0020)
            assert "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT" in tables[table], tables[table]
        assert not [name for name, sql in tables.items() if "__before_00" in (sql or "")]
        assert "REFERENCES enrollment (id)" in tables["message"]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        kept = {name for name, _ in before["indexes"]}  # (later migrations add indexes of their own)
        assert [i for i in raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")
                if i[0] in kept] == before["indexes"]
        assert raw.execute("SELECT id, name FROM event").fetchall() == [(first, "signup")]
        assert dict(raw.execute("SELECT name, seq FROM sqlite_sequence").fetchall())["enrollment"] == enrollment
        assert raw.execute("SELECT id, enrollment_id, status FROM message").fetchall() == [(message, enrollment, "sent")]
        assert dict(raw.execute("SELECT name, seq FROM sqlite_sequence").fetchall())["message"] == message
        raw.close()
        newest = add_event(store, ann, "signup", NOW)
        assert newest == top + 1  # above the cursor, not the deleted id again
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM event WHERE id = ?", (newest,))
        assert add_event(store, ann, "signup", NOW) == newest + 1  # never handed out again
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for the store's work
    finally:
        store.dispose()


def test_a_reference_left_dangling_before_the_upgrade_does_not_stop_it(tmp_path):
    """An old database may hold an orphan (written while SQLite's foreign keys were off): the
    upgrade checks that it leaves no new one, not that there is none."""
    import sqlite3

    from nurture.store.db import make_engine, open_store
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    _upgrade(engine, "0018")
    engine.dispose()
    raw = sqlite3.connect(path)  # (foreign keys off: SQLite's default)
    raw.execute("INSERT INTO event (event_id, contact_id, name, properties, occurred_at, received_at) "
                "VALUES ('orphan', 999, 'signup', '{}', '2026-05-31 12:00:00.000000', '2026-05-31 12:00:00.000000')")
    raw.commit()
    raw.close()
    store = open_store(f"sqlite:///{path}")
    try:
        raw = sqlite3.connect(path)
        assert "AUTOINCREMENT" in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'event'").fetchone()[0]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == [("event", 1, "contact", 0)]
        raw.close()
    finally:
        store.dispose()


def test_an_upgrade_that_would_leave_a_reference_dangling_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    import sqlite3

    from alembic import command

    from nurture.store.db import Store, UpgradeRefused, make_engine, migrate
    from tests.engine_fixtures import add_contact
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    _upgrade(engine, "0018")
    ann = add_contact(Store(engine), "ann@example.com")
    add_event(Store(engine), ann, "signup", NOW)
    real_upgrade = command.upgrade

    def careless_upgrade(cfg, revision):  # a migration that deletes a row others point at
        real_upgrade(cfg, revision)
        cfg.attributes["connection"].exec_driver_sql("DELETE FROM contact")
    monkeypatch.setattr(command, "upgrade", careless_upgrade)
    try:
        try:
            migrate(engine)
        except UpgradeRefused as exc:
            assert "nothing was changed" in str(exc) and "'event'" in str(exc)
        else:
            raise AssertionError("the upgrade was not refused")
    finally:
        engine.dispose()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchone() == ("0018",)
    assert raw.execute("SELECT count(*) FROM contact").fetchone() == (1,)
    assert "AUTOINCREMENT" not in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'event'").fetchone()[0]
    raw.close()


def test_migrations_0019_and_0020_go_down_again_with_the_rows_and_references(tmp_path):
    import sqlite3


    from nurture.store.db import open_store
    from tests.engine_fixtures import add_contact
    path = tmp_path / "db.db"
    store = open_store(f"sqlite:///{path}")
    ann = add_contact(store, "ann@example.com")
    event = add_event(store, ann, "signup", NOW)
    store.dispose()
    _downgrade(f"sqlite:///{path}", "0018")
    raw = sqlite3.connect(path)
    tables = dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    assert not any("AUTOINCREMENT" in tables[t] for t in ("event", "enrollment", "consent", "contact_merge", "message"))
    assert "PRIMARY KEY (id)" in tables["event"] and "REFERENCES enrollment (id)" in tables["message"]
    assert raw.execute("SELECT id FROM event").fetchall() == [(event,)]
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    raw.close()


def test_migration_0019_refuses_to_run_with_foreign_keys_on(tmp_path):
    from alembic import command

    from nurture.store.db import make_engine
    engine = make_engine(f"sqlite:///{tmp_path / 'db.db'}")  # Nurture's engine: foreign keys on
    _upgrade(engine, "0018")
    cfg = _config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "0019")
            except RuntimeError as exc:
                assert "foreign keys off" in str(exc)
            else:
                raise AssertionError("0019 ran with foreign keys on")
    finally:
        engine.dispose()


# Every place the schema holds an id of an AUTOINCREMENT table, most without a foreign key:
# the table whose id it is, and a row written before the upgrade that names id 40 there — the
# id of a row deleted since (a purge), or never kept (a reference left dangling by a database
# written with SQLite's foreign keys off).
_AT = "'2026-05-31 12:00:00.000000'"
HELD = {
    "journey_cursor": ("event", f"INSERT INTO journeycursor (journey, last_event_pk, updated_at) VALUES ('pro', 40, {_AT})"),
    "pending_trigger": ("event", "INSERT INTO journeypendingtrigger (journey, event_pk, occurred_at) "
                                 f"VALUES ('pro', 40, {_AT})"),
    "enrollment_trigger": ("event", "INSERT INTO enrollment (contact_id, journey, version, step_id, status, holdout, "
                                    "entered_at, revenue, defer_count, state, trigger_event_pk) VALUES (:ann, 'pro', "
                                    f"'v1', 'wait', 'active', 0, {_AT}, 0, 0, '{{}}', 40)"),
    "lead_source_touch": ("event", "INSERT INTO contact_touch (contact_id, touch, source, event_pk, occurred_at) "
                                   f"VALUES (:ann, 'first', 'google', 40, {_AT})"),
    "delivered_conversion": ("event", "INSERT INTO conversion_delivery (target, destination, conversion, event_pk, "
                                      "contact_id, status, attempts, created_at, updated_at) VALUES ('csv:buys', "
                                      f"'csv', 'purchase', 40, :ann, 'sent', 1, {_AT}, {_AT})"),
    "message_enrollment": ("enrollment", "INSERT INTO message (enrollment_id, contact_id, journey, step_id, "
                                         "attempt_key, channel, purpose, template, status, due_at, attempts, "
                                         "created_at) VALUES (40, :ann, 'pro', 'mail', 'send', 'email', 'marketing', "
                                         f"'hello', 'sent', {_AT}, 1, {_AT})"),
    "handover_enrollment": ("enrollment", "INSERT INTO handover (contact_id, enrollment_id, journey, step_id, stage, "
                                          "score, note, destination, status, attempts, sla_due_at, created_at) "
                                          f"VALUES (:ann, 40, 'pro', 'handover', 'mql', 50, '', 'file', 'delivered', "
                                          f"1, {_AT}, {_AT})"),
    "opt_in_request": ("consent", "INSERT INTO message (enrollment_id, contact_id, journey, step_id, attempt_key, "
                                  "channel, purpose, template, status, due_at, attempts, created_at) VALUES (NULL, "
                                  ":ann, 'double_opt_in', 'confirm', 'consent:40', 'email', 'transactional', "
                                  f"'system/confirm', 'sent', {_AT}, 1, {_AT})"),
}


def _new_row(store, table: str, contact: int) -> int:
    """The id a new row of `table` gets."""
    from nurture.store.tables import consent_t
    if table == "event":
        return add_event(store, contact, "purchase", NOW)
    with store.engine.begin() as conn:
        if table == "enrollment":
            stmt = enrollment_t.insert().values(contact_id=contact, journey="pro", version="v2", step_id="wait",
                                                status="active", holdout=False, entered_at=NOW, revenue=0.0,
                                                defer_count=0, state={})
        else:
            stmt = consent_t.insert().values(contact_id=contact, channel="email", purpose="marketing",
                                             status="pending", source="test", recorded_at=NOW)
        return conn.execute(stmt).inserted_primary_key[0]


def _database_at_0018_holding(path, held: str) -> int:
    """A SQLite database at 0018 (before ids only grew) holding one reference to id 40 of a
    row that is gone; its contact's id."""
    import sqlite3

    from nurture.store.db import make_engine, open_store
    from tests.engine_fixtures import add_contact
    engine = make_engine(f"sqlite:///{path}")
    _upgrade(engine, "0018")
    engine.dispose()
    store = open_store(f"sqlite:///{path}", auto_migrate=False)  # (the schema at 0018)
    ann = add_contact(store, "ann@example.com")
    store.dispose()
    raw = sqlite3.connect(path)  # (SQLite's foreign keys off: a reference may dangle)
    raw.execute(HELD[held][1], {"ann": ann})
    raw.commit()
    raw.close()
    return ann


@pytest.mark.parametrize("held", sorted(HELD))
@pytest.mark.parametrize("upgraded", ["from_0018", "through_the_old_0019"])
def test_an_id_another_table_holds_is_not_handed_out_again_after_the_upgrade(tmp_path, held, upgraded):
    """Upgrading from 0018 (0019 starts each sequence above every held id) or a database whose
    0019 ran before that fix, starting only the event sequence above the journey cursors
    (0028 raises it): either way the next row's id is above the one held."""
    from sqlalchemy import create_engine

    from nurture.store.db import open_store
    path = tmp_path / "old.db"
    ann = _database_at_0018_holding(path, held)
    if upgraded == "through_the_old_0019":
        plain = create_engine(f"sqlite:///{path}")  # (SQLite's foreign keys off, as migrate runs 0019)
        _upgrade(plain, "0027")
        with plain.begin() as conn:  # what the 0019 before the fix left: the newest id copied (none here),
            conn.exec_driver_sql(  # for events the furthest journey cursor
                "UPDATE sqlite_sequence SET seq = CASE name WHEN 'event' THEN "
                "(SELECT coalesce(max(last_event_pk), 0) FROM journeycursor) ELSE 0 END")
        plain.dispose()
    store = open_store(f"sqlite:///{path}")  # migrates to the head
    try:
        assert _new_row(store, HELD[held][0], ann) == 41
    finally:
        store.dispose()


def test_a_purchase_after_the_upgrade_reaches_the_ad_platform_though_a_purged_purchase_held_its_id(tmp_path):
    """The old code sent two purchases as offline conversions, then retention purged every
    event. Purchases start no journey, so no cursor passed them: only their delivered
    conversions (no foreign key: a purge must not be blocked) still hold their ids. Bob's first
    purchase after the upgrade gets a new id, and is sent."""
    import textwrap

    from nurture.consent_ledger import record_consent
    from nurture.conversions.send import send_conversions
    from nurture.registry import IntegrationContext
    from nurture.spec.project import load_project
    from nurture.store.db import make_engine, open_store
    from nurture.store.tables import conversion_delivery_t, event_t
    from tests.conftest import write_project
    from tests.engine_fixtures import add_contact
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    _upgrade(engine, "0018")
    engine.dispose()
    old = open_store(f"sqlite:///{path}", auto_migrate=False)  # (the schema at 0018)
    alice, bob = add_contact(old, "alice@example.com"), add_contact(old, "bob@example.com")
    signup = add_event(old, alice, "signup", NOW - 90 * DAY)
    bought = [add_event(old, alice, "purchase", NOW - 90 * DAY, {"value": v}) for v in (10, 20)]
    with old.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO journeycursor (journey, last_event_pk, updated_at) "
                             f"VALUES ('welcome', ?, {_AT})", (signup,))
        for pk in bought:
            conn.execute(conversion_delivery_t.insert().values(
                target="csv:buys", destination="csv", conversion="purchase", event_pk=pk, contact_id=alice,
                status="sent", attempts=1, created_at=NOW - 90 * DAY, updated_at=NOW - 90 * DAY,
                sent_at=NOW - 90 * DAY))
        conn.execute(event_t.delete())  # retention, before the upgrade
    old.dispose()

    store = open_store(f"sqlite:///{path}")  # the upgrade
    try:
        root = write_project(tmp_path / "p", {})
        (root / "journeys" / "conversions.yaml").write_text(textwrap.dedent("""
            conversions:
              - {event: purchase, since: 2026-01-01, destinations: [{destination: csv, name: buys}]}
            """))  # (`since`: this test's clock lies months before the real one)
        with store.engine.begin() as conn:
            record_consent(conn, bob, "ads", "granted", source="test", at=NOW - 2 * DAY)
        new = add_event(store, bob, "purchase", NOW - DAY, {"value": 99})
        ran = send_conversions(store, load_project(root), NOW, IntegrationContext(root, tmp_path / ".nurture", {}))
        assert [(r.target, r.due, r.sent) for r in ran] == [("csv:buys", 1, 1)]
        with store.reading() as conn:
            held = conn.execute(select(conversion_delivery_t.c.contact_id, conversion_delivery_t.c.status)
                                .where(conversion_delivery_t.c.event_pk == new)).all()
        assert new > max(bought) and held == [(bob, "sent")]
    finally:
        store.dispose()


def test_raising_the_floor_never_lowers_it(tmp_path):
    """A sequence already above every held id (the newest rows deleted after the upgrade) stays
    where it is when 0028 runs: it only ever raises a floor."""

    from nurture.store.db import open_store
    from nurture.store.tables import conversion_delivery_t
    from tests.engine_fixtures import add_contact
    url = f"sqlite:///{tmp_path / 'db.db'}"
    store = open_store(url)
    ann = add_contact(store, "ann@example.com")
    held = add_event(store, ann, "purchase", NOW)
    top = max(add_event(store, ann, "page_view", NOW) for _ in range(3))
    with store.engine.begin() as conn:
        conn.execute(conversion_delivery_t.insert().values(
            target="csv:buys", destination="csv", conversion="purchase", event_pk=held, contact_id=ann,
            status="sent", attempts=1, created_at=NOW, updated_at=NOW))
        conn.exec_driver_sql("DELETE FROM event")
    store.dispose()
    _downgrade(url, "0027")
    store = open_store(url)  # 0028 again
    try:
        assert add_event(store, ann, "purchase", NOW) == top + 1
    finally:
        store.dispose()

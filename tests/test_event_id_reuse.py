"""Event ids only grow: a journey trigger reads new events past its cursor (`event.id >
last_event_pk`), so an id handed out again after the newest events were deleted (retention,
a never-confirmed contact's removal) would be behind every cursor and never start a journey.
SQLite hands out max(rowid) + 1 unless the table is AUTOINCREMENT (migration 0019);
PostgreSQL's sequence never goes back. Message ids too (0020): a message's id names it
outside the database."""
from __future__ import annotations

from datetime import timedelta

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

    from alembic import command
    from sqlalchemy import create_engine

    from nurture.store.db import open_store
    from tests.engine_fixtures import add_contact
    path = tmp_path / "db.db"
    store = open_store(f"sqlite:///{path}")
    ann = add_contact(store, "ann@example.com")
    event = add_event(store, ann, "signup", NOW)
    store.dispose()
    plain = create_engine(f"sqlite:///{path}")  # (as an author's alembic run: SQLite's foreign keys off)
    cfg = _config()
    with plain.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0018")
    plain.dispose()
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

"""Specification: the store. Alembic migrations create the schema on an empty database, are
applied automatically on first use, are idempotent on re-open, and upgrade an older database
without losing its rows — on SQLite and PostgreSQL. SQLite runs in WAL mode with a busy
timeout and takes the write lock at the start of every transaction."""
from __future__ import annotations

import sqlite3

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from nurture.store.db import MIGRATIONS, make_engine, migrate, open_store, table_names
from nurture.store.tables import contact_t
from tests.engine_fixtures import EPOCH, add_contact

CORE_TABLES = {"contact", "event", "consent", "suppression", "enrollment", "message", "journeyversion",
               "journeycursor", "alembic_version"}


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine) -> str:
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.rollback()
    return revision


def test_first_use_creates_the_whole_schema_on_an_empty_database(empty_db_url):
    store = open_store(empty_db_url)
    try:
        assert CORE_TABLES <= set(table_names(store))
        assert current_revision(store.engine) == head_revision()
        columns = {c["name"] for c in inspect(store.engine).get_columns("message")}
        assert {"enrollment_id", "step_id", "attempt_key", "status", "reason", "due_at", "sent_at",
                "provider_id", "counted_at"} <= columns
        uniques = inspect(store.engine).get_unique_constraints("message")
        assert {"enrollment_id", "step_id", "attempt_key"} in [set(u["column_names"]) for u in uniques]
    finally:
        store.dispose()


def test_migrating_again_is_a_no_op_that_keeps_the_data(store):
    cid = add_contact(store, "ann@example.com")
    before = set(table_names(store))
    migrate(store.engine)  # a second process opening the same database
    migrate(store.engine)
    assert set(table_names(store)) == before
    with store.engine.connect() as conn:
        assert conn.execute(select(contact_t.c.email).where(contact_t.c.id == cid)).scalar_one() == "ann@example.com"
        conn.rollback()


def test_a_database_at_the_newest_version_is_opened_without_running_alembic(store, monkeypatch):
    """Every process checks the version itself (the newest revision read once per process):
    Alembic's upgrade, which loads every migration script and its environment, runs only when
    there is something to migrate."""
    from alembic import command

    from nurture.store import db
    assert db.head_revision() == head_revision() == current_revision(store.engine)

    def upgrade(*args, **kwargs):
        raise AssertionError("Alembic ran on a database already at the newest version")
    monkeypatch.setattr(command, "upgrade", upgrade)
    migrate(store.engine)
    with store.engine.begin() as conn:  # one version behind: then it does run
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    with pytest.raises(AssertionError, match="Alembic ran"):
        migrate(store.engine)


def test_an_older_database_is_upgraded_without_losing_rows(empty_db_url):
    db_url = empty_db_url
    from alembic import command
    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(contact_t.insert().values(email="old@example.com", lifecycle_stage="lead", score=3.0,
                                               attributes={"plan": "pro"}, created_at=EPOCH, updated_at=EPOCH))
    assert current_revision(engine) == "0001"
    engine.dispose()
    store = open_store(db_url)
    try:
        assert current_revision(store.engine) == head_revision()
        with store.engine.connect() as conn:
            row = conn.execute(select(contact_t).where(contact_t.c.email == "old@example.com")).one()
            conn.rollback()
        assert (row.score, row.attributes, row.created_at) == (3.0, {"plan": "pro"}, EPOCH)
    finally:
        store.dispose()


def test_datetimes_come_back_timezone_aware_utc(store):
    cid = add_contact(store, "ann@example.com")
    with store.engine.connect() as conn:
        created = conn.execute(select(contact_t.c.created_at).where(contact_t.c.id == cid)).scalar_one()
        conn.rollback()
    assert created == EPOCH and created.utcoffset().total_seconds() == 0


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout_and_reads_through_a_memory_map(sqlite_url):
    store = open_store(sqlite_url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 1 << 29  # (its pages count in RSS)
            conn.rollback()
    finally:
        store.dispose()


def test_a_sqlite_transaction_takes_the_write_lock_when_it_begins(sqlite_url, tmp_path):
    """BEGIN IMMEDIATE: two ticks serialize at their start instead of failing half-way."""
    store = open_store(sqlite_url)
    other = sqlite3.connect(tmp_path / "nurture.db", timeout=0, isolation_level=None)
    try:
        with store.engine.begin() as conn:
            conn.execute(select(contact_t.c.id)).all()  # only a read so far
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.dispose()


def test_a_read_only_sqlite_transaction_leaves_the_write_lock_to_writers(sqlite_url, tmp_path):
    store = open_store(sqlite_url)
    other = sqlite3.connect(tmp_path / "nurture.db", timeout=0, isolation_level=None)
    try:
        with store.reading() as conn:
            conn.execute(select(contact_t.c.id)).all()
            other.execute("BEGIN IMMEDIATE")  # not blocked by the reader
            other.execute("ROLLBACK")
    finally:
        other.close()
        store.dispose()


def test_a_sqlite_read_is_one_snapshot_and_ends_with_its_block(sqlite_url, tmp_path):
    """Store.reading begins its transaction on the DBAPI connection: within the block every
    statement (a repeated one on the lean path, a first one on SQLAlchemy's) reads the snapshot
    the block began with; after it, the connection goes back to the pool with no transaction
    open, and the next read sees what was committed in between."""
    store, other = open_store(sqlite_url), open_store(sqlite_url)
    writer = sqlite3.connect(tmp_path / "nurture.db", timeout=0, isolation_level=None)
    count = select(func.count()).select_from(contact_t)
    try:
        add_contact(store, "ann@example.com")
        for _ in range(2):
            with store.reading() as conn:
                conn.execute(count).scalar()  # (seen once: the second block runs it lean)
        with store.reading() as conn:
            assert conn.execute(count).scalar() == 1
            add_contact(other, "bob@example.com")  # another process's commit, as it were
            assert conn.execute(count).scalar() == 1  # the lean path: still the block's snapshot
            assert conn.execute(select(func.count(contact_t.c.email))).scalar() == 1  # SQLAlchemy's path too
            raw = conn.connection.dbapi_connection
        assert not raw.in_transaction
        with store.reading() as conn:
            assert conn.execute(count).scalar() == 2
        with pytest.raises(ZeroDivisionError):
            with store.reading() as conn:
                conn.execute(count).scalar()
                1 / 0
        assert not raw.in_transaction  # an error inside the block ends its transaction too
        writer.execute("BEGIN IMMEDIATE")  # and nothing holds a lock
        writer.execute("ROLLBACK")
        with store.engine.begin() as conn:  # a write after reads: BEGIN IMMEDIATE as always
            conn.execute(contact_t.update().values(first_name="Ann"))
        with store.reading() as conn:
            assert conn.execute(select(func.count()).where(contact_t.c.first_name == "Ann")).scalar() == 2
    finally:
        writer.close()
        other.dispose()
        store.dispose()


def test_a_held_sqlite_connection_serves_every_block_of_its_thread_and_goes_back_to_the_pool(sqlite_url):
    """Store.held: reads and writes of the holding thread use one connection, one block at a
    time; each block still ends its transaction (a failed write rolls back, a read's snapshot
    ends), a block nested in another gets a connection of its own, another thread never gets
    the held one, and the end of the hold returns it to the pool."""
    import threading
    store, other = open_store(sqlite_url), open_store(sqlite_url)
    count = select(func.count()).select_from(contact_t)
    pool = store.engine.pool
    try:
        with store.held():
            with store.reading() as conn:
                held = conn
                raw = conn.connection.dbapi_connection
                assert conn.execute(count).scalar() == 0
            assert not raw.in_transaction
            add_contact(store, "ann@example.com")  # engine.begin(): the same connection
            with store.engine.begin() as conn:
                assert conn is held
                with store.reading() as inner:  # nested: another connection, the committed snapshot
                    assert inner is not held and inner.execute(count).scalar() == 1
                conn.execute(contact_t.update().values(first_name="Ann"))
            with pytest.raises(ZeroDivisionError):
                with store.engine.begin() as conn:
                    conn.execute(contact_t.update().values(first_name="Nobody"))
                    1 / 0
            assert not raw.in_transaction
            with store.engine.connect() as conn:  # a transaction never committed: closing ends it
                assert conn is held
                conn.execute(contact_t.update().values(first_name="Uncommitted"))
            assert not raw.in_transaction
            with store.reading() as conn:
                assert conn is held and conn.execute(count).scalar() == 1
                add_contact(other, "bob@example.com")  # another process's commit, as it were
                assert conn.execute(count).scalar() == 1  # the block's snapshot
                assert conn.execute(select(contact_t.c.first_name).where(contact_t.c.email == "ann@example.com")
                                    ).scalar() == "Ann"  # the failed write rolled back
            with store.reading() as conn:
                assert conn.execute(count).scalar() == 2  # a new block, a new snapshot
            seen = []
            thread = threading.Thread(target=lambda: seen.append(store.engine.connect()))
            thread.start()
            thread.join()
            assert seen[0] is not held
            seen[0].close()
            assert pool.checkedout() == 1  # the held one
        assert pool.checkedout() == 0 and held.closed
        with store.reading() as conn:
            assert conn is not held and conn.execute(count).scalar() == 2
    finally:
        other.dispose()
        store.dispose()


def test_open_store_creates_the_folder_of_a_sqlite_file(tmp_path):
    path = tmp_path / "project" / ".nurture" / "nurture.db"
    store = open_store(f"sqlite:///{path}")
    try:
        assert path.is_file() and not store.is_postgres
    finally:
        store.dispose()


def test_postgres_urls_as_people_paste_them_use_psycopg(pg_server_url):
    from tests.conftest import _fresh_pg_database
    pasted = _fresh_pg_database(pg_server_url).replace("postgresql+psycopg://", "postgres://")
    store = open_store(pasted)
    try:
        assert store.is_postgres and store.engine.dialect.driver == "psycopg"
    finally:
        store.dispose()


def test_json_reads_back_the_same_on_a_postgresql_database_not_in_utf8(pg_server_url):
    """The store talks UTF-8 with the server whatever the database's own encoding: JSON
    columns arrive as the client encoding's bytes and are read as UTF-8 (store.db.read_json)."""
    import uuid

    from tests.conftest import _admin, _database_url, _drop_pg_database
    name = "t_latin1_" + uuid.uuid4().hex[:8]
    admin = _admin(pg_server_url)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"))
    admin.dispose()
    url = _database_url(pg_server_url, name)
    store = open_store(url)
    try:
        cid = add_contact(store, "jurgen@example.com", first_name="Jürgen", attributes={"city": "Köln", "n": 1})
        with store.engine.connect() as conn:
            row = conn.execute(select(contact_t.c.first_name, contact_t.c.attributes).where(contact_t.c.id == cid)).one()
            conn.rollback()
        assert (row.first_name, row.attributes) == ("Jürgen", {"city": "Köln", "n": 1})
    finally:
        store.dispose()
        _drop_pg_database(pg_server_url, url)


def test_revenue_recorded_outside_0_to_1e12_becomes_0_on_upgrade(empty_db_url):
    """0022: "Infinity" and "-5" as a goal value were recorded as they were (NaN too, on
    PostgreSQL); a conversion's revenue is now an amount from 0 to 1e12, and so is the past."""
    from nurture.store.tables import enrollment_t
    engine = _engine_at(empty_db_url, "0021")
    values = [12.5, float("inf"), float("-inf"), -5.0, 1e13, 1e12, 0.0]
    if engine.dialect.name == "postgresql":
        values.append(float("nan"))  # SQLite has no NaN: it stores NULL (and the column refuses it)
    with engine.begin() as conn:
        cid = conn.execute(contact_t.insert().values(email="old@example.com", lifecycle_stage="customer", score=0.0,
                                                     attributes={}, created_at=EPOCH, updated_at=EPOCH)
                           ).inserted_primary_key[0]
        for i, value in enumerate(values):
            conn.execute(enrollment_t.insert().values(contact_id=cid, journey=f"j{i}", version="v", status="converted",
                                                      holdout=False, entered_at=EPOCH, converted_at=EPOCH,
                                                      revenue=value))
    engine.dispose()
    store = open_store(empty_db_url)
    try:
        with store.engine.connect() as conn:
            got = [r for (r,) in conn.execute(select(enrollment_t.c.revenue).order_by(enrollment_t.c.id))]
            conn.rollback()
    finally:
        store.dispose()
    assert got == [12.5, 0.0, 0.0, 0.0, 0.0, 1e12, 0.0] + [0.0] * (len(values) - 7)


def test_a_deal_waiting_for_its_contact_keeps_its_address_on_upgrade_to_0027(empty_db_url):
    """Before 0027 a deal waiting for its contact kept its first address in `deal.email` only;
    the upgrade copies it to `deal_address`, where attaching looks for it."""
    from nurture.store.tables import deal_address_t, deal_t
    engine = _engine_at(empty_db_url, "0026")
    with engine.begin() as conn:
        for deal_id, contact, email in (("W", None, "zoe@example.com"), ("E", None, None)):
            conn.execute(deal_t.insert().values(crm="hubspot", deal_id=deal_id, contact_id=contact, email=email,
                                                stage="closedwon", outcome="won", modified_at=EPOCH,
                                                created_at=EPOCH, updated_at=EPOCH))
    engine.dispose()
    store = open_store(empty_db_url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(deal_address_t)).all()
            conn.rollback()
        assert [tuple(r) for r in rows] == [("hubspot", "W", 0, "zoe@example.com")]
    finally:
        store.dispose()


def _engine_at(url: str, revision: str):
    """A database at an older migration, as that version's code left it."""
    from alembic import command
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":  # as nurture.store.db.migrate: 0019 rebuilds tables
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        with conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    return engine


@pytest.mark.parametrize("old_revision", ["0026", "0018"])
def test_processes_opening_an_older_postgresql_database_at_once_take_turns(pg_server_url, monkeypatch, old_revision):
    """After an upgrade the services restart at once and each first open migrates: the second
    read the old revision while the first migrated, ran the same migration again and failed
    (DuplicateTable; Alembic's "expected to match one row"), shown as an internal error."""
    import threading
    import time

    import alembic.command

    from nurture.store import db
    from tests.conftest import _drop_pg_database, _fresh_pg_database
    url = _fresh_pg_database(pg_server_url)
    try:
        _engine_at(url, old_revision).dispose()
        real_upgrade = alembic.command.upgrade
        first_migrated, release_first = threading.Event(), threading.Event()

        def upgrade(cfg, revision, **kw):  # the first process is still inside its migration
            real_upgrade(cfg, revision, **kw)
            if threading.current_thread().name == "first":
                first_migrated.set()
                release_first.wait(10)

        monkeypatch.setattr(alembic.command, "upgrade", upgrade)
        errors: dict[str, str] = {}

        def opener(name: str) -> None:
            engine = db.make_engine(url)  # (migrate() itself: open_store's memo stands for one process)
            try:
                db.migrate(engine)
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            finally:
                engine.dispose()

        first = threading.Thread(target=opener, args=("first",), name="first")
        second = threading.Thread(target=opener, args=("second",), name="second")
        first.start()
        assert first_migrated.wait(30)
        second.start()
        time.sleep(1.0)  # the second reads the old revision and waits for the first's lock
        release_first.set()
        first.join(30)
        second.join(30)
        assert errors == {}
        engine = make_engine(url)
        assert current_revision(engine) == head_revision()
        engine.dispose()
    finally:
        _drop_pg_database(pg_server_url, url)


def test_a_database_a_newer_nurture_upgraded_is_refused_by_name_and_left_alone(empty_db_url):
    """A worker not yet upgraded opening the database the new `nurture web` migrated: Alembic's
    "Can't locate revision" came through as "internal error … a bug in Nurture" (exit 70)."""
    from nurture.store.db import DatabaseUnavailable, SchemaTooNew
    store = open_store(empty_db_url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.dispose()
    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(SchemaTooNew, match=r"schema is at revision 9999, which a newer Nurture wrote; this "
                                               r"Nurture knows revisions up to \d{4}: upgrade Nurture here"):
            migrate(engine)
        assert issubclass(SchemaTooNew, DatabaseUnavailable) and current_revision(engine) == "9999"
    finally:
        engine.dispose()

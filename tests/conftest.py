"""Shared fixtures: real databases (a SQLite file; a PostgreSQL started by pgserver), project
folders written from strings, and a runtime over them."""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from nurture.runtime import Runtime
from nurture.spec.project import load_project
from nurture.store.db import Store, open_store

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _one_certificate_bundle() -> str:
    """A CA file holding one certificate of certifi's bundle, for PREFECT_API_SSL_CERT_FILE.

    Every Prefect client (each flow run and task run makes some, in the tests' processes and in
    the `nurture`, worker and flow-run processes they start) builds a verifying TLS context from
    certifi's 120 certificates: ~25 ms of CPU each, ~4 s of the `prefect` group's 41. The Prefect
    servers of the tests speak plain HTTP on 127.0.0.1, so no context is ever used; with one
    certificate it costs ~0.5 ms, and verification stays on (TLS to anything else would fail,
    not pass unchecked)."""
    import atexit
    import re

    import certifi
    pem = Path(certifi.where()).read_text()
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", pem, re.S)
    fd, path = tempfile.mkstemp(prefix="nurture-tests-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as fh:
        fh.write(first.group(0))
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    return path


if "PREFECT_API_SSL_CERT_FILE" not in os.environ:
    os.environ["PREFECT_API_SSL_CERT_FILE"] = _one_certificate_bundle()


# A test process holds ~600,000 objects once Prefect, SQLAlchemy and the tests' modules are in,
# and with CPython's default thresholds (700, 10, 10) it scanned all of them ~26 times in a
# third of a worker's tests: 8.5 s of 68. With a young generation of 10,000 the collector's
# time halves (six modules, 299 tests: 10.1 → 5.3 s; the whole suite, runs one after the other:
# 428 → 397 s of CPU, 250 → 235 s). Cyclic garbage is still collected, only less often.
gc.set_threshold(10_000, 20, 10)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def polled(fetch, done, timeout: float = 30, every: float = 0.2):
    """`fetch()` again until `done(value)` or the timeout; the last value either way, for the
    caller's assertions to say what is missing. For what a server records a moment later: a
    flow's task runs reach Prefect as events, written by its recorder after the flow returned."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """An empty SQLite database at the current schema, made once per test process: copy it
    (`shutil.copyfile`) where a test needs a database — migrating a new file per test costs more
    than most tests."""
    from nurture.store.db import open_store
    path = tmp_path_factory.mktemp("template") / "nurture.db"
    open_store(f"sqlite:///{path}").dispose()  # closing the last connection checkpoints the WAL
    return path


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A real PostgreSQL for this test session (per xdist worker), started from pip's pgserver."""
    pgserver = pytest.importorskip("pgserver")
    # pgserver's socket path must stay short (unix socket limit ~100 bytes)
    data = Path(tempfile.mkdtemp(prefix="nurpg"))
    server = pgserver.get_server(str(data), cleanup_mode="stop")
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/tmp/...
    yield uri
    try:
        server.cleanup()
    finally:  # its files (WAL segments of every CREATE DATABASE) are deleted after the session
        subprocess.Popen(["rm", "-rf", str(data)], start_new_session=True)


def _admin(server_url: str):
    return create_engine(server_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")


def _database_url(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}".replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(scope="session")
def pg_template(pg_server_url) -> str:
    """A database migrated once per session; each test's database is a copy of it."""
    name = "nurture_template"
    admin = _admin(pg_server_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    open_store(_database_url(pg_server_url, name)).dispose()
    return name


def _fresh_pg_database(server_url: str, template: Optional[str] = None) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = _admin(server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return _database_url(server_url, name)


def _drop_pg_database(server_url: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]
    admin = _admin(server_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# What a test could change in a database besides its rows: relations, columns and their
# defaults, constraints, functions, triggers, extensions, database settings, the migration.
_SCHEMA_FINGERPRINT = """
SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
  SELECT c.relkind::text || ':' || n.nspname || '.' || c.relname AS x
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_t'
  UNION ALL
  SELECT 'a:' || a.attrelid::regclass::text || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
         || ':' || a.attnotnull || ':' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'con:' || conrelid::regclass::text || '.' || conname || ':' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'p:' || oid::regprocedure::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT 't:' || tgrelid::regclass::text || '.' || tgname FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'e:' || extname FROM pg_extension
  UNION ALL SELECT 'set:' || array_to_string(setconfig, ',') FROM pg_db_role_setting
   WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL SELECT 'v:' || version_num FROM alembic_version
) parts
"""


class _PgDatabases:
    """Copies of the migrated template, handed to one test at a time and emptied after it:
    CREATE DATABASE costs ~160 ms here and DROP ~20 ms, emptying a used copy ~20 ms. A copy
    goes back only as good as new to the engine — its other connections ended, its schema the
    template's (else it is dropped), every row deleted and every sequence a test drew from
    restarted."""

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url, self.template = server_url, template
        self.admin = _admin(server_url)
        self.free: list[str] = []
        probe = create_engine(_database_url(server_url, template), poolclass=NullPool)
        with probe.connect() as conn:
            self.fingerprint = conn.exec_driver_sql(_SCHEMA_FINGERPRINT).scalar_one()
            tables = conn.exec_driver_sql("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"
                                          " AND tablename <> 'alembic_version'").scalars().all()
        probe.dispose()
        self.any_rows = " UNION ALL ".join(f"(SELECT '{t}' FROM {t} LIMIT 1)" for t in tables)

    def take(self) -> str:
        return self.free.pop() if self.free else _fresh_pg_database(self.server_url, self.template)

    def give_back(self, url: str) -> None:
        name = url.split("?")[0].rsplit("/", 1)[1]
        try:
            with self.admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
            engine = create_engine(url, poolclass=NullPool)
            try:
                with engine.begin() as conn:
                    if conn.exec_driver_sql(_SCHEMA_FINGERPRINT).scalar_one() != self.fingerprint:
                        raise LookupError("the test changed the schema")
                    # (DELETE, not TRUNCATE … CASCADE: ~30 ms for the tables referencing
                    # `contact`; foreign keys unchecked while the rows go, every table empties)
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                    for table in conn.exec_driver_sql(self.any_rows).scalars().all():
                        conn.exec_driver_sql(f"DELETE FROM {table}")
                    for (sequence,) in conn.exec_driver_sql(
                            "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) FROM pg_sequences"
                            " WHERE last_value IS NOT NULL"):
                        conn.exec_driver_sql(f"ALTER SEQUENCE {sequence} RESTART")
            finally:
                engine.dispose()
        except Exception:  # anything odd: a new copy for the next test instead
            _drop_pg_database(self.server_url, url)
            return
        self.free.append(url)


@pytest.fixture(scope="session")
def pg_databases(pg_server_url, pg_template) -> Iterator[_PgDatabases]:
    pool = _PgDatabases(pg_server_url, pg_template)
    yield pool
    pool.admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh database URL with the current schema: a SQLite file copied from the migrated
    template, and a database on the real PostgreSQL copied from a migrated template (from the
    pool of `pg_databases`: emptied after the test, or dropped if the test changed its schema)."""
    if request.param == "sqlite":
        path = tmp_path / "nurture.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    databases = request.getfixturevalue("pg_databases")
    url = databases.take()
    yield url
    databases.give_back(url)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """A truly empty database (no schema yet): for the migration tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("pg_server_url")
    url = _fresh_pg_database(server)
    yield url
    _drop_pg_database(server, url)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'nurture.db'}"


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.dispose()


# ---------------------------------------------------------------- projects

DEFAULT_POLICIES = """
version: "test-1"
timezone: UTC
quiet_hours:
  email: {start: "21:00", end: "08:00"}
  sms: {start: "20:00", end: "09:00"}
frequency_caps:
  - {channel: email, max: 3, per: 7d}
  - {channel: sms, max: 2, per: 7d}
  - {channel: any, max: 4, per: 7d}
on_cap: defer
double_opt_in: {email: [marketing]}
"""

DEFAULT_TEMPLATES = {
    "email/hello.html": "<html><head><style>p {color: #333}</style></head><body><p>Hello {{ contact.first_name }}</p>"
                        "<a href=\"{{ links.unsubscribe }}\">unsubscribe</a></body></html>",
    "email/other.html": "<p>Other for {{ contact.email }}</p>",
    "sms/hello.txt": "Hi {{ contact.first_name }}! Reply STOP to opt out.",
    # DEFAULT_POLICIES asks for e-mail double opt-in: its confirmation and reminder (validate warns without them)
    "email/system/confirm.html": '<p>Please confirm: <a href="{{ links.confirm }}">yes</a></p>',
    "email/system/confirm_reminder.html": '<p>Still interested? <a href="{{ links.confirm }}">yes</a></p>',
    # and SMS double opt-in's one text, for the tests whose policies ask for it
    "sms/system/confirm.txt": "{{ sender ~ ': ' if sender }}Reply START to confirm. Msg&data rates may apply. "
                              "Reply STOP to opt out.",
}


def write_project(root: Path, journeys: dict[str, str], *, policies: Optional[str] = DEFAULT_POLICIES,
                  templates: Optional[dict[str, str]] = None, segments: Optional[str] = None) -> Path:
    (root / "journeys").mkdir(parents=True, exist_ok=True)
    (root / "templates").mkdir(parents=True, exist_ok=True)
    for name, body in journeys.items():
        (root / "journeys" / f"{name}.yaml").write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    if policies is not None:
        (root / "journeys" / "policies.yaml").write_text(textwrap.dedent(policies).lstrip(), encoding="utf-8")
    if segments is not None:
        (root / "journeys" / "segments.yaml").write_text(textwrap.dedent(segments).lstrip(), encoding="utf-8")
    for rel, body in {**DEFAULT_TEMPLATES, **(templates or {})}.items():
        path = root / "templates" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return root


@pytest.fixture
def make_project(tmp_path):
    def _make(journeys: dict[str, str], **kwargs) -> Path:
        return write_project(tmp_path / "project", journeys, **kwargs)
    return _make


@pytest.fixture
def make_runtime(make_project, store):
    """make_runtime({'name': yaml}) -> Runtime over a fresh project and the parametrized store."""
    runtimes: list[Runtime] = []

    def _make(journeys: dict[str, str], **kwargs) -> Runtime:
        root = make_project(journeys, **kwargs)
        spec = load_project(root)
        assert not spec.errors, [str(e) for e in spec.errors]
        # A real secret and public URL, as production has: test channels stand in for real
        # ones, which refuse to send without them.
        env = {"NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_FROM_EMAIL": "shop@example.com",
               "NURTURE_SECRET_KEY": "test-secret-0123456789abcdef", "NURTURE_PUBLIC_URL": "http://localhost:8000"}
        rt = Runtime(store, spec, env=env)
        runtimes.append(rt)
        return rt

    yield _make
    for rt in runtimes:
        rt.close()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (Prefect's test harness) for every test of this worker that
    runs flows in-process: starting one costs about ten seconds, so it is paid once. Those tests
    are the `prefect` xdist group, so they share one worker; a test that reads runs, task runs or
    artifacts filters them by the flow runs it made itself."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def prefect_api(prefect_harness, monkeypatch):
    """The `nurture` subprocesses of this test talk to the worker's Prefect test server instead
    of each starting Prefect's temporary server (~12 s of CPU per command). The test belongs to
    the `prefect` xdist group, whose worker holds that server."""
    from prefect.settings import PREFECT_API_URL
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())

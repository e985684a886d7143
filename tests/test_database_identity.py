"""Which database a run uses, and never a new empty one by accident (issue 11, item 6).

The identity ({project, database}, password redacted), the refusal to create a database
(`open_store(create=False)`, on SQLite and on the real PostgreSQL), flows called directly still
creating it, a PostgreSQL URL without its driver naming the extra to install, and `nurture serve`
refusing to start without a database. Deployment runs (a real worker, `nurture serve`) are in
test_serve_deployments.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nurture.settings import describe_database
from nurture.store.db import DatabaseMissing, DriverMissing, database_exists, make_engine, open_store
from tests.conftest import write_project

JOURNEY = """
name: welcome_series
trigger: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Welcome"}
"""


@pytest.mark.parametrize("url,shown", [
    ("postgresql://nurture:s3cr%40t@db.example:5432/nurture", "postgresql://nurture:***@db.example:5432/nurture"),
    ("postgres://nurture:hunter2@db/nurture?sslmode=require", "postgres://nurture:***@db/nurture?sslmode=require"),
    ("postgresql://nurture@db/nurture?password=hunter2&sslmode=require",
     "postgresql://nurture@db/nurture?password=***&sslmode=require"),
    ("postgresql+psycopg://postgres:@/postgres?host=/tmp/pg", "postgresql+psycopg://postgres:***@/postgres?host=/tmp/pg"),
    ("sqlite:////srv/shop/.nurture/nurture.db", "sqlite:////srv/shop/.nurture/nurture.db"),
    ("not a url://user:hunter2@host?token=abc", "not a url://user:***@host?token=***"),
    # libpq's sslpassword is the client key's passphrase; sslkey and passfile are paths
    ("postgresql://nurture@db/nurture?sslpassword=KeyPassphrase42&sslkey=/k/client.key&passfile=/k/pgpass",
     "postgresql://nurture@db/nurture?sslpassword=***&sslkey=/k/client.key&passfile=/k/pgpass"),
    # an '@' left unencoded in the password: the user information runs to the last '@'
    ("postgresql://nurture:Tr0ub4dor@Secret99@db/nurture", "postgresql://nurture:***@db/nurture"),
    ("not a url://user:Tr0ub4dor@Secret99@host/x", "not a url://user:***@host/x"),
])
def test_describe_database_shows_where_and_never_the_password(url, shown):
    assert describe_database(url) == shown


def test_run_identity_names_the_project_and_the_database_without_its_password(tmp_path, monkeypatch):
    from flows.runtime import identity_line, run_identity
    monkeypatch.delenv("NURTURE_DATABASE_URL", raising=False)
    monkeypatch.delenv("NURTURE_DATA_DIR", raising=False)
    assert run_identity(str(tmp_path)) == {"project": str(tmp_path.resolve()),
                                           "database": f"sqlite:///{tmp_path.resolve() / '.nurture' / 'nurture.db'}"}
    assert identity_line(str(tmp_path)).endswith("(NURTURE_DATABASE_URL not set: the project's default)")
    monkeypatch.setenv("NURTURE_DATABASE_URL", "postgresql://nurture:hunter2@db/shop")
    assert run_identity(str(tmp_path)) == {"project": str(tmp_path.resolve()),
                                           "database": "postgresql://nurture:***@db/shop"}
    assert "hunter2" not in identity_line(str(tmp_path)) and "not set" not in identity_line(str(tmp_path))


def test_open_store_refuses_to_create_a_database_that_is_not_there_and_upgrades_one_that_is(empty_db_url, tmp_path):
    """SQLite: no file (nothing is created, not even the folder). PostgreSQL: a database
    without Nurture's schema. Once created (a one-shot command may), create=False opens it."""
    if empty_db_url.startswith("sqlite"):
        empty_db_url = f"sqlite:///{tmp_path / 'nested' / 'nurture.db'}"
    assert not database_exists(empty_db_url)
    with pytest.raises(DatabaseMissing) as refused:
        open_store(empty_db_url, create=False)
    assert refused.value.url == empty_db_url
    if empty_db_url.startswith("sqlite"):
        assert str(refused.value) == f"no Nurture database at {tmp_path / 'nested' / 'nurture.db'}"
        assert not (tmp_path / "nested").exists()
    open_store(empty_db_url).dispose()  # create=True: the one-shot commands' way
    assert database_exists(empty_db_url)
    open_store(empty_db_url, create=False).dispose()


def test_an_empty_sqlite_file_is_no_database_either(tmp_path):
    (tmp_path / "nurture.db").touch()
    with pytest.raises(DatabaseMissing):
        open_store(f"sqlite:///{tmp_path / 'nurture.db'}", create=False)


def test_a_database_file_that_is_no_database_is_unavailable_to_a_flow_run_not_a_crash(tmp_path):
    """A flow run's open_store raised sqlite3's DatabaseError, which `nurture run` showed as an
    "internal error … a bug in Nurture" (exit 70): DatabaseUnavailable is what it reports as
    `error: cannot open the database …` (exit 1), as the one-shot verbs do."""
    from flows.runtime import open_run_store
    from nurture.store.db import DatabaseUnavailable
    db = tmp_path / "nurture.db"
    db.write_bytes(b"these are not the bytes of a SQLite database\n" * 100)
    with pytest.raises(DatabaseUnavailable, match="file is not a database") as refused:
        open_run_store(f"sqlite:///{db}")
    assert str(db) in str(refused.value)


def test_flows_called_directly_create_the_database_as_before(tmp_path, monkeypatch):
    """Outside a deployment run (the CLI's `nurture run`, the demo, tests) runtime_for creates
    the project's database on first use; the refusal is for deployment runs only."""
    from flows.runtime import database_creation_allowed, forget_runtimes, in_deployment_run, runtime_for
    root = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    monkeypatch.delenv("NURTURE_DATABASE_URL", raising=False)
    monkeypatch.delenv("NURTURE_DATA_DIR", raising=False)
    assert not in_deployment_run() and database_creation_allowed()
    try:
        rt = runtime_for(str(root))
        assert rt.store.dialect == "sqlite" and (root / ".nurture" / "nurture.db").is_file()
    finally:
        forget_runtimes()


def test_a_postgres_url_without_its_driver_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on an installation without the extra
    with pytest.raises(DriverMissing) as missing:
        make_engine("postgresql://nurture:hunter2@db/shop")
    assert "pip install 'nurture[postgres]'" in str(missing.value)
    assert "hunter2" not in str(missing.value) and "postgresql://nurture:***@db/shop" in str(missing.value)


def nurture(root: Path, *args: str, env: dict[str, str], block_psycopg: bool = False) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    code = ("import sys; sys.modules['psycopg'] = None; " if block_psycopg else "") + "from nurture.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=root,
                          env={**base, "NURTURE_PROJECT": str(root), "COLUMNS": "200", **env})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize("verb", [["import", "contacts", "contacts.csv"], ["run"], ["sync"]],
                         ids=["import", "run", "sync"])
def test_the_cli_names_the_missing_driver_instead_of_an_internal_error(tmp_path, verb):
    root = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    (root / "contacts.csv").write_text("email,first_name\nana@example.com,Ana\n")
    proc = nurture(root, *verb, env={"NURTURE_DATABASE_URL": "postgresql://nurture:hunter2@db.invalid/shop"},
                   block_psycopg=True)
    assert proc.returncode == 1
    assert "pip install 'nurture[postgres]'" in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr and "hunter2" not in proc.stderr


def test_a_password_with_an_unencoded_at_sign_is_refused_before_any_driver_and_never_shown(tmp_path):
    """The driver would take the password's tail for the host and quote it in its error
    ("failed to resolve host 'Secret99@127.0.0.1'"): the URL is refused first, saying how to
    write it, by the one-shot verbs and by `nurture run` alike."""
    root = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    url = "postgresql://nurt:Tr0ub4dor@Secret99@127.0.0.1:1/db"
    for verb in (["messages", "--json"], ["run"]):
        proc = nurture(root, *verb, env={"NURTURE_DATABASE_URL": url})
        assert proc.returncode == 1 and "Secret99" not in proc.stdout + proc.stderr, proc.stderr
        assert ("cannot open the database: postgresql://nurt:***@127.0.0.1:1/db: its user name or password holds "
                "an '@': write each '@' in them as %40") in " ".join(proc.stderr.split())


def test_a_drivers_words_are_shown_without_the_urls_secrets():
    from nurture.redaction import redact
    from nurture.settings import database_secrets
    url = "postgresql://nurt:Tr0ub4dor%40Secret99@db/x?sslpassword=KeyPassphrase42&sslmode=KeyPassphrase42"
    said = 'invalid sslmode value: "KeyPassphrase42" (user nurt, password Tr0ub4dor@Secret99)'
    assert redact(said, database_secrets(url)) == 'invalid sslmode value: "[redacted]" (user nurt, password [redacted])'
    assert database_secrets("sqlite:////srv/shop/nurture.db") == ()


def test_a_flow_runs_database_error_shows_the_drivers_words_without_the_urls_secrets():
    from flows.runtime import open_run_store
    from nurture.store.db import DatabaseUnavailable
    with pytest.raises(DatabaseUnavailable) as caught:  # the driver quotes the bad sslmode value
        open_run_store("postgresql://nurt:pw@127.0.0.1:9/x?sslpassword=Passphrase42&sslmode=Passphrase42x")
    assert "invalid sslmode value" in str(caught.value) and "Passphrase42" not in str(caught.value).replace(
        "sslmode=Passphrase42x", "")


def test_serve_refuses_to_start_on_a_database_that_does_not_exist(tmp_path):
    root = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    proc = nurture(root, "serve", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())
    assert f"no Nurture database at {root / '.nurture' / 'nurture.db'}" in text
    assert "NURTURE_DATABASE_URL is not set" in text and "NURTURE_CREATE_DATABASE=1" in text
    assert not (root / ".nurture").exists()

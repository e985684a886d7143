"""`nurture server start|stop|status`: the project's local Prefect server, reused by every
one-shot command while it answers. Starting a real server takes seconds and is exercised by
hand and by the README's workflow; here: how commands find it (a stand-in that answers
`/api/health` as Prefect's server does), and how a stale record is treated."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from nurture.cli import app, prefect_env
from nurture.cli.server_verbs import running, server_dir


@pytest.fixture
def project(tmp_path, monkeypatch):
    import os
    saved = dict(os.environ)  # prefect_env.configure writes os.environ: nothing may leak to other tests
    yield from _project(tmp_path, monkeypatch)
    os.environ.clear()
    os.environ.update(saved)


def _project(tmp_path, monkeypatch):
    root = tmp_path / "shop"
    (root / "journeys").mkdir(parents=True)
    monkeypatch.setenv("NURTURE_PROJECT", str(root))
    monkeypatch.delenv("NURTURE_DATA_DIR", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    yield root


@pytest.fixture
def health():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


def record(root, url, pid=999_999):
    folder = server_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.json").write_text(json.dumps({"url": url, "pid": pid}))


def test_a_running_local_server_is_used_by_the_commands(project, health, monkeypatch):
    record(project, health)
    assert running(project)["url"] == health
    prefect_env.configure()
    import os
    assert os.environ["PREFECT_API_URL"] == health
    result = CliRunner().invoke(app, ["server", "status"])
    assert result.exit_code == 0 and f"running at {health}" in result.output


def test_a_configured_prefect_api_url_wins(project, health, monkeypatch):
    record(project, health)
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    prefect_env.configure()
    import os
    assert os.environ["PREFECT_API_URL"] == "http://prefect.internal:4200/api"


def test_a_stale_record_is_ignored_and_stop_clears_it(project, monkeypatch):
    record(project, "http://127.0.0.1:9/api")  # nothing answers there
    assert running(project) is None
    prefect_env.configure()
    import os
    assert "PREFECT_API_URL" not in os.environ
    result = CliRunner().invoke(app, ["server", "status"])
    assert result.exit_code == 1 and "not running" in result.output
    assert CliRunner().invoke(app, ["server", "stop"]).exit_code == 0
    assert not (server_dir(project) / "server.json").exists()

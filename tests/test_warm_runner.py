"""What `nurture` hands to the warm runner and when it runs a command itself (nurture.cli.warm).
The runner end to end, on a real Prefect server: tests/test_serve_deployments.py. Here a
stand-in listens where runner.json says, as the runner does, and records what it is sent."""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from nurture.cli import warm


@pytest.mark.parametrize("argv, expected", [
    (["run"], (None, "run")),
    (["--project", "/shop", "run", "--now", "2026-03-04T10:00:00Z"], ("/shop", "run")),
    (["-p", "shop", "run"], ("shop", "run")),
    (["--project=/shop", "run"], ("/shop", "run")),
    (["--version"], (None, None)),
    (["report", "--html", "x"], (None, "report")),
    ([], (None, None)),
])
def test_the_verb_and_project_of_a_command_line(argv, expected):
    assert warm._split(argv) == expected


class StandIn:
    """Answers one JSON line per connection, like the runner."""

    def __init__(self, reply: dict):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict] = []
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = json.loads(warm._read_line(conn))
                self.requests.append(request)
                if not request.get("stop"):
                    conn.sendall(json.dumps(self.reply).encode() + b"\n")

    def close(self):
        self.listener.close()


@pytest.fixture
def shop(tmp_path):
    root = tmp_path / "shop"
    (root / "journeys").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURTURE_", "PREFECT_"))}
    env.update(NURTURE_PROJECT=str(root))
    return root, env


def _record(root, port, code=None, prefect_env=None, pid=None):
    path = root / ".nurture" / "prefect" / "runner.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"port": port, "token": "t0k", "pid": pid or os.getpid(),
                                "code": warm.code_stamp() if code is None else code,
                                "prefect_env": prefect_env or {}}))


def test_a_run_is_handed_over_with_argv_environment_and_directory_and_its_answer_printed(shop, capsys):
    root, env = shop
    stand_in = StandIn({"code": 3, "stdout": "journey-x @ …\n", "stderr": "warning: y\n"})
    try:
        _record(root, stand_in.port)
        assert warm.delegate(["run", "--now", "2026-03-04T10:00:00Z"], env) == 3
        out = capsys.readouterr()
        assert out.out == "journey-x @ …\n" and out.err == "warning: y\n"
        (request,) = stand_in.requests
        assert request["argv"] == ["run", "--now", "2026-03-04T10:00:00Z"] and request["token"] == "t0k"
        assert request["env"]["NURTURE_PROJECT"] == str(root) and request["cwd"] == os.getcwd()
        assert not request["stop"]
    finally:
        stand_in.close()


def test_anything_but_a_plain_run_on_the_runners_code_and_prefect_settings_runs_here(shop):
    root, env = shop
    stand_in = StandIn({"code": 0, "stdout": "", "stderr": ""})
    try:
        _record(root, stand_in.port)
        assert warm.delegate(["report"], env) is None
        assert warm.delegate(["run", "--help"], env) is None
        assert warm.delegate(["run"], {**env, "NURTURE_NO_WARM_RUNNER": "1"}) is None
        assert warm.delegate(["run"], {**env, "PREFECT_API_URL": "http://prefect.internal/api"}) is None
        assert stand_in.requests == []
        _record(root, stand_in.port, code=1)  # older code: told to stop, the command runs here
        assert warm.delegate(["run"], env) is None
        for _ in range(500):  # (the stand-in reads the request after the caller has moved on)
            if stand_in.requests:
                break
            time.sleep(0.01)
        assert [r["stop"] for r in stand_in.requests] == [True]
    finally:
        stand_in.close()


def test_no_runner_a_dead_one_or_a_refused_connection_runs_here(shop):
    root, env = shop
    assert warm.delegate(["run"], env) is None  # no runner.json
    _record(root, 9, pid=2 ** 22 + 12345)  # a process that does not exist
    assert warm.delegate(["run"], env) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    _record(root, closed)  # alive (this process) but nothing listens
    assert warm.delegate(["run"], env) is None


def test_an_upgrade_that_changes_only_integrations_makes_the_runner_stale(tmp_path):
    """The stamp read nurture/ and flows/ only: a `git pull` of an editable install that fixed
    a channel (integrations/) left the runner delivering with the old channel code."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    main = Path(warm.__file__).resolve().parents[2]
    tree = tmp_path / "tree"
    for package in ("nurture", "flows", "integrations"):
        shutil.copytree(main / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))

    def stamp() -> int:
        out = subprocess.run([sys.executable, "-c", "from nurture.cli.warm import code_stamp; print(code_stamp())"],
                             cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                             check=True)
        return int(out.stdout)

    before = stamp()
    changed = tree / "integrations" / "file_channels.py"
    changed.write_text(changed.read_text() + "\n# upgraded\n")
    os.utime(changed, ns=(before + 10**9, before + 10**9))  # written by the upgrade, after every other file
    assert stamp() == before + 10**9

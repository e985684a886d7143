"""The warm runner, the caller's side: `nurture run` in about a second.

A `nurture run` pays ~3 s before it does anything — Python importing Prefect, the project
loaded — and ~1 s of flow-run bookkeeping with the Prefect server. `nurture server start`
therefore starts, next to the project's local Prefect server, one more background process:
nurture.cli.warm_runner, which imports Prefect, the flows and the CLI once and then waits on
127.0.0.1 for `run` commands. The `nurture` entry point (nurture.cli.main) hands a `run` to it —
argv, environment and working directory — and prints what it answers; the runner executes the
very same CLI code in its own process (the command's output and exit code are the answer), so
the flow runs, their artifacts and the outcomes are exactly those of a `run` started anew.

Handed over only when nothing could differ:
- the verb is `run` (not `--help`);
- the project's `<data dir>/prefect/runner.json` exists, names a live process and the token
  it listens for (the file is the runner's, mode 0600);
- Nurture's code is the runner's (the newest modification time of the package's files: an
  upgrade or an edit makes the runner stale — it is told to stop, and the command runs as
  usual);
- the caller's own PREFECT_* settings are the runner's (Prefect reads its settings once per
  process).
Anything else — no runner, a stale one, a connection refused — and the command runs in the
calling process as it always did. One command at a time: the runner serves them in turn.
A project edit is picked up by the runner (flows.runtime reloads a changed project).

`nurture server stop` stops the runner with the server; its log is `<data dir>/prefect/runner.log`.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional

RUNNER_FILE = "runner.json"
HANDED_VERBS = frozenset({"run"})
_GLOBAL_WITH_VALUE = frozenset({"--project", "-p"})
_PACKAGES = ("nurture", "flows", "integrations")  # every package a run executes


def code_stamp() -> int:
    """The newest modification time (ns) of Nurture's Python files: the runner's code must be the caller's."""
    base = Path(__file__).resolve().parent.parent.parent
    newest = 0
    for package in _PACKAGES:
        folder = base / package
        if folder.is_dir():
            for path in folder.rglob("*.py"):
                try:
                    newest = max(newest, path.stat().st_mtime_ns)
                except OSError:
                    continue
    return newest


def _split(argv: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(the --project value if given, the verb) of a command line."""
    project, i = None, 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_WITH_VALUE:
            project = argv[i + 1] if i + 1 < len(argv) else None
            i += 2
            continue
        if word.startswith("--project="):
            project = word.split("=", 1)[1]
            i += 1
            continue
        if word.startswith("-"):
            return project, None  # --version, --help, …: not handed over
        return project, word
    return project, None


def _prefect_env(env: dict) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


def runner_file(project: Optional[str], env: dict) -> Path:
    from nurture.settings import Settings
    settings = Settings.from_env(env)
    root = settings.project_dir(project)
    return settings.data_dir_of(root) / "prefect" / RUNNER_FILE


def read_state(path: Path) -> Optional[dict]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = {"port": int, "token": str, "pid": int, "code": int, "prefect_env": dict}
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in keys.items()):
        return None
    try:
        os.kill(state["pid"], 0)
    except OSError:
        return None
    return state


def delegate(argv: list[str], env: Optional[dict] = None) -> Optional[int]:
    """Hand the command to the project's warm runner: its exit code, or None when it must run
    here (see the module's docstring)."""
    env = dict(os.environ if env is None else env)
    project, verb = _split(argv)
    if verb not in HANDED_VERBS or "--help" in argv:
        return None
    try:
        from nurture.settings import Settings
        if Settings.from_env(env).no_warm_runner:
            return None
        state = read_state(runner_file(project, env))
    except Exception:  # settings the command itself will report properly
        return None
    if state is None or state["prefect_env"] != _prefect_env(env):
        return None
    stale = state["code"] != code_stamp()
    request = {"token": state["token"], "argv": argv, "env": env, "cwd": os.getcwd(), "stop": stale,
               "columns": _columns()}
    try:
        with socket.create_connection(("127.0.0.1", state["port"]), timeout=2) as conn:
            conn.sendall(json.dumps(request).encode() + b"\n")
            if stale:
                return None
            conn.settimeout(None)  # a run takes as long as it takes
            answer = _read_line(conn)
    except OSError:
        return None
    if answer is None:
        sys.stderr.write("error: the warm runner stopped during the command (see runner.log next to "
                         "runner.json); the run may have happened: `nurture messages` shows what was sent\n")
        return 1
    try:
        reply = json.loads(answer)
        sys.stdout.write(reply["stdout"])
        sys.stderr.write(reply["stderr"])
        return int(reply["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _columns() -> int:
    import shutil
    return shutil.get_terminal_size((100, 24)).columns


def _read_line(conn: socket.socket, limit: int = 64 * 1024 * 1024) -> Optional[bytes]:
    chunks, size = [], 0
    while True:
        data = conn.recv(65536)
        if not data:
            return None
        newline = data.find(b"\n")
        if newline >= 0:
            chunks.append(data[:newline])
            return b"".join(chunks)
        chunks.append(data)
        size += len(data)
        if size > limit:
            return None

"""`nurture server start|stop|status`: a local Prefect server kept running in the background
for one project, so that one-shot commands (`nurture run`, `nurture sync`, `nurture demo`) do
not each start Prefect's temporary server (about ten seconds per command).

The server lives under the project's data directory — `<data dir>/prefect/`: its PREFECT_HOME
(Prefect's own SQLite database), `server.log` and `server.json` (URL and process id). While it
answers, every `nurture` command of the project uses it (nurture.cli.prefect_env), unless
PREFECT_API_URL is set: a configured server always wins. Its UI is at the printed URL.
`nurture server stop` ends it; a stale `server.json` (the process died) is ignored and replaced.
Beside it runs the warm runner (nurture.cli.warm, .warm_runner), to which `nurture run` is handed: Prefect and
the project already loaded, a run takes about a second.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, root
from nurture.settings import Settings

server_app = typer.Typer(help="A local Prefect server in the background, for fast one-shot commands.",
                         no_args_is_help=True)


def server_dir(project: Optional[Path] = None) -> Path:
    return Settings.from_env(os.environ).data_dir_of(project or root()) / "prefect"


def healthy(url: str, timeout: float = 0.5) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:  # noqa: S310 (127.0.0.1)
            return response.status == 200
    except OSError:
        return False


def running(project: Optional[Path] = None) -> Optional[dict]:
    """The project's local server ({url, pid, …}) when it answers, else None."""
    try:
        state = json.loads((server_dir(project) / "server.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("url"), str):
        return None
    return state if healthy(state["url"]) else None


def _free_port(preferred: int = 4200) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise CliError("no free port for the Prefect server")


def start(port: Optional[int] = typer.Option(None, "--port", help="Port (default 4200, or a free one)"),
          wait: float = typer.Option(120.0, "--wait", help="Seconds to wait for the server to answer")) -> None:
    """Start the project's local Prefect server in the background (or say where it runs)."""
    state = running()
    if state:
        console.print(f"the Prefect server of this project runs at {state['url']} (pid {state['pid']})", markup=False)
        _start_runner(server_dir())
        return
    folder = server_dir()
    folder.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(folder), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_API_URL": api})
    log = open(folder / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + wait
    while not healthy(api):
        if process.poll() is not None:
            raise CliError(f"the Prefect server did not start (exit code {process.returncode}); see {folder / 'server.log'}")
        if time.monotonic() > deadline:
            _terminate(process.pid)
            raise CliError(f"the Prefect server did not answer within {wait:.0f} s; see {folder / 'server.log'}")
        time.sleep(0.25)
    (folder / "server.json").write_text(json.dumps({"url": api, "pid": process.pid, "port": port,
                                                    "started_at": time.time()}), encoding="utf-8")
    console.print(f"Prefect server running at {api} (UI: http://127.0.0.1:{port}); `nurture` commands of this "
                  "project use it until `nurture server stop`", markup=False)
    _start_runner(folder)


def _start_runner(folder: Path, wait: float = 90.0) -> None:
    """The warm runner (nurture.cli.warm) beside the server: `nurture run` handed to a process
    that has Prefect and the project loaded already. Not fatal when it cannot start: `run`
    then works as without it."""
    from nurture.cli.warm import RUNNER_FILE, code_stamp, read_state
    path = folder / RUNNER_FILE
    state = read_state(path)
    if state is not None and state["code"] == code_stamp():
        return
    if state is not None:  # older code: replace it
        _terminate(state["pid"])
    path.unlink(missing_ok=True)
    log = open(folder / "runner.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "nurture.cli.warm_runner", str(path)], env=dict(os.environ),
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        state = read_state(path)
        if state is not None and state["pid"] == process.pid:
            console.print(f"warm runner ready (pid {process.pid}): `nurture run` goes to it", markup=False)
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    _terminate(process.pid)
    console.print(f"warning: the warm runner did not start (see {folder / 'runner.log'}); `nurture run` works "
                  "without it, only slower", markup=False)


def _stop_runner(folder: Path) -> None:
    from nurture.cli.warm import RUNNER_FILE
    path = folder / RUNNER_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(state, dict) and isinstance(state.get("pid"), int):
        _terminate(state["pid"])
    path.unlink(missing_ok=True)


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop() -> None:
    """Stop the project's local Prefect server."""
    _stop_runner(server_dir())
    path = server_dir() / "server.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        console.print("no Prefect server of this project is running", markup=False)
        return
    if isinstance(state, dict) and isinstance(state.get("pid"), int):
        _terminate(state["pid"])
    path.unlink(missing_ok=True)
    console.print("Prefect server stopped", markup=False)


def status() -> None:
    """Whether the project's local Prefect server runs, and where."""
    state = running()
    if state is None:
        console.print("not running (`nurture server start` starts it)", markup=False)
        raise typer.Exit(1)
    console.print(f"running at {state['url']} (pid {state['pid']})", markup=False)
    from nurture.cli.warm import RUNNER_FILE, code_stamp, read_state
    runner = read_state(server_dir() / RUNNER_FILE)
    if runner is None:
        console.print("warm runner: not running (`nurture server start` starts it)", markup=False)
    elif runner["code"] != code_stamp():
        console.print(f"warm runner: pid {runner['pid']}, older than Nurture's code — `nurture server start` "
                      "replaces it", markup=False)
    else:
        console.print(f"warm runner: pid {runner['pid']}, `nurture run` goes to it", markup=False)


def register(app: typer.Typer) -> None:
    server_app.command()(start)
    server_app.command()(stop)
    server_app.command()(status)
    app.add_typer(server_app, name="server")

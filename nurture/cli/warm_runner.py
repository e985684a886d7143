"""The warm runner's process (the caller's side and what is handed over: nurture.cli.warm):
Prefect, the flows and the CLI imported once, then one command after another from 127.0.0.1,
each run by the CLI's own code with the caller's argv, environment and working directory.
Its state file (port, token, pid, code stamp, the Prefect settings it was started with) is
written mode 0600 once it listens; each command is logged to its stdout (runner.log)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from nurture.cli.warm import _prefect_env, _read_line, code_stamp, read_state


def serve(state_path: Path) -> None:
    """Listen on 127.0.0.1 until told to stop (or killed), one command at a time."""
    from nurture.cli import prefect_env
    from nurture.settings import Settings
    user_prefect = _prefect_env(dict(os.environ))
    prefect_env.configure(verbose=Settings.from_env().verbose)
    from nurture.cli import commands  # noqa: F401  (the CLI, warm)
    from flows import journey  # noqa: F401  (Prefect and the flows, warm)
    configured = _prefect_env(dict(os.environ))  # the local server's URL, the quiet logging
    token = secrets.token_hex(16)
    listener = socket.create_server(("127.0.0.1", 0))
    state = {"port": listener.getsockname()[1], "token": token, "pid": os.getpid(), "code": code_stamp(),
             "prefect_env": user_prefect}
    state_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = state_path.with_suffix(".tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(temporary, state_path)
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                try:
                    line = _read_line(conn)
                    request = json.loads(line) if line else None
                except (OSError, ValueError):
                    continue
                if not isinstance(request, dict) or not secrets.compare_digest(str(request.get("token")), token):
                    continue
                if request.get("stop"):
                    return
                reply = _execute(request, configured)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if read_state(state_path) is None or json.loads(state_path.read_text())["pid"] == os.getpid():
                state_path.unlink()


def _execute(request: dict, configured: dict[str, str]) -> dict[str, Any]:
    """One command, as the CLI runs it, with the caller's argv, environment (and this process's
    Prefect settings) and working directory; its output and exit code."""
    from nurture.cli import commands
    from nurture.cli.invocation import console, err_console
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    widths = console.width, err_console.width
    try:
        os.environ.clear()
        os.environ.update({k: str(v) for k, v in dict(request.get("env") or {}).items()})
        os.environ.update(configured)
        sys.argv = ["nurture", *[str(a) for a in request.get("argv") or []]]
        os.chdir(str(request.get("cwd") or saved_cwd))
        columns = request.get("columns")
        if isinstance(columns, int) and 20 <= columns <= 1000:
            console.width = err_console.width = columns
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                commands.main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except Exception as exc:  # the command's own handler prints bugs; this is the runner's
        err.write(f"internal error: {type(exc).__name__}: {exc} (in the warm runner)\n")
        code = 70
    finally:
        console.width, err_console.width = widths
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        with contextlib.suppress(OSError):
            os.chdir(saved_cwd)
    from datetime import datetime, timezone
    print(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} nurture "
          f"{' '.join(str(a) for a in request.get('argv') or [])} -> exit {code}", file=sys.__stdout__, flush=True)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":  # started by `nurture server start`: python -m nurture.cli.warm_runner STATE_FILE
    serve(Path(sys.argv[1]))

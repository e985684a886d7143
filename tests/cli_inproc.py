"""`nurture …` run inside the test process: the console script's own `main()` — its exit code,
stdout and stderr, its error handling (a CliError is one line, a bug is "internal error", never a
traceback) — with `env` as the whole environment for the call, and argv, environment and
working directory restored afterwards. It saves the ~1 s of a new interpreter per command, which
the CLI tests paid dozens of times. Commands that start Prefect flows (run, sync, serve, demo,
conversions) and the entry-point tests themselves still run as subprocesses: Prefect reads its
settings once per process."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from typing import Mapping

PREFECT_VERBS = frozenset({"run", "sync", "serve", "demo", "conversions", "web"})


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    words = [a for a in args if not a.startswith("-")]
    if PREFECT_VERBS & set(words[:3]):  # the verb, after a `--project DIR` perhaps
        return subprocess.run([sys.executable, "-c", "from nurture.cli import main; main()", *args],
                              capture_output=True, text=True, env=dict(env), timeout=timeout, cwd=cwd)
    from nurture.cli import main
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["nurture", *args]
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(["nurture", *args], code, out.getvalue(), err.getvalue())

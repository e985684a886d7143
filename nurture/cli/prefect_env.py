"""Prefect settings for the CLI, applied before Prefect is imported.

Without a server configured (PREFECT_API_URL), the project's local server is used when
`nurture server start` left one running (nurture.cli.server_verbs); else Prefect starts a
temporary local server.
Its first start migrates a database and can take longer than Prefect's 20 s default, and
its telemetry heartbeat races the shutdown and prints "database is locked" tracebacks at
exit — so the CLI gives the start more time and turns telemetry off. Prefect's own console
output (a failed run's traceback) is kept off the terminal: the CLI prints one line per
failure itself, and the full logs still go to the Prefect API for the UI (NURTURE_VERBOSE=1
shows them on the console too). Users' own settings (environment or profile) always win over
these defaults.

One-shot commands (`nurture run`, `sync`, the demo) send only warnings and errors to the API:
their runs are looked at in the terminal. `nurture serve` is the opposite: its flow runs —
subprocesses that inherit these settings — are looked at in the UI, so they send INFO and up
to the API (the stages' summaries, which project and database a tick used) while the
terminal stays quiet.
"""
from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
}

# `nurture serve`: INFO to the API, nothing but our own lines on the console.
SERVING = {**DEFAULTS, "PREFECT_LOGGING_LEVEL": "INFO"}


def configure(verbose: bool = False, serving: bool = False) -> None:
    for key, value in (SERVING if serving else DEFAULTS).items():
        os.environ.setdefault(key, value)
    if not os.environ.get("PREFECT_API_URL"):  # a configured server always wins
        from nurture.cli.server_verbs import running
        try:
            local = running()
        except Exception:  # no project here, an unreadable data directory: Prefect's own default
            local = None
        if local:  # `nurture server start`: no temporary server per command
            os.environ["PREFECT_API_URL"] = local["url"]
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"

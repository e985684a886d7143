"""A pipelined tick's helper processes (the fork server, the delivery processes, the
multiprocessing resource tracker) never outlive the tick process: killed (`kill -9`), terminated
or interrupted mid-tick, nothing of it goes on delivering or waiting."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nurture.runtime import Runtime
from nurture.runtime.tick import run_tick
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import consent_t, contact_t, enrollment_t, message_t
from tests.conftest import REPO, utc, write_project
from tests.engine_fixtures import journey_yaml

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

NOW = utc(2026, 3, 4, 12, 0)
DUE = 8000  # all queued at once by the advance stage; the delivery process is still at them when signalled
# (2,000 were once all sent before the signal came, on a machine busy with the suite)

# The tick process: the advance stage queues every due message, then "guards" on (sleeps), so
# only the delivery process sends, and it is mid-batch when the test kills or interrupts this.
TICK = """
import signal, sys, time
# A shell's foreground job gets Ctrl-C; a suite started in the background inherits SIGINT ignored
# (POSIX: asynchronous commands of a shell without job control), which this tick must not.
signal.signal(signal.SIGINT, signal.default_int_handler)
from datetime import datetime
from pathlib import Path
from nurture.runtime import Runtime
from nurture.steps.advance import advance
from nurture.runtime.parallel import pipelined
from nurture.spec.project import load_project
from nurture.store.db import open_store

root, url, data_dir, now = sys.argv[1], sys.argv[2], sys.argv[3], datetime.fromisoformat(sys.argv[4])
rt = Runtime(open_store(url), load_project(Path(root)),
             env={"NURTURE_DATA_DIR": data_dir, "NURTURE_FROM_EMAIL": "shop@example.com"})

def produce():
    report = advance(rt, rt.plan("j"), now)
    time.sleep(600)  # the guards of a large tick, still running
    return report

pipelined(rt, now, "j", 2, produce)
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Path, Path]:
    """A project and a SQLite file with DUE contacts due for one e-mail (copied by each test)."""
    base = tmp_path_factory.mktemp("orphans")
    root = write_project(base / "project", {"j": journey_yaml(
        "j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}\n- id: later\n  wait: 30d")})
    spec = load_project(root)
    assert not spec.errors, [str(e) for e in spec.errors]
    db = base / "template.db"
    store = open_store(f"sqlite:///{db}")
    rt = Runtime(store, spec, env={"NURTURE_DATA_DIR": str(base / "data")})
    created = NOW - timedelta(days=10)
    with store.engine.begin() as conn:
        conn.execute(contact_t.insert(), [
            {"email": f"p{i}@example.com", "first_name": f"P{i}", "timezone": "UTC", "lifecycle_stage": "lead",
             "score": 0.0, "attributes": {}, "created_at": created, "updated_at": created} for i in range(DUE)])
        ids = [r[0] for r in conn.execute(select(contact_t.c.id))]
        conn.execute(consent_t.insert(), [
            {"contact_id": cid, "channel": "email", "purpose": "marketing", "status": "granted", "source": "test",
             "policy_version": "1", "recorded_at": created, "confirmed_at": created} for cid in ids])
        due_at = NOW - timedelta(minutes=1)
        conn.execute(enrollment_t.insert(), [
            {"contact_id": cid, "journey": "j", "version": rt.plan("j").version, "step_id": "hello",
             "next_due_at": due_at, "step_entered_at": due_at, "status": "active", "holdout": False,
             "entered_at": created, "revenue": 0.0, "defer_count": 0, "state": {}} for cid in ids])
    run_tick(rt, "j", NOW - timedelta(minutes=5))  # records the journey's version; nothing is due yet
    rt.close()
    store.dispose()  # closing the last connection checkpoints the WAL: the file alone is the database
    return root, db


# ---------------------------------------------------------------- the process tree, from /proc

def _stat(pid: int) -> tuple[str, int, str]:
    """(state, ppid, start time) of a process; FileNotFoundError once it is gone."""
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
        rest = fh.read().rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return rest[0], int(rest[1]), rest[19]


def descendants(root_pid: int) -> dict[int, str]:
    """Every process below root_pid (by walking /proc/*/stat for parent pids): pid → start time."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                _, ppid, start = _stat(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
            started[int(entry)] = start
    found: dict[int, str] = {}
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        found[pid] = started[pid]
        todo.extend(children.get(pid, []))
    return found


def running(procs: dict[int, str]) -> dict[int, str]:
    """Those of procs still running (not gone, not a zombie, not a new process with a reused pid)."""
    alive = {}
    for pid, start in procs.items():
        try:
            state, _, now_start = _stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if now_start == start and state not in ("Z", "X"):
            alive[pid] = start
    return alive


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def _has_files(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(entries)


def _wait_for(predicate, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# ---------------------------------------------------------------- the tests

def _sent(db: Path) -> int:
    store = open_store(f"sqlite:///{db}", auto_migrate=False)
    try:
        with store.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(message_t)
                                .where(message_t.c.status == "sent")).scalar() or 0
    finally:
        store.dispose()


# SIGTERM, with Python's default disposition, ends the tick process as `kill -9` does.
@pytest.mark.parametrize("how", ["kill -9", "SIGINT", "Ctrl-C"])
def test_no_helper_process_outlives_a_tick_stopped_mid_delivery(seeded, tmp_path, how):
    root, template = seeded
    db = tmp_path / "nurture.db"
    shutil.copyfile(template, db)
    outbox = tmp_path / "data" / "outbox" / "email" / "j"
    log = tmp_path / "tick.log"
    with open(log, "wb") as out:  # a file, not a pipe: a surviving helper would hold a pipe open
        tick = subprocess.Popen([sys.executable, "-c", TICK, str(root), f"sqlite:///{db}", str(tmp_path / "data"),
                                 NOW.isoformat()], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, as a shell job is
    helpers: dict[int, str] = {}
    try:
        # The delivery process has started sending: its first message files appear.
        delivering = _wait_for(lambda: _has_files(outbox) or tick.poll() is not None, 30)
        assert delivering and tick.poll() is None, log.read_text(errors="replace")
        helpers = descendants(tick.pid)
        assert len(helpers) >= 3, {pid: command(pid) for pid in helpers}  # tracker, fork server, deliverer
        if how == "Ctrl-C":  # the terminal signals the whole foreground process group
            os.killpg(tick.pid, signal.SIGINT)
        else:  # SIGINT to the tick process alone: KeyboardInterrupt, then the interpreter's exit
            tick.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
        tick.wait(30)  # (seconds on a loaded machine: its cleanup, then the interpreter's exit)

        gone = _wait_for(lambda: not running(helpers), 10, 0.02)
        assert gone, {pid: command(pid) for pid in running(helpers)}

        # Nothing goes out any more, and the tick was stopped with work still to do.
        sent, files = _sent(db), len(os.listdir(outbox))
        time.sleep(0.5)
        assert (_sent(db), len(os.listdir(outbox))) == (sent, files)
        assert files < DUE
    finally:
        if tick.poll() is None:
            tick.kill()
            tick.wait()
        for pid in running(helpers):  # whatever outlived the tick (the bug this guards against)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

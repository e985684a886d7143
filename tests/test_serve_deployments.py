"""`nurture serve` and workers against one real Prefect server (issue 11, items 5 and 6).

A real `prefect server start`, a process work pool with the deployments of prefect.yaml
(`prefect deploy --all`), a real `prefect worker` and a real `nurture serve` process:
- serve registers `<name>-served` deployments with prefect.yaml's parameters, never touches the
  work-pool ones, runs the first tick at start, its runs send INFO logs (which project and
  database) to the server, and SIGTERM leaves nothing paused, scheduled or waiting;
- a worker's run without NURTURE_DATABASE_URL refuses to create an empty database, names it and
  says how to set it; NURTURE_CREATE_DATABASE=1 (here through the run's job_variables.env) allows
  it; a run with the URL logs its project and database.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from sqlalchemy import text

from nurture.store.db import open_store
from tests.conftest import REPO, utc, write_project
from tests.engine_fixtures import add_event, subscriber

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect-server")]

JOURNEY = """
name: welcome_series
trigger: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Welcome, {{ contact.first_name }}"}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURTURE_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="200")
    if "PREFECT_API_SSL_CERT_FILE" in os.environ:  # (conftest: a one-certificate CA file, cheaper clients)
        env["PREFECT_API_SSL_CERT_FILE"] = os.environ["PREFECT_API_SSL_CERT_FILE"]
    return env


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(what: str, check: Callable[[], object], timeout: float = 90, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class Server:
    def __init__(self, api: str, home: Path):
        self.api, self.home = api, home

    def env(self, **extra: str) -> dict[str, str]:
        return {**_base_env(self.home), "PREFECT_API_URL": self.api, **extra}

    @contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings
        with temporary_settings(updates={PREFECT_API_URL: self.api}):
            with get_client(sync_client=True) as client:
                yield client

    def prefect(self, *args: str, cwd: Path = REPO) -> str:
        proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=cwd, env=self.env(),
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def deployments(self) -> dict:
        with self.client() as client:
            return {d.name: d for d in client.read_deployments()}

    def runs_of(self, deployment_id) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
        with self.client() as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    def run(self, run_id):
        with self.client() as client:
            return client.read_flow_run(run_id)

    def logs(self, run_ids) -> list:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        with self.client() as client:
            return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(run_ids))))

    def logged(self, run_ids, said: Callable[[object], bool], timeout: float = 60) -> list:
        """The runs' logs that `said`, waited for: a flow run's process sends its logs in
        batches, the last as it exits — after the run's final state is set."""
        return wait_for("the line in the runs' logs", lambda: [log for log in self.logs(run_ids) if said(log)],
                        timeout=timeout)

    def children(self, run_id) -> list:
        """The subflow runs of a flow run (tick-all's journey-<name> runs)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
        with self.client() as client:
            return client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """A real Prefect server (its own home and database), a process work pool `nurture` and the
    deployments of prefect.yaml on it, as an operator following the README has them."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env={**_base_env(home), "PREFECT_UI_ENABLED": "false"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            assert proc.poll() is None, (home / "server.log").read_text()
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for("the Prefect server", healthy, timeout=180)
        srv = Server(api, home)
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.workers.process import ProcessWorker
        with srv.client() as client:  # = prefect work-pool create nurture --type process
            client.create_work_pool(WorkPoolCreate(name="nurture", type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
        srv.prefect("deploy", "--all")
        yield srv
    finally:
        _stop(proc)
        log.close()


def _worker_pool_view(deployments: dict) -> dict:
    return {name: (d.paused, d.work_pool_name, d.parameters, d.pull_steps, d.entrypoint,
                   sorted(str(s.schedule) for s in d.schedules))
            for name, d in deployments.items() if not name.endswith("-served")}


def _database(root: Path) -> str:
    url = f"sqlite:///{root / 'data' / 'nurture.db'}"
    open_store(url).dispose()  # created and migrated, as `nurture import` would
    return url


def test_serve_beside_the_work_pool_deployments_ticks_at_start_logs_to_the_ui_and_stops_cleanly(server, tmp_path):
    project = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    url = _database(project)
    pool_before = _worker_pool_view(server.deployments())
    assert set(pool_before) == {"tick-all", "segment-sync", "scoring", "crm-pull", "hygiene"}

    out = open(tmp_path / "serve.log", "w+")
    started = time.time()
    serve = subprocess.Popen([sys.executable, "-c", "from nurture.cli import main; main()", "serve"], cwd=project,
                             env=server.env(NURTURE_PROJECT=str(project), NURTURE_DATABASE_URL=url,
                                            NURTURE_DATA_DIR=str(project / ".nurture"),
                                            PREFECT_RUNNER_POLL_FREQUENCY="1"),
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        names = {"tick-all-served", "segment-sync-served", "scoring-served", "crm-pull-served", "hygiene-served"}
        served = wait_for("the served deployments", lambda: (lambda d: d if names <= set(d) else None)(
            server.deployments()), timeout=120)
        assert {n for n in served if n.endswith("-served")} == names
        tick = served["tick-all-served"]
        # prefect.yaml's parameters (not a second copy with partitions=1), plus the project
        assert tick.parameters == {"partitions": 2, "project": str(project)}
        assert tick.work_pool_name is None and not tick.paused

        def first_tick():
            runs = server.runs_of(tick.id)
            return next((r for r in runs if r.state and r.state.is_final()), None)
        run = wait_for("the first served tick", first_tick, timeout=120)
        assert run.state.is_completed(), run.state.message
        # the first tick at start, not one interval (300 s) later
        assert run.expected_start_time.timestamp() - started < 60
        assert run.parameters == {"partitions": 2, "project": str(project)}

        # INFO logs of served runs reach the server: which project and database the tick used
        identity = f"project {project}, database {url}"
        journey_runs = server.children(run.id)
        assert [r.name for r in journey_runs] and all(r.state.is_completed() for r in journey_runs)
        assert server.logged([run.id, *(r.id for r in journey_runs)],
                             lambda log: log.level == 20 and identity in log.message)

        # the work-pool deployments are exactly as `prefect deploy --all` left them
        assert _worker_pool_view(server.deployments()) == pool_before
    finally:
        _stop(serve, signal.SIGTERM, timeout=60)
    out.seek(0)
    printed = out.read()
    assert serve.returncode == 0, printed
    assert "Traceback" not in printed, printed
    assert f"nurture serve: project {project}, database {url}" in printed
    assert "tick-all/tick-all-served" in printed and "the first run now" in printed
    assert "tick-all/tick-all" in printed and "not both" in printed  # the work-pool twins are named

    after = server.deployments()
    # a clean stop: nothing paused, the served schedules and waiting runs gone, the pool untouched
    assert not any(d.paused for d in after.values())
    for name in ("tick-all-served", "segment-sync-served", "scoring-served", "crm-pull-served", "hygiene-served"):
        assert after[name].schedules == []
        assert not [r for r in server.runs_of(after[name].id) if r.state.is_scheduled()]
    assert _worker_pool_view(after) == pool_before


def test_a_worker_run_never_creates_an_empty_database_and_says_which_one_it_used(server, tmp_path):
    """A worker without NURTURE_DATABASE_URL: its runs refuse the project's default file (which
    does not exist), naming it and the setting; NURTURE_CREATE_DATABASE=1 allows it; with
    NURTURE_DATABASE_URL (here in the run's job_variables.env) the run logs what it used."""
    missing = write_project(tmp_path / "missing", {"welcome_series": JOURNEY})
    allowed = write_project(tmp_path / "allowed", {"welcome_series": JOURNEY})
    configured = write_project(tmp_path / "configured", {"welcome_series": JOURNEY})
    url = _database(configured)
    tick = server.deployments()["tick-all"]

    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "nurture"],
                              env=server.env(PREFECT_WORKER_QUERY_SECONDS="1"), cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with server.client() as client:
            runs = {name: client.create_flow_run_from_deployment(tick.id, job_variables={"env": env}).id
                    for name, env in {
                        "missing": {"NURTURE_PROJECT": str(missing)},
                        "allowed": {"NURTURE_PROJECT": str(allowed), "NURTURE_CREATE_DATABASE": "1"},
                        "configured": {"NURTURE_PROJECT": str(configured), "NURTURE_DATABASE_URL": url},
                    }.items()}

        def finished():
            states = {name: server.run(run_id) for name, run_id in runs.items()}
            return states if all(r.state and r.state.is_final() for r in states.values()) else None
        final = wait_for("the worker's runs", finished, timeout=150)

        refused = final["missing"].state
        assert refused.is_failed()
        default = missing / ".nurture" / "nurture.db"
        assert f"no Nurture database at {default}" in refused.message
        assert "NURTURE_DATABASE_URL is not set" in refused.message and "NURTURE_CREATE_DATABASE=1" in refused.message
        assert not default.exists() and not default.parent.exists()

        # (the worker is stopped only after: stopping it stops the runs' processes, which send
        # their last logs as they exit, after the final state — the line was lost once in ~5)
        assert final["allowed"].state.is_completed(), final["allowed"].state.message
        assert (allowed / ".nurture" / "nurture.db").is_file()
        assert server.logged([final["allowed"].id],
                             lambda log: "(NURTURE_DATABASE_URL not set: the project's default)" in log.message)

        assert final["configured"].state.is_completed(), final["configured"].state.message
        assert server.logged([final["configured"].id],
                             lambda log: log.level == 20 and f"project {configured}, database {url}" in log.message)
    finally:
        _stop(worker)
        log.close()


def test_the_warm_runner_takes_nurture_run_with_the_callers_environment_and_answers_as_the_cli(server, tmp_path):
    """`nurture server start`'s warm runner (nurture.cli.warm), on a real server: a `run` handed
    to it sends, prints the CLI's own table, exits 0; a bad journey name is the CLI's own error
    and exit code; each command is logged. (When it is not handed a command: tests/test_warm_runner.py.)"""
    project = write_project(tmp_path / "shop", {"welcome_series": JOURNEY})
    url = _database(project)
    data = project / ".nurture"
    env = server.env(NURTURE_PROJECT=str(project), NURTURE_DATABASE_URL=url, NURTURE_DATA_DIR=str(data))
    cli = [sys.executable, "-c", "from nurture.cli import main; main()"]
    state = data / "prefect" / "runner.json"
    runner = subprocess.Popen([sys.executable, "-m", "nurture.cli.warm_runner", str(state)], env=env, cwd=project,
                              stdout=open(tmp_path / "runner.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for("the warm runner", lambda: state.is_file() and runner.poll() is None, timeout=120)
        store = open_store(url)
        add_event(store, subscriber(store, "ann@example.com", first_name="Ann"), "signup", utc(2026, 3, 4, 9, 0))
        store.dispose()
        done = subprocess.run(cli + ["run", "--now", "2026-03-04T10:00:00Z"], env=env, cwd=project,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "journey-welcome_series @ 2026-03-04T10:00" in done.stdout and "sent" in done.stdout
        bad = subprocess.run(cli + ["run", "--journey", "nope"], env=env, cwd=project, capture_output=True,
                             text=True, timeout=300)
        assert bad.returncode == 1 and "no journey named 'nope'" in bad.stderr and "Traceback" not in bad.stderr
        log = (tmp_path / "runner.log").read_text()
        assert "nurture run --now 2026-03-04T10:00:00Z -> exit 0" in log
        assert "nurture run --journey nope -> exit 1" in log
        store = open_store(url)
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM message WHERE status = 'sent'")).scalar() == 1
        store.dispose()
    finally:
        _stop(runner)

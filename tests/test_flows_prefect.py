"""Journey flows under Prefect's test harness: a real journey compiled into `journey-<name>`
flow runs, stages as tasks, the logical clock, and the table artifact per run."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from nurture.consent_ledger import record_consent
from nurture.ingest import track_records
from nurture.store.db import open_store
from tests.conftest import polled, utc, write_project

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect")]

JOURNEY = """
name: welcome_series
trigger: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Welcome, {{ contact.first_name }}"}
  - id: pause
    wait: 1d
  - id: nudge
    send: {channel: email, template: other, subject: "Still there?"}
"""
SECOND = """
name: sms_only
trigger: {event: signup}
steps:
  - id: text
    send: {channel: sms, template: hello}
"""


@pytest.fixture
def harness(prefect_harness):
    """The worker's one Prefect test server (tests/conftest.py)."""
    return prefect_harness


def _project(tmp_path, monkeypatch, url=None, journeys=None, t0=None):
    root = write_project(tmp_path / "proj", journeys or {"welcome_series": JOURNEY, "sms_only": SECOND})
    url = url or f"sqlite:///{root / '.nurture' / 'nurture.db'}"
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    store = open_store(url)
    t0 = t0 or utc(2026, 11, 16, 10)
    track_records(store, [(i, {"event_id": f"s{i}", "email": f"p{i}@example.com", "event": "signup",
                               "properties": {}, "timestamp": t0.isoformat()}) for i in range(3)], now=t0)
    with store.engine.begin() as conn:
        for cid in (1, 2, 3):
            record_consent(conn, cid, "email", "granted", source="test", at=t0 - timedelta(days=1), confirmed=True)
    return root, store, t0


@pytest.fixture
def project(tmp_path, monkeypatch):
    root, store, t0 = _project(tmp_path, monkeypatch)
    yield root, store, t0
    from flows.runtime import forget_runtimes
    forget_runtimes()
    store.dispose()


@pytest.fixture
def pg_project(tmp_path, monkeypatch, pg_server_url, pg_template):
    from tests.conftest import _drop_pg_database, _fresh_pg_database
    url = _fresh_pg_database(pg_server_url, pg_template)
    root, store, t0 = _project(tmp_path, monkeypatch, url)
    yield root, store, t0
    from flows.runtime import forget_runtimes
    forget_runtimes()
    store.dispose()
    _drop_pg_database(pg_server_url, url)


def test_tick_all_runs_each_journey_as_its_own_flow_with_stage_tasks_and_an_artifact(harness, project):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from flows.journey import tick_all
    root, store, t0 = project
    results = tick_all(project=str(root), now=t0 + timedelta(minutes=5))
    by_journey = {r["journey"]: r for r in results}
    assert set(by_journey) == {"welcome_series", "sms_only"}
    assert by_journey["welcome_series"]["enrolled"] == 3
    sent = [r for r in by_journey["welcome_series"]["outcomes"] if r["step"] == "hello" and r["outcome"] == "sent"]
    assert sent and sent[0]["count"] == 3
    # No phone numbers: the SMS journey records every outcome instead of dropping it.
    sms = {(r["outcome"], r["reason"]): r["count"] for r in by_journey["sms_only"]["outcomes"]}
    assert sms == {("suppressed", "no_consent"): 3}

    import anyio

    async def inspect():
        async with get_client() as client:
            flows = await client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=["journey-welcome-series", "journey-welcome_series"])))
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[f.name for f in flows])))
            task_runs = await client.read_task_runs()
            artifacts = await client.read_artifacts()
            return flows, runs, task_runs, artifacts
    flows, runs, task_runs, artifacts = polled(  # (the last task run may not be recorded yet)
        lambda: anyio.run(inspect), lambda got: got[1] and sum(t.flow_run_id == got[1][0].id for t in got[2]) >= 7)
    assert [f.name for f in flows] == ["journey-welcome_series"]
    assert len(runs) == 1 and runs[0].state.is_completed()
    names = {t.name.rsplit("-", 1)[0] for t in task_runs if t.flow_run_id == runs[0].id}
    assert names == {"prepare", "enroll", "exit-convert", "advance", "deliver", "reconcile", "report"}
    # Tasks are stages, never contacts: 3 contacts, 7 task runs.
    assert len([t for t in task_runs if t.flow_run_id == runs[0].id]) == 7
    assert by_journey["welcome_series"]["stages_run"] == ["prepare", "enroll", "exit-convert", "advance",
                                                          "deliver", "reconcile"]
    summary_table = [a for a in artifacts if a.key == "tick-all"]
    assert summary_table and summary_table[0].type == "table"
    table = [a for a in artifacts if a.key == "journey-welcome-series"]
    assert table and table[0].type == "table"
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert {"step": "hello", "outcome": "sent", "reason": "", "count": 3} in rows
    # …and what the journey has earned so far, as `nurture report` would say it.
    summary = [a for a in artifacts if a.key == "journey-welcome-series-summary"]
    assert summary and summary[0].type == "markdown" and "welcome_series" in summary[0].data
    assert [a for a in artifacts if a.key == "journey-welcome-series-steps" and a.type == "table"]


def test_a_run_on_time_ticks_at_its_scheduled_start_and_a_late_one_at_the_time_it_starts(harness, tmp_path,
                                                                                        monkeypatch):
    """Every run of one schedule shares its instant (the partitions of a journey on several
    workers); a run found waiting after an outage (oldest first, one after the other) ticks at
    the time it starts — at its past schedule it judged exits, quiet hours and caps at a time long
    gone while its mail left now."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.journey import journey_flow
    from flows.runtime import LATE_AFTER, forget_runtimes
    on_time = datetime.now(timezone.utc).replace(microsecond=0) - LATE_AFTER / 2  # late, but within the margin
    root, store, _ = _project(tmp_path, monkeypatch, t0=on_time - timedelta(days=1))
    flow = journey_flow("welcome_series")
    parameters = {"journey": "welcome_series", "project": str(root)}

    async def scheduled_at(when):
        async with get_client() as client:
            return await client.create_flow_run(flow, parameters=parameters, state=Scheduled(scheduled_time=when))
    try:
        result = run_flow(flow, flow_run=anyio.run(scheduled_at, on_time), parameters=parameters)
        assert datetime.fromisoformat(result["now"]) == on_time  # its schedule, not the time it started
        late = on_time - 3 * LATE_AFTER
        before = datetime.now(timezone.utc)
        result = run_flow(flow, flow_run=anyio.run(scheduled_at, late), parameters=parameters)
        assert datetime.fromisoformat(result["now"]) >= before  # not its schedule, 6 minutes back
    finally:
        forget_runtimes()
        store.dispose()


@pytest.mark.parametrize("asked,pipelined", [(2, True), (None, True), (1, False)],
                         ids=["asked-for", "one-per-core-by-default", "one-process-when-asked"])
def test_a_large_tick_pipelines_delivery_processes_with_the_guards_and_sends_each_message_once(
        harness, project, monkeypatch, asked, pipelined):
    import flows.journey as journey_flows
    import nurture.runtime.tick as tick
    root, store, t0 = project
    pipelines = []
    real = tick.pipelined
    monkeypatch.setattr(tick, "LARGE_TICK", 1)  # 3 contacts count as "large" here
    monkeypatch.setattr(tick, "pipelined", lambda *a, **k: pipelines.append(a[3]) or real(*a, **k))
    monkeypatch.setattr(journey_flows, "default_processes", lambda: 2)  # as on a 2-core machine
    results = journey_flows.tick_all(project=str(root), now=t0 + timedelta(minutes=5), journey="welcome_series",
                                     delivery_processes=asked)
    outcomes = {(r["step"], r["outcome"]): r["count"] for r in results[0]["outcomes"]}
    assert outcomes[("hello", "sent")] == 3 and results[0]["queued"] == 3
    assert ("hello", "queued") not in outcomes  # counted once, by what delivery did with it
    with store.engine.connect() as conn:
        statuses = [r[0] for r in conn.exec_driver_sql("SELECT status FROM message WHERE step_id = 'hello'")]
    assert statuses == ["sent"] * 3
    emls = list((root / ".nurture" / "outbox" / "email" / "welcome_series").glob("*.eml"))
    assert len(emls) == 3
    assert pipelines == ([asked or 2] if pipelined else [])


@pytest.mark.postgres
def test_a_one_process_flow_run_on_postgresql_sends_from_its_thread_each_message_once(harness, pg_project, monkeypatch):
    """`delivery_processes=1` on PostgreSQL: the advance task sends each batch from a thread
    while it guards the next (nurture.runtime.parallel._Sender) — inside Prefect's task — and
    the deliver task finds nothing left to claim."""
    import threading

    import flows.journey as journey_flows
    from nurture.send import deliver as deliver_module
    from nurture.send.deliver import HandedDelivery
    root, store, t0 = pg_project
    takers: list[str] = []
    real_take = HandedDelivery.take
    monkeypatch.setattr(HandedDelivery, "take", lambda self, batch: takers.append(
        threading.current_thread().name.split("_")[0]) or real_take(self, batch))
    loads = []
    real_load = deliver_module.load_messages
    monkeypatch.setattr(deliver_module, "load_messages", lambda rt, ids: loads.append(len(ids)) or real_load(rt, ids))
    results = journey_flows.tick_all(project=str(root), now=t0 + timedelta(minutes=5), journey="welcome_series",
                                     delivery_processes=1)
    outcomes = {(r["step"], r["outcome"]): r["count"] for r in results[0]["outcomes"]}
    assert outcomes[("hello", "sent")] == 3 and takers == ["nurture-send"] and loads == []
    with store.engine.connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql("SELECT status FROM message WHERE step_id = 'hello'")] == ["sent"] * 3
    assert len(list((root / ".nurture" / "outbox" / "email" / "welcome_series").glob("*.eml"))) == 3


TWO_SENDS = """
name: two_mails
trigger: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Hello"}
  - id: bye
    send: {channel: email, template: other, subject: "Bye"}
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_sends(request, tmp_path, monkeypatch):
    url = None
    if request.param == "postgres":
        from tests.conftest import _fresh_pg_database
        server = request.getfixturevalue("pg_server_url")
        url = _fresh_pg_database(server, request.getfixturevalue("pg_template"))
    root, store, t0 = _project(tmp_path, monkeypatch, url, journeys={"two_mails": TWO_SENDS})
    yield root, store, t0
    from flows.runtime import forget_runtimes
    forget_runtimes()
    store.dispose()
    if url:
        from tests.conftest import _drop_pg_database
        _drop_pg_database(server, url)


def test_a_retried_stage_reports_what_its_failed_attempt_sent_too(harness, two_sends, monkeypatch):
    """The advance stage sends each batch as it commits; a transient error after `hello` went
    out makes Prefect retry the stage, which then sends `bye`. The tick's report (artifact,
    tick-all summary, `nurture run`'s table) counts both attempts' work, as the message log does."""
    import flows.journey as journey_flows
    import nurture.steps.advance as advance_module
    root, store, t0 = two_sends
    real_handler_for = advance_module.handler_for
    failed: list[bool] = []

    def flaky_handler_for(kind):
        handle = real_handler_for(kind)

        def once_failing(rt, plan, node, now, report):
            if node.id == "bye" and not failed:  # as a busy database would, once
                failed.append(True)
                raise RuntimeError("database is locked")
            return handle(rt, plan, node, now, report)
        return once_failing
    monkeypatch.setattr(advance_module, "handler_for", flaky_handler_for)
    monkeypatch.setattr(journey_flows, "stage_task", journey_flows.stage_task.with_options(retry_delay_seconds=0))
    results = journey_flows.tick_all(project=str(root), now=t0 + timedelta(minutes=5), delivery_processes=1)
    assert failed
    with store.engine.connect() as conn:
        logged = dict(conn.exec_driver_sql("SELECT step_id, COUNT(*) FROM message WHERE status = 'sent' GROUP BY step_id").all())
    assert logged == {"hello": 3, "bye": 3}
    reported = {(r["step"], r["outcome"]): r["count"] for r in results[0]["outcomes"]}
    assert reported == {("hello", "sent"): 3, ("bye", "sent"): 3}
    assert results[0]["totals"]["sent"] == 6 and results[0]["queued"] == 6
    assert journey_flows._ATTEMPTED == {}  # nothing kept once the task run is over


def test_the_flow_and_run_tick_run_the_same_stages_in_the_same_order_with_the_same_counts(harness, project, tmp_path):
    """One declaration of a tick (nurture.runtime.tick.STAGES), two runners: the same data
    ticked by `run_tick` (in-process) and by the Prefect flow gives the same result."""
    import shutil

    from flows.journey import journey_flow
    from nurture.runtime import Runtime
    from nurture.runtime.tick import STAGES, run_tick
    from nurture.spec.project import load_project
    root, store, t0 = project
    copy = tmp_path / "copy.db"
    store.dispose()
    shutil.copyfile(root / ".nurture" / "nurture.db", copy)
    twin = open_store(f"sqlite:///{copy}")
    rt = Runtime(twin, load_project(root), env={"NURTURE_DATA_DIR": str(tmp_path / "twin")})
    try:
        for minutes in (5, 60 * 24 + 5):
            now = t0 + timedelta(minutes=minutes)
            local = run_tick(rt, "welcome_series", now, partitions=2)
            flowed = journey_flow("welcome_series")(journey="welcome_series", project=str(root), now=now, partitions=2,
                                                    delivery_processes=1)
            assert local.ran == flowed["stages_run"] == [s.name for s in STAGES]
            assert local.table(rt.plan("welcome_series").order) == flowed["outcomes"]
            assert {k: local.stages.get(k, 0) for k in ("enrolled", "converted", "exited", "migrated")} == {
                k: flowed[k] for k in ("enrolled", "converted", "exited", "migrated")}
            assert local.queued == flowed["queued"] and dict(local.totals()) == flowed["totals"]
        assert local.totals()["sent"] == 3  # the second tick sent the nudge to all three
    finally:
        rt.close()
        twin.dispose()


def test_a_broken_journey_fails_alone_its_run_says_where_and_hygiene_and_scoring_still_run(harness, project):
    """An invalid journey file fails only its own subflow (Failed, its located errors as the
    message, never retried); the valid journeys tick; hygiene and scoring run; the tick-all
    artifact says which project and database the tick used."""
    import anyio
    from prefect import get_client

    from flows.hygiene import hygiene
    from flows.journey import JourneysFailed, tick_all
    from flows.scoring import scoring
    root, store, t0 = project
    (root / "journeys" / "broken.yaml").write_text(
        "name: broken\ntrigger: {event: signup}\nsteps:\n  - id: a\n    send: {channel: email, template: nope}\n")
    with pytest.raises(JourneysFailed) as failed:
        tick_all(project=str(root), now=t0 + timedelta(minutes=5))
    by_journey = {r["journey"]: r for r in failed.value.results}
    assert "journeys/broken.yaml:5:" in by_journey["broken"]["error"]
    assert by_journey["welcome_series"]["totals"]["sent"] == 3
    hygiene(project=str(root), now=t0 + timedelta(minutes=6))
    scoring(project=str(root), now=t0 + timedelta(minutes=7))

    async def inspect():
        async with get_client() as client:
            runs = await client.read_flow_runs()
            artifacts = await client.read_artifacts()
            return runs, artifacts
    runs, artifacts = anyio.run(inspect)
    broken_runs = [r for r in runs if r.parameters.get("journey") == "broken"]
    assert broken_runs and all(r.state.is_failed() and r.run_count <= 1 for r in broken_runs)
    assert "journeys/broken.yaml:5:" in broken_runs[-1].state.message
    # (the harness is shared: this tick's artifact is the one naming this project)
    summary = [a for a in artifacts if a.key == "tick-all" and f"project {root}," in (a.description or "")]
    assert summary and "database sqlite:///" in (summary[0].description or "")


def test_a_project_error_is_never_retried():
    from prefect.states import Completed, Failed

    from flows.runtime import ProjectInvalid, retry_unless_invalid
    assert retry_unless_invalid(None, None, Failed(data=ProjectInvalid("journeys/x.yaml:1:1: bad"))) is False
    assert retry_unless_invalid(None, None, Failed(data=RuntimeError("database busy"))) is True
    assert retry_unless_invalid(None, None, Completed(data=1)) is True


def test_a_stored_value_the_database_cannot_read_is_not_retried_but_a_busy_database_is(tmp_path):
    """Real errors from real databases: SQLite's JSON functions over a stored NaN fail the same
    way every time; a locked SQLite file does not."""
    import sqlite3

    from prefect.states import Failed
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from flows.runtime import retry_unless_invalid
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", connect_args={"timeout": 0})
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE event (properties TEXT)"))
        conn.execute(text("INSERT INTO event VALUES ('{\"cart_value\": NaN}')"))
    with pytest.raises(OperationalError) as poison:
        with engine.connect() as conn:
            conn.execute(text("SELECT json_extract(properties, '$.cart_value') FROM event")).all()
    assert retry_unless_invalid(None, None, Failed(data=poison.value)) is False

    holder = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OperationalError) as busy:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO event VALUES ('{}')"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()
    assert "locked" in str(busy.value)
    assert retry_unless_invalid(None, None, Failed(data=busy.value)) is True


def test_a_postgresql_data_exception_is_not_retried(pg_server_url):
    from prefect.states import Failed
    from sqlalchemy import text
    from sqlalchemy.exc import DataError

    from flows.runtime import retry_unless_invalid
    from tests.conftest import _admin
    admin = _admin(pg_server_url)
    try:
        with pytest.raises(DataError) as bad:  # SQLSTATE 22003, integer out of range
            with admin.connect() as conn:
                conn.execute(text("SELECT CAST(CAST(:v AS text) AS integer)"), {"v": "99999999999"}).all()
    finally:
        admin.dispose()
    assert retry_unless_invalid(None, None, Failed(data=bad.value)) is False

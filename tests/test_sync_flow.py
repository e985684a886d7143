"""The segment sync as operators run it: the `segment-sync` flow (a task per target, a
table artifact, the nightly deployment) and `nurture sync` (exit codes, messages, never a
traceback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from nurture.consent_ledger import record_consent
from nurture.store.db import open_store
from nurture.store.tables import contact_t
from tests.conftest import polled, utc, write_project

NOW = utc(2026, 11, 21, 1, 0)
SEGMENTS = """
segments:
  - name: vip
    when: {attribute: {vip: true}}
    destinations:
      - {destination: csv, audience: vip}
      - {destination: hubspot, list_id: "45"}
  - name: everyone
    when: {attribute: {vip: {exists: true}}}
"""


def seed(root: Path) -> str:
    url = f"sqlite:///{root / '.nurture' / 'nurture.db'}"
    store = open_store(url)
    with store.engine.begin() as conn:
        for i, vip in enumerate((True, True, False)):
            cid = conn.execute(contact_t.insert().values(
                email=f"c{i}@example.com", lifecycle_stage="lead", score=0.0, attributes={"vip": vip},
                created_at=NOW - timedelta(days=9), updated_at=NOW - timedelta(days=9))).inserted_primary_key[0]
            record_consent(conn, cid, "ads", "granted", source="test", at=NOW - timedelta(days=9))
    store.dispose()
    return url


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = write_project(tmp_path / "shop", {}, segments=SEGMENTS)
    url = seed(root)
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    monkeypatch.delenv("NURTURE_HUBSPOT_TOKEN", raising=False)
    yield root
    from flows.runtime import forget_runtimes
    forget_runtimes()


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
def test_segment_sync_flow_runs_a_task_per_target_takes_rate_limit_slots_and_leaves_a_table_artifact(
        project, monkeypatch, prefect_harness):
    import anyio
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.segment_sync import segment_sync
    from tests.fakes.hubspot import FakeHubSpot
    hubspot = FakeHubSpot("pat-test").start()
    monkeypatch.setenv("NURTURE_HUBSPOT_TOKEN", "pat-test")
    monkeypatch.setenv("NURTURE_HUBSPOT_BASE_URL", hubspot.url)
    try:
        async def create_limit():
            async with get_client() as client:  # decays so slowly that the slots taken stay visible
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name="nurture-hubspot", limit=100, slot_decay_per_second=0.001))
        anyio.run(create_limit)
        state = segment_sync(project=str(project), now=NOW, return_state=True)
        rows, run_id = state.result(), state.state_details.flow_run_id

        async def inspect():  # the worker's Prefect server is shared: this run's rows only
            async with get_client() as client:
                return ([t for t in await client.read_task_runs() if t.flow_run_id == run_id],
                        [a for a in await client.read_artifacts() if a.flow_run_id == run_id],
                        await client.read_global_concurrency_limit_by_name("nurture-hubspot"))
        task_runs, artifacts, limit = polled(  # (task runs are recorded a moment after the flow returns)
            lambda: anyio.run(inspect), lambda got: sum(t.name.startswith("sync-target") for t in got[0]) >= 2)
    finally:
        hubspot.stop()
    by_target = {r["target"]: r for r in rows}
    assert (by_target["csv:vip"]["added"], by_target["csv:vip"]["status"]) == (2, "ok")
    assert (by_target["hubspot:45"]["added"], by_target["hubspot:45"]["requests"]) == (2, 2)  # upsert + list add
    assert hubspot.members("45") == {"c0@example.com", "c1@example.com"}
    assert limit.active_slots == 2  # one slot of nurture-hubspot per provider request
    assert [r.name.startswith("sync-target") for r in task_runs].count(True) == 2  # tasks are targets, not contacts
    table = [a for a in artifacts if a.key == "segment-sync"]
    assert table and table[0].type == "table"
    data = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert {(r["target"], r["status"], r["added"]) for r in data} == {("csv:vip", "ok", 2), ("hubspot:45", "ok", 2)}
    assert "pat-test" not in json.dumps(data)


def test_the_nightly_deployment_runs_at_two_in_the_configured_timezone(monkeypatch):
    from flows.segment_sync import sync_deployment
    monkeypatch.setenv("NURTURE_SYNC_TIMEZONE", "America/New_York")
    deployment = sync_deployment("/srv/shop")
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "America/New_York")
    assert deployment.name == "segment-sync" and deployment.parameters == {"project": "/srv/shop"}
    monkeypatch.delenv("NURTURE_SYNC_TIMEZONE")
    assert sync_deployment("/srv/shop").schedules[0].schedule.timezone == "Europe/Berlin"


def test_prefect_yaml_declares_the_nightly_segment_sync():
    import yaml
    from tests.conftest import REPO
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == "segment-sync"]
    assert dep["entrypoint"] == "flows/segment_sync.py:segment_sync"
    assert dep["schedules"][0] == {"cron": "0 2 * * *", "timezone": "Europe/Berlin"}


def nurture(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NURTURE_PROJECT": str(root), "NURTURE_DATA_DIR": str(root / ".nurture"),
           "NURTURE_DATABASE_URL": f"sqlite:///{root / '.nurture' / 'nurture.db'}", "COLUMNS": "200",
           # a local port that refuses at once: nothing ever leaves 127.0.0.1
           "NURTURE_HUBSPOT_TOKEN": "pat-na1-secret-value", "NURTURE_HUBSPOT_BASE_URL": "http://127.0.0.1:9",
           "NURTURE_SYNC_MAX_ATTEMPTS": "1"}
    env.pop("NURTURE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", "from nurture.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def test_nurture_sync_with_an_unknown_segment_says_which_ones_exist(tmp_path):
    root = write_project(tmp_path / "shop", {}, segments=SEGMENTS)
    proc = nurture(root, "sync", "--segment", "vpi")
    assert proc.returncode == 1
    assert "no segment named 'vpi' (did you mean 'vip'?); known: everyone, vip" in proc.stderr


def test_nurture_sync_refuses_an_invalid_segments_file_with_locations(tmp_path):
    root = write_project(tmp_path / "shop", {}, segments="""
        segments:
          - name: vip
            when: {attribute: {vip: true}}
            destinations:
              - {destination: metaa, audience_id: "1"}
        """)
    proc = nurture(root, "sync")
    assert proc.returncode == 1
    assert "journeys/segments.yaml:5:23: unknown destination 'metaa' (did you mean 'meta'?)" in proc.stderr


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
def test_nurture_sync_runs_the_flow_writes_the_csv_and_fails_loudly_on_failed_records(tmp_path, prefect_api):
    root = write_project(tmp_path / "shop", {}, segments=SEGMENTS)
    seed(root)
    proc = nurture(root, "sync", "--now", "2026-11-21T01:00:00Z")
    assert "csv:vip" in proc.stdout and "ok" in proc.stdout
    files = sorted((root / ".nurture" / "audiences" / "vip").glob("*-add.csv"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 3  # header + 2 members
    assert proc.returncode == 1 and "retries exactly them" in proc.stderr
    assert "ConnectError talking to hubspot" in proc.stdout
    assert "pat-na1-secret-value" not in proc.stdout + proc.stderr


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
def test_nurture_sync_empties_an_audience_no_segment_feeds_any_more_instead_of_nothing_to_sync(tmp_path, prefect_api):
    from nurture.registry import IntegrationContext
    from nurture.segments.sync import sync_segments
    from nurture.spec.project import load_project
    csv_only = SEGMENTS.replace('      - {destination: hubspot, list_id: "45"}\n', "")
    root = write_project(tmp_path / "shop", {}, segments=csv_only)
    store = open_store(seed(root))
    try:  # the first sync in-process (the engine's own; one flow run fewer), the second by the CLI
        sync_segments(store, load_project(root), NOW, IntegrationContext(root, root / ".nurture", {}))
    finally:
        store.dispose()
    assert len(list((root / ".nurture" / "audiences" / "vip").glob("*-add.csv"))) == 1
    write_project(root, {}, segments="""
segments:
  - name: everyone
    when: {attribute: {vip: {exists: true}}}
""")
    proc = nurture(root, "sync", "--now", "2026-11-22T01:00:00Z")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to sync" not in proc.stdout and "csv:vip (detached)" in proc.stdout
    removals = sorted((root / ".nurture" / "audiences" / "vip").glob("*-remove.csv"))
    assert len(removals) == 1 and len(removals[0].read_text().splitlines()) == 3  # header + 2 members
    again = nurture(root, "sync", "--now", "2026-11-23T01:00:00Z")
    assert again.returncode == 0 and "nothing to sync" in again.stdout

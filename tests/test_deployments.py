"""prefect.yaml declares the deployments (`nurture serve` reads the same file), and every entrypoint is a flow."""
from __future__ import annotations

import yaml
from prefect.flows import Flow, load_flow_from_entrypoint

from tests.conftest import REPO


def _declared() -> dict:
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def test_every_prefect_yaml_entrypoint_loads_as_a_flow_on_the_process_pool():
    for name, deployment in _declared().items():
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert isinstance(flow, Flow), name
        assert deployment["work_pool"]["name"] == "nurture"
        assert deployment["schedules"], name


def test_journey_ticks_every_five_minutes_and_segment_sync_nightly_in_berlin():
    declared = _declared()
    assert declared["tick-all"]["schedules"] == [{"interval": 300}]
    assert declared["segment-sync"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Berlin"}]


def test_the_crm_pull_runs_hourly_and_nurture_serve_serves_it(tmp_path):
    from nurture.cli.run_verbs import served_deployments
    declared = _declared()["crm-pull"]
    assert (declared["entrypoint"], declared["schedules"]) == ("flows/crm_pull.py:crm_pull", [{"interval": 3600}])
    served = {d.name: d for d in served_deployments(str(tmp_path))}["crm-pull-served"]
    assert served.schedules[0].schedule.interval.total_seconds() == 3600
    assert served.parameters == {"project": str(tmp_path)}


def test_nurture_serve_serves_the_deployments_prefect_yaml_declares_under_its_own_names(tmp_path):
    from nurture.cli.run_verbs import served_deployments
    served = {d.name: d for d in served_deployments(str(tmp_path))}
    declared = _declared()
    assert set(served) == {f"{name}-served" for name in declared}
    assert served["tick-all-served"].schedules[0].schedule.interval.total_seconds() == 300
    cron = served["segment-sync-served"].schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 2 * * *", "Europe/Berlin")
    for name, deployment in declared.items():  # prefect.yaml's parameters (tick-all: partitions 2) + project
        assert served[f"{name}-served"].parameters == {**(deployment.get("parameters") or {}), "project": str(tmp_path)}

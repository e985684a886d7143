"""The hourly `scoring` flow under Prefect's test harness: it scores every contact from
journeys/scoring.yaml at the run's logical time and reports the lifecycle moves."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.store.db import open_store
from nurture.store.tables import contact_t
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, add_event

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect")]

SCORING = """
mql_threshold: 30
fit: [{points: 20, when: {attribute: {role: cto}}}]
behaviour: {half_life: 7d, events: {demo_request: 40}}
"""
NOOP = "name: noop\ntrigger: {event: nothing}\nsteps: [{id: done, exit: {}}]\n"


@pytest.fixture
def harness(prefect_harness):
    """The worker's one Prefect test server (tests/conftest.py)."""
    return prefect_harness


def test_scoring_flow_scores_and_promotes_at_the_logical_time(harness, tmp_path, monkeypatch):
    root = write_project(tmp_path / "proj", {"noop": NOOP, "scoring": SCORING})
    url = f"sqlite:///{root / '.nurture' / 'nurture.db'}"
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    store = open_store(url)
    now = utc(2026, 11, 16, 10)
    cto = add_contact(store, "cto@example.com", attributes={"role": "cto"})
    add_event(store, cto, "demo_request", now - timedelta(days=7))  # 40 × 0.5 = 20
    reader = add_contact(store, "reader@example.com")
    from flows.runtime import forget_runtimes
    from flows.scoring import scoring
    try:
        result = scoring(project=str(root), now=now)
    finally:
        forget_runtimes()
    assert result["scored"] == {"contacts": 2, "promoted": {"mql": 1}}
    with store.engine.connect() as conn:
        rows = dict(conn.execute(select(contact_t.c.id, contact_t.c.score)).all())
    assert rows == {cto: pytest.approx(40.0), reader: 0.0}
    store.dispose()

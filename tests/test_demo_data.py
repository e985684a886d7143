"""`nurture demo`'s synthetic company: deterministic per seed, a believable mix, and — run
through the six shipped journeys (engine ticks here; Prefect in the real command) — every
journey sends, the report is written, and a second run gives the same result."""
from __future__ import annotations

import io
import os
import re
import shutil
from collections import Counter
from datetime import timedelta

from rich.console import Console
from sqlalchemy import func, select

from nurture.demo import run_demo
from nurture.demo_data import generate
from nurture.runtime import Runtime, run_tick
from nurture.spec.project import load_project
from nurture.store.db import open_store
from tests.conftest import REPO
from nurture.demo import START
from nurture.store.tables import consent_t, contact_t, event_t, message_t


def _world(url, seed):
    store = open_store(url)
    company = generate(store, seed=seed, start=START, days=5, contacts=300)
    with store.engine.connect() as conn:
        contacts = conn.execute(select(contact_t.c.email, contact_t.c.timezone,
                                       contact_t.c.attributes).order_by(contact_t.c.id)).all()
        consents = conn.execute(select(consent_t.c.channel, consent_t.c.status,
                                       func.count()).group_by(consent_t.c.channel, consent_t.c.status)
                                .order_by(consent_t.c.channel, consent_t.c.status)).all()
        history = conn.execute(select(func.count()).select_from(event_t)).scalar()
    store.dispose()
    return company, [tuple(c) for c in contacts], [tuple(c) for c in consents], history


def test_the_same_seed_makes_the_same_company_and_another_seed_another(tmp_path):
    a = _world(f"sqlite:///{tmp_path / 'a.db'}", 11)
    b = _world(f"sqlite:///{tmp_path / 'b.db'}", 11)
    c = _world(f"sqlite:///{tmp_path / 'c.db'}", 12)
    assert a[1:] == b[1:] and [e[2] for e in a[0].events] == [e[2] for e in b[0].events]
    assert a[1] != c[1]


def test_the_company_is_a_believable_mix(tmp_path):
    company, contacts, consents, history = _world(f"sqlite:///{tmp_path / 'a.db'}", 5)
    assert len(contacts) == 300
    assert sum(p.b2b for p in company.people) == 75  # every fourth contact is a B2B lead
    assert len({tz for _, tz, _ in contacts}) >= 10
    statuses = {(channel, status) for channel, status, _ in consents}
    assert {("email", "granted"), ("email", "pending"), ("email", "revoked"), ("sms", "granted")} <= statuses
    names = Counter(record["event"] for _, _, record in company.events)
    # a funnel: many views, fewer carts, fewer purchases
    assert names["view_product"] > names["add_to_cart"] > names["start_checkout"] > 0
    assert history > 0  # the purchase history before the start is already ingested


def _engine_ticks(root):
    state = {}

    def ticks(now):
        if "rt" not in state:
            state["rt"] = Runtime(open_store(os.environ["NURTURE_DATABASE_URL"]), load_project(root),
                                  env=dict(os.environ))
        rt = state["rt"]
        results = []
        for journey in sorted(rt.project.journeys):
            r = run_tick(rt, journey, now)
            results.append({"journey": journey, "enrolled": r.stages["enrolled"], "converted": r.stages["converted"],
                            "exited": r.stages["exited"], "outcomes": r.table()})
        return results
    return ticks, state


def test_the_demo_runs_all_six_journeys_writes_the_report_and_can_run_again(tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(REPO / "journeys", root / "journeys")
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "translations", root / "translations")  # German contacts read German
    monkeypatch.delenv("NURTURE_DATA_DIR", raising=False)
    monkeypatch.delenv("NURTURE_DATABASE_URL", raising=False)
    sent = []
    for _ in range(2):
        out = io.StringIO()
        ticks, state = _engine_ticks(root)
        run_demo(root, seed=3, run_ticks=ticks, console=Console(file=out, width=150), contacts=800, days=8,
                 resolution=timedelta(hours=4))  # (the demo's own 1 h: the same story, 3x the ticks)
        state["rt"].close()
        state["rt"].store.dispose()
        store = open_store(os.environ["NURTURE_DATABASE_URL"])
        with store.engine.connect() as conn:
            m = message_t
            sent.append(dict(conn.execute(select(m.c.journey, func.count()).where(m.c.status == "sent")
                                          .group_by(m.c.journey)).all()))
        store.dispose()
        text = out.getvalue()
        assert "What the month earned" in text and "report.html" in text
        assert re.search(r"report --now \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text  # the figures of the summary
        # the headline ROI is the incremental one, with its interval (an interval through zero is no proof)
        assert "ROI (incr.) [95% CI]" in text and re.search(r"×\s*\[-?[\d.,]+×, -?[\d.,]+×\]", text), text
        assert (root / ".nurture" / "demo" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert set(sent[0]) == {"welcome", "browse_abandonment", "cart_abandonment", "b2b_nurture", "post_purchase",
                            "win_back"}
    assert all(n > 0 for n in sent[0].values())
    assert sent[0] == sent[1]  # wiped and re-run: the same story


def test_the_demos_sales_team_calls_only_the_leads_handed_to_it(store):
    """A holdout member passing a handover step has a `holdout` row in the handover table, and
    sales never heard of it: the demo's world makes up no `sales_contacted` for it."""
    from nurture.demo_data import Company, react
    from nurture.store.tables import handover_t
    from tests.engine_fixtures import add_contact
    company = Company(seed=7, start=START, days=10)
    at = START + timedelta(hours=1)
    held = [add_contact(store, f"held{i}@example.com") for i in range(10)]
    with store.engine.begin() as conn:
        conn.execute(handover_t.insert(), [dict(
            contact_id=cid, journey="b2b_nurture", step_id="to_sales", stage="mql", score=60.0, note="",
            destination="file", status="holdout", reason="holdout", attempts=0,
            sla_due_at=at + timedelta(hours=24), created_at=at) for cid in held])
    assert react(company, store, at + timedelta(minutes=5))["sales_contacted"] == 0

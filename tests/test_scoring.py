"""Lead scoring: scoring.yaml validation with locations, the set-based score (fit + decayed
behaviour) with hand-computed answers on SQLite and PostgreSQL, lifecycle transitions."""
from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from sqlalchemy import select

from nurture.privacy.erase import erase_emails
from nurture.registry import IntegrationContext
from nurture.scoring.compute import score_contacts
from nurture.spec.project import load_project
from nurture.store.tables import contact_t, event_t
from tests.conftest import REPO, utc

NOW = utc(2026, 11, 20, 12)

SCORING = """
mql_threshold: 60
fit:
  - {label: decision maker, points: 20, when: {attribute: {role: [cto, ceo]}}}
  - {points: 10, when: {attribute: {industry: saas}}}
  - {points: 15, when: {attribute: {company_size: {gte: 50, lte: 1000}}}}
  - {points: 5, when: {attribute: {country: [DE, AT]}}}
behaviour:
  half_life: 14d
  window: 60d
  events:
    demo_request: 40
    email_click: 3
    email_open: 1
    form_submit: {points: 10, where: {form: whitepaper}}
lifecycle:
  sql: {event: sales_qualified}
  customer: {event: purchase}
"""
JOURNEY = """
name: noop
trigger: {event: nothing}
steps: [{id: done, exit: {}}]
"""


def _contact(conn, email, stage="lead", country=None, **attributes):
    return conn.execute(contact_t.insert().values(email=email, country=country, lifecycle_stage=stage, score=0.0,
                                                  attributes=attributes, created_at=NOW, updated_at=NOW)
                        ).inserted_primary_key[0]


def _event(conn, cid, name, ago, **props):
    conn.execute(event_t.insert().values(event_id=f"{cid}-{name}-{ago}-{len(props)}", contact_id=cid, name=name,
                                         properties=props, occurred_at=NOW - ago, received_at=NOW))


@pytest.fixture
def scoring_spec(make_project):
    spec = load_project(make_project({"noop": JOURNEY, "scoring": SCORING}))
    assert spec.errors == []
    return spec.extra["scoring"]


def test_score_is_fit_plus_behaviour_halving_every_half_life(store, scoring_spec):
    with store.engine.begin() as conn:
        cto = _contact(conn, "cto@example.com", country="DE", role="cto", industry="saas", company_size=200)
        _event(conn, cto, "demo_request", timedelta(days=14))  # 40 × 0.5 = 20
        _event(conn, cto, "email_click", timedelta(0))  # 3
        _event(conn, cto, "form_submit", timedelta(days=28), form="whitepaper")  # 10 × 0.25 = 2.5
        _event(conn, cto, "form_submit", timedelta(days=1), form="newsletter")  # where does not match: 0
        _event(conn, cto, "demo_request", timedelta(days=61))  # outside the 60d window: 0
        _event(conn, cto, "demo_request", timedelta(days=-1))  # in the future: 0
        reader = _contact(conn, "reader@example.com")
        _event(conn, reader, "email_open", timedelta(days=7))  # 1 × 0.5^0.5
        nobody = _contact(conn, "nobody@example.com", role="intern", company_size=20)
    result = score_contacts(store, scoring_spec, NOW)
    assert result.contacts == 3
    with store.engine.connect() as conn:
        scores = dict(conn.execute(select(contact_t.c.id, contact_t.c.score)).all())
        stages = dict(conn.execute(select(contact_t.c.id, contact_t.c.lifecycle_stage)).all())
    assert scores[cto] == pytest.approx(50 + 20 + 3 + 2.5)
    assert scores[reader] == pytest.approx(0.5 ** 0.5)
    assert scores[nobody] == 0
    assert stages == {cto: "mql", reader: "lead", nobody: "lead"}
    assert result.promoted["mql"] == 1


def test_lifecycle_moves_forward_only(store, scoring_spec):
    with store.engine.begin() as conn:
        qualified = _contact(conn, "q@example.com")
        _event(conn, qualified, "sales_qualified", timedelta(hours=1))
        buyer = _contact(conn, "b@example.com", stage="sql")
        _event(conn, buyer, "purchase", timedelta(hours=2), value=900)
        customer = _contact(conn, "c@example.com", stage="customer", role="cto", industry="saas",
                            company_size=100, country="DE")
        _event(conn, customer, "demo_request", timedelta(0))  # score 90, but a customer stays a customer
    score_contacts(store, scoring_spec, NOW)
    with store.engine.connect() as conn:
        stages = dict(conn.execute(select(contact_t.c.id, contact_t.c.lifecycle_stage)).all())
    assert stages == {qualified: "sql", buyer: "customer", customer: "customer"}


def test_score_is_recomputed_not_accumulated(store, scoring_spec):
    with store.engine.begin() as conn:
        cid = _contact(conn, "x@example.com")
        _event(conn, cid, "email_click", timedelta(0))
    score_contacts(store, scoring_spec, NOW)
    score_contacts(store, scoring_spec, NOW)
    with store.engine.connect() as conn:
        assert conn.execute(select(contact_t.c.score)).scalar() == pytest.approx(3)
    score_contacts(store, scoring_spec, NOW + timedelta(days=14))
    with store.engine.connect() as conn:
        assert conn.execute(select(contact_t.c.score)).scalar() == pytest.approx(1.5)


DECAY_AT_THE_THRESHOLD = """
mql_threshold: 5
behaviour:
  half_life: 1d
  window: 60d
  events:
    demo_request: 10
"""


@pytest.mark.parametrize("ago, now", [
    (timedelta(hours=36, seconds=1), NOW),  # 3.5355055420956023 (SQLite said …22494477)
    (timedelta(days=1, microseconds=1), NOW),  # 4.99999999996: a lead (SQLite said 5.0, an MQL)
    (timedelta(days=1, microseconds=-1), NOW),  # 5.00000000004: an MQL
    (timedelta(days=1, microseconds=1), NOW + timedelta(microseconds=999_999)),  # a .999999 on both sides
    (timedelta(days=1, microseconds=1), (NOW + timedelta(microseconds=500)).astimezone(timezone(timedelta(hours=-5)))),
])
def test_decayed_points_are_exact_to_the_microsecond_on_both_databases(make_project, store, ago, now):
    spec = load_project(make_project({"noop": JOURNEY, "scoring": DECAY_AT_THE_THRESHOLD})).extra["scoring"]
    with store.engine.begin() as conn:
        cid = _contact(conn, "ann@example.com")
        conn.execute(event_t.insert().values(event_id="e1", contact_id=cid, name="demo_request", properties={},
                                             occurred_at=now - ago, received_at=NOW))
    score_contacts(store, spec, now)
    with store.engine.connect() as conn:
        score, stage = conn.execute(select(contact_t.c.score, contact_t.c.lifecycle_stage)).one()
    expected = 10 * 0.5 ** (ago / timedelta(days=1))
    assert score == pytest.approx(expected, rel=1e-13, abs=0)
    assert stage == ("mql" if expected >= 5 else "lead")


def test_an_erased_contact_is_not_scored_again_or_promoted(make_project, store):
    """Erasure keeps the person's events (names and times: funnels still count) and zeroes the
    score: the next scoring run must not score them from those events and make them an MQL."""
    project = load_project(make_project({"noop": JOURNEY, "scoring": SCORING}))
    with store.engine.begin() as conn:
        gone = _contact(conn, "gone@example.com", role="cto", industry="saas", company_size=200)
        kept = _contact(conn, "kept@example.com")
        for cid in (gone, kept):
            _event(conn, cid, "demo_request", timedelta(hours=2))
            _event(conn, cid, "demo_request", timedelta(hours=1))
            _event(conn, cid, "sales_qualified", timedelta(hours=1))
    context = IntegrationContext(project.root, project.root / ".nurture", {})
    [erased] = erase_emails(store, project, ["gone@example.com"], context=context, actor="test", now=NOW)
    assert erased.outcome == "erased"

    result = score_contacts(store, project.extra["scoring"], NOW + timedelta(hours=1))
    with store.engine.connect() as conn:
        rows = {r.id: (r.score, r.lifecycle_stage) for r in conn.execute(select(contact_t))}
        moves = conn.execute(select(event_t.c.contact_id).where(event_t.c.name == "lifecycle_stage_changed")).all()
    assert rows[gone] == (0.0, "lead")
    assert rows[kept][1] == "sql" and rows[kept][0] == pytest.approx(40 * 0.5 ** (3 / 14 / 24) + 40 * 0.5 ** (2 / 14 / 24))
    assert {cid for (cid,) in moves} == {kept}
    assert (result.contacts, result.promoted["mql"], result.promoted["sql"]) == (1, 1, 1)


def test_an_event_many_half_lives_old_scores_zero_instead_of_failing_the_run(make_project, store):
    """PostgreSQL's power(0.5, x) raises "value out of range: underflow" past ~1,075
    half-lives (SQLite answers 0): a 2h half-life in a 120d window gets there in 90 days."""
    spec = load_project(make_project({"noop": JOURNEY, "scoring": """
mql_threshold: 60
behaviour:
  half_life: 2h
  window: 120d
  events:
    demo_request: 40
    view_page: 1
"""}))
    assert spec.errors == []
    with store.engine.begin() as conn:
        cid = _contact(conn, "a@example.com")
        _event(conn, cid, "view_page", timedelta(days=100))  # 1,200 half-lives: 0
        _event(conn, cid, "view_page", timedelta(days=41, hours=16))  # 500 half-lives: 0.5^500, not 0
        _event(conn, cid, "demo_request", timedelta(minutes=1))
    score_contacts(store, spec.extra["scoring"], NOW)
    with store.engine.connect() as conn:
        score = conn.execute(select(contact_t.c.score)).scalar()
    assert score == pytest.approx(40 * 0.5 ** (1 / 120))


def test_scoring_yaml_errors_have_locations(make_project):
    bad = SCORING.replace("half_life: 14d", "half_life: soon").replace("points: 20,", "pionts: 20,")
    spec = load_project(make_project({"noop": JOURNEY, "scoring": bad}))
    messages = [str(e) for e in spec.errors]
    assert any(m.startswith("journeys/scoring.yaml:8:14: ") and "'soon' is not a duration" in m for m in messages), messages
    assert any(m.startswith("journeys/scoring.yaml:3:29: unknown key 'pionts'") and "did you mean 'points'" in m
               for m in messages), messages


def test_the_shipped_scoring_yaml_is_valid():
    spec = load_project(REPO)
    assert spec.errors == []
    assert spec.extra["scoring"].mql_threshold == 60

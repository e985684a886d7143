"""Specification: `auto_winner` on a `split` step (issue 12) — the rule, the decision recorded
once as a new journey version, new arrivals sent to the winner while earlier members keep their
arm, `decided:` written by hand, and the report's arms limited to the experiment — through real
ticks with a logical clock, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta
from typing import Callable, Optional

import pytest
from sqlalchemy import select

from nurture.compiler import compile_journey, journey_version
from nurture.reporting import build_report
from nurture.reporting.lift import Z95, z_of
from nurture.reporting.splits import ArmReport, arm_stats
from nurture.runtime import Runtime, run_tick
from nurture.runtime.auto_winner import decide_splits, judge
from nurture.runtime.effective_journey import DECIDED_ARMS, with_winners
from nurture.runtime.stable_random import pick_arm
from nurture.runtime.versions import load_recorded
from nurture.spec.models import AutoWinner, Journey
from nurture.store.tables import decision_t, version_t
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_event, add_subscribers, enrollments, journey_yaml, messages, subscriber

T0 = utc(2026, 11, 2, 10)  # ticks at 10:00 UTC: e-mail quiet hours stay out of the way
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)
ARMS = (("a", 50, None), ("b", 50, None))

AB = journey_yaml("ab", """
    - id: test
      split:
        - {name: a, weight: 50, steps: [{id: mail_a, send: {channel: email, template: hello, subject: A}}]}
        - {name: b, weight: 50, steps: [{id: mail_b, send: {channel: email, template: other, subject: B}}]}
      auto_winner: RULE
    - id: after
      wait: 5d
    """, extra="goal: {event: purchase, within: 3d}")
PLAIN = journey_yaml("plain", """
    - id: test
      split:
        - {name: a, weight: 50, steps: [{id: mail_a, send: {channel: email, template: hello, subject: A}}]}
        - {name: b, weight: 50, steps: [{id: mail_b, send: {channel: email, template: other, subject: B}}]}
    """, trigger="{event: visit}")


def ab(rule: str = "{min_per_arm: 20}") -> str:
    return AB.replace("RULE", rule)


def arm_of(cid: int) -> str:
    return pick_arm("ab", "test", cid, ARMS)[0]


def experiment(rt: Runtime, store, buys: Callable[[str, int], Optional[float]]) -> dict[str, list[int]]:
    """80 subscribers sign up at T0 and pass the split at T0+1m (about 40 per arm); the i-th
    member of an arm buys for `buys(arm, i)` (None: no purchase) at T0+2h; the tick at T0+3h
    records the conversions (its prepare stage ran before them: nothing to decide yet)."""
    ids = add_subscribers(store, 80, event="signup", at=T0)
    run_tick(rt, "ab", T0 + MINUTE)
    members: dict[str, list[int]] = {"a": [], "b": []}
    for cid in ids:
        members[arm_of(cid)].append(cid)
    for arm, cids in members.items():
        for i, cid in enumerate(cids):
            value = buys(arm, i)
            if value is not None:
                add_event(store, cid, "purchase", T0 + 2 * HOUR, {"value": value})
    run_tick(rt, "ab", T0 + 3 * HOUR)
    assert min(len(c) for c in members.values()) >= 25  # both arms above min_per_arm: 20
    return members


def b_wins(arm: str, i: int) -> Optional[float]:
    """b: two of every three buy (≈ 67 %); a: one in five (20 %)."""
    if arm == "b":
        return 30.0 if i % 3 else None
    return 30.0 if i % 5 == 0 else None


def decisions(store) -> list:
    with store.reading() as conn:
        return conn.execute(select(decision_t)).all()


def versions(store, journey: str = "ab") -> list:
    with store.reading() as conn:
        return conn.execute(select(version_t).where(version_t.c.journey == journey).order_by(version_t.c.id)).all()


def later_arrivals(store, rt: Runtime, count: int, at) -> list[int]:
    """`count` new subscribers signing up at `at`, some of whom the hash would put in arm a."""
    ids = [subscriber(store, f"late{i}@example.com") for i in range(count)]
    for cid in ids:
        add_event(store, cid, "signup", at)
    assert {arm_of(cid) for cid in ids} == {"a", "b"}  # else the test below could not fail
    return ids


# ---------------------------------------------------------------- the rule, pure


def test_z_of_a_confidence_is_the_two_sided_normal_quantile():
    assert z_of(0.95) == pytest.approx(Z95, abs=1e-12)
    assert z_of(0.99) == pytest.approx(2.5758293, abs=1e-6)
    assert z_of(0.90) == pytest.approx(1.6448536, abs=1e-6)


def arms_of(*figures: tuple[str, int, int]) -> list[ArmReport]:
    return [ArmReport(name, recipients=n, conversions=x, revenue=30.0 * x, revenue_sq=900.0 * x)
            for name, n, x in figures]


@pytest.mark.parametrize("arms, rule, winner, reason", [
    # 18/40 vs 8/40: Newcombe's interval of 0.25 is (0.0445, 0.4290) at 95 %, (−0.0191, 0.4758) at 99 %
    (arms_of(("a", 40, 8), ("b", 40, 18)), AutoWinner(min_per_arm=40), "b", "decided"),
    (arms_of(("a", 40, 8), ("b", 40, 18)), AutoWinner(min_per_arm=40, confidence="99%"), None, "no_clear_winner"),
    (arms_of(("a", 40, 8), ("b", 40, 18)), AutoWinner(min_per_arm=41), None, "too_few_members"),
    (arms_of(("a", 40, 20), ("b", 40, 20)), AutoWinner(min_per_arm=40), None, "no_clear_winner"),  # equal
    # the best must beat every other arm: b beats a, but not c
    (arms_of(("a", 40, 8), ("b", 40, 18), ("c", 40, 16)), AutoWinner(min_per_arm=40), None, "no_clear_winner"),
    (arms_of(("a", 40, 18), ("b", 40, 8), ("c", 40, 6)), AutoWinner(min_per_arm=40), "a", "decided"),
])
def test_the_best_arm_wins_when_its_interval_against_every_other_arm_excludes_zero(arms, rule, winner, reason):
    verdict = judge(arms, rule)
    assert (verdict.winner, verdict.reason) == (winner, reason)
    if reason != "too_few_members":
        assert set(verdict.stats["differences"]) == {a.name for a in arms} - {verdict.stats["best"]}


def test_revenue_per_recipient_is_judged_with_welchs_interval():
    # both arms: 20 of 40 buy; a for 10 each, b for 100 each.
    # b: mean 50, s² = (20·100² − 2000²/40) / 39 = 2564.10; a: mean 5, s² = 25.641
    # d = 45, se = √(2564.10/40 + 25.641/40) = 8.04634; 95 %: 45 ± 15.771 → (29.229, 60.771)
    a = ArmReport("a", 40, 20, revenue=200.0, revenue_sq=20 * 100.0)
    b = ArmReport("b", 40, 20, revenue=2000.0, revenue_sq=20 * 10000.0)
    verdict = judge([a, b], AutoWinner(metric="revenue_per_recipient", min_per_arm=40))
    assert verdict.winner == "b"
    low = verdict.stats["differences"]["a"]["low"]
    assert low == pytest.approx(45 - Z95 * 8.04634, abs=1e-4)
    assert judge([a, b], AutoWinner(min_per_arm=40)).winner is None  # the same conversion rate


# ---------------------------------------------------------------- deciding, through ticks


def test_no_decision_while_an_arm_has_fewer_than_min_per_arm_members(make_runtime, store):
    rt = make_runtime({"ab": ab("{min_per_arm: 100}")}, policies=DEFAULT_POLICIES)
    experiment(rt, store, b_wins)
    report = run_tick(rt, "ab", T0 + 4 * HOUR)
    assert decisions(store) == [] and "decided" not in report.stages
    assert rt.plan("ab").version == journey_version(rt.project.journeys["ab"])
    assert len(versions(store)) == 1


def test_no_decision_when_the_arms_convert_alike(make_runtime, store):
    rt = make_runtime({"ab": ab()})
    experiment(rt, store, lambda arm, i: 30.0 if i % 2 == 0 else None)
    run_tick(rt, "ab", T0 + 4 * HOUR)
    run_tick(rt, "ab", T0 + 5 * HOUR)
    assert decisions(store) == []
    assert len(versions(store)) == 1


def test_a_clear_winner_is_decided_once_as_a_new_journey_version_and_gets_every_new_arrival(make_runtime, store):
    rt = make_runtime({"ab": ab()})
    members = experiment(rt, store, b_wins)
    first_version = rt.plan("ab").version
    arm_before = {m.contact_id: m.step_id for m in messages(store)}

    report = run_tick(rt, "ab", T0 + 4 * HOUR)
    assert report.stages["decided"] == 1
    (decision,) = decisions(store)
    plan = rt.plan("ab")
    assert (decision.journey, decision.step_id, decision.winner, decision.metric, decision.confidence) == (
        "ab", "test", "b", "conversion_rate", 0.95)
    assert decision.version == plan.version != first_version
    assert plan.nodes["test"].step.auto_winner.decided == "b"
    stats = {arm["name"]: arm for arm in decision.stats["arms"]}
    assert {name: arm["recipients"] for name, arm in stats.items()} == {a: len(c) for a, c in members.items()}
    assert decision.stats["differences"]["a"]["low"] > 0
    # the new version is recorded with the decision in its spec, and loads back as itself
    old, new = versions(store)
    assert (old.version, new.version) == (first_version, plan.version)
    assert new.spec["steps"][0]["auto_winner"] == {"min_per_arm": 20, "decided": "b"}
    assert "decided" not in old.spec["steps"][0]["auto_winner"]
    assert compile_journey(load_recorded(new.spec)).version == plan.version
    # in-flight members moved onto it where they were
    active = [e for e in enrollments(store, journey="ab") if e.status == "active"]
    assert active and all((e.version, e.step_id) == (plan.version, "after") for e in active)

    late = later_arrivals(store, rt, 12, T0 + 5 * HOUR)
    run_tick(rt, "ab", T0 + 5 * HOUR + MINUTE)
    assert {m.step_id for m in messages(store) if m.contact_id in late} == {"mail_b"}
    assert len([m for m in messages(store) if m.contact_id in late]) == len(late)
    late_rows = [e for e in enrollments(store, journey="ab") if e.contact_id in late]
    assert all(e.state == {DECIDED_ARMS: {"test": "b"}} and e.version == plan.version for e in late_rows)
    # earlier members keep their arm: nothing was sent again, nothing moved
    assert {m.contact_id: m.step_id for m in messages(store) if m.contact_id not in late} == arm_before
    # (each with the arm the random draw sent it to recorded — SPLIT_ARMS —, not the decision's mark)
    assert all(e.state == {"arms": {"test": arm_before[e.contact_id][-1]}}
               for e in enrollments(store, journey="ab") if e.contact_id not in late)

    run_tick(rt, "ab", T0 + 6 * HOUR)  # decided: not judged again, not recorded again
    assert decisions(store) == [decision]
    assert len(versions(store)) == 2


def test_revenue_per_recipient_decides_where_the_conversion_rate_cannot(make_runtime, store):
    rt = make_runtime({"ab": ab("{metric: revenue_per_recipient, min_per_arm: 20, confidence: 95%}")})
    experiment(rt, store, lambda arm, i: (100.0 if arm == "b" else 10.0) if i % 2 == 0 else None)
    with store.reading() as conn:
        arms, after = arm_stats(conn, rt.plan("ab"), "test")
    assert after == 0 and abs(arms[0].rate - arms[1].rate) < 0.05
    assert judge(arms, AutoWinner(min_per_arm=20)).winner is None  # by conversion rate: no winner
    run_tick(rt, "ab", T0 + 4 * HOUR)
    (decision,) = decisions(store)
    assert (decision.winner, decision.metric) == ("b", "revenue_per_recipient")
    b = next(arm for arm in decision.stats["arms"] if arm["name"] == "b")
    assert b["revenue_per_recipient"] == pytest.approx(100.0 * ((b["recipients"] + 1) // 2) / b["recipients"])


def test_decided_written_in_the_journey_file_routes_everyone_without_a_table_row(make_runtime, store):
    rt = make_runtime({"ab": ab("{decided: b}")})
    ids = add_subscribers(store, 30, event="signup", at=T0)
    assert {arm_of(cid) for cid in ids} == {"a", "b"}
    run_tick(rt, "ab", T0 + MINUTE)
    assert {m.step_id for m in messages(store)} == {"mail_b"} and len(messages(store)) == 30
    assert decisions(store) == []
    assert rt.plan("ab").version == journey_version(rt.project.journeys["ab"])  # the file's own version
    (split,) = build_report(store, rt.project, T0 + HOUR).journey("ab").splits
    assert [arm.recipients for arm in split.arms] == [0, 0]
    d = split.decision
    assert (d.winner, d.decided_by, d.after_decision, d.metric, d.confidence) == ("b", "journey_file", 30,
                                                                                  "conversion_rate", 0.95)
    assert (d.version, d.decided_at) == (rt.plan("ab").version, T0 + MINUTE)  # its first recorded version


def test_the_report_compares_only_members_before_the_decision_and_shows_it(make_runtime, store):
    rt = make_runtime({"ab": ab()})
    members = experiment(rt, store, b_wins)
    (before,) = build_report(store, rt.project, T0 + 3 * HOUR).journey("ab").splits
    assert before.decision is None
    run_tick(rt, "ab", T0 + 4 * HOUR)
    late = later_arrivals(store, rt, 12, T0 + 5 * HOUR)
    run_tick(rt, "ab", T0 + 5 * HOUR + MINUTE)
    for cid in late[:4]:  # late winners' purchases are not the experiment's
        add_event(store, cid, "purchase", T0 + 6 * HOUR, {"value": 30})
    run_tick(rt, "ab", T0 + 7 * HOUR)

    (split,) = build_report(store, rt.project, T0 + 8 * HOUR).journey("ab").splits
    assert [(a.name, a.recipients, a.conversions) for a in split.arms] == [
        (a.name, a.recipients, a.conversions) for a in before.arms]
    assert [a.recipients for a in split.arms] == [len(members["a"]), len(members["b"])]
    d = split.decision
    (row,) = decisions(store)
    assert (d.winner, d.decided_by, d.metric, d.confidence, d.decided_at, d.version, d.after_decision) == (
        "b", "auto_winner", "conversion_rate", 0.95, T0 + 4 * HOUR, row.version, len(late))
    assert d.stats == row.stats
    from nurture.reporting import views
    from nurture.reporting.summary import journey_markdown
    text = views.decision_text(split)
    assert text.startswith("auto_winner chose **b** on ") and f"{len(late)} later arrival(s)" in text
    assert text in journey_markdown(build_report(store, rt.project, T0 + 8 * HOUR).journey("ab"))
    from nurture.reporting.contract import report_json
    (as_json,) = report_json(build_report(store, rt.project, T0 + 8 * HOUR))["journeys"][0]["splits"]
    assert as_json["decision"] == {"winner": "b", "decided_by": "auto_winner", "metric": "conversion_rate",
                                   "confidence": 0.95, "decided_at": (T0 + 4 * HOUR).isoformat(),
                                   "version": row.version, "after_decision": len(late)}


def test_an_arm_added_to_a_live_split_inherits_no_members_and_is_not_declared_the_winner(make_runtime, store):
    rt = make_runtime({"ab": ab("{min_per_arm: 30}")})
    ids = add_subscribers(store, 200, event="signup", at=T0)
    run_tick(rt, "ab", T0 + MINUTE)
    sent_to = {m.contact_id: m.step_id for m in messages(store)}
    assert set(sent_to.values()) == {"mail_a", "mail_b"}
    for cid in ids:  # arm b's members buy, arm a's do not
        if sent_to[cid] == "mail_b":
            add_event(store, cid, "purchase", T0 + 2 * HOUR, {"value": 30})
    # the marketer adds arm c (40/40/20) before the tick that records the purchases
    three = journey_yaml("ab", """
    - id: test
      split:
        - {name: a, weight: 40, steps: [{id: mail_a, send: {channel: email, template: hello, subject: A}}]}
        - {name: b, weight: 40, steps: [{id: mail_b, send: {channel: email, template: other, subject: B}}]}
        - {name: c, weight: 20, steps: [{id: mail_c, send: {channel: email, template: other, subject: C}}]}
      auto_winner: {min_per_arm: 30}
    - id: after
      wait: 5d
    """, extra="goal: {event: purchase, within: 3d}")
    edited = make_runtime({"ab": three})
    run_tick(edited, "ab", T0 + 3 * HOUR)
    with store.reading() as conn:
        arms, _ = arm_stats(conn, edited.plan("ab"), "test")
    members = {arm: sum(1 for step in sent_to.values() if step == f"mail_{arm}") for arm in "ab"}
    assert [(a.name, a.recipients, a.conversions) for a in arms] == [
        ("a", members["a"], 0), ("b", members["b"], members["b"]), ("c", 0, 0)]
    run_tick(edited, "ab", T0 + 5 * HOUR)  # judged: c, re-hashed, had b's buyers and a 100 % rate
    assert decisions(store) == []  # c has no member yet: too few to decide


def test_two_workers_deciding_at_once_record_one_decision(make_runtime, store, monkeypatch):
    rt = make_runtime({"ab": ab(), "plain": PLAIN})
    experiment(rt, store, b_wins)
    other = Runtime(store, rt.project, env=rt.env)  # another worker: its own Runtime, its plan cached
    assert other.plan("ab").version == rt.plan("ab").version

    from nurture.runtime import auto_winner
    real = auto_winner.recorded_decisions
    assert decide_splits(rt, "ab", T0 + 4 * HOUR) == 1
    # the other worker read the table before the first one wrote: it decides too, at a later time
    monkeypatch.setattr(auto_winner, "recorded_decisions", lambda conn, journey: {})
    decide_splits(other, "ab", T0 + 4 * HOUR + MINUTE)
    monkeypatch.setattr(auto_winner, "recorded_decisions", real)
    (decision,) = decisions(store)
    assert decision.decided_at == T0 + 4 * HOUR  # the first one's
    assert other.plan("ab").version == rt.plan("ab").version == decision.version
    # a worker that starts now computes the same plan; deciding again is a no-op
    third = Runtime(store, rt.project, env=rt.env)
    assert third.plan("ab").version == decision.version
    assert decide_splits(third, "ab", T0 + 5 * HOUR) == 0 and decisions(store) == [decision]


def test_a_journey_without_auto_winner_keeps_its_version(make_runtime, store):
    rt = make_runtime({"ab": ab(), "plain": PLAIN})
    plain = rt.plan("plain").version
    assert plain == journey_version(rt.project.journeys["plain"])
    assert rt.plan("ab").version == journey_version(rt.project.journeys["ab"])  # undecided: the file's
    run_tick(rt, "plain", T0)
    experiment(rt, store, b_wins)
    run_tick(rt, "ab", T0 + 4 * HOUR)
    assert len(decisions(store)) == 1
    fresh = Runtime(store, rt.project, env=rt.env)
    run_tick(fresh, "plain", T0 + 5 * HOUR)
    assert fresh.plan("plain").version == rt.plan("plain").version == plain
    assert [v.version for v in versions(store, "plain")] == [plain]


def test_a_decision_applies_to_a_split_nested_in_a_branch_and_its_version_loads_back():
    import yaml
    spec = Journey.model_validate(yaml.safe_load("""
        name: nested
        trigger: {event: x}
        steps:
          - id: check
            branch:
              when: {score: {gte: 1}}
              then:
                - id: test
                  split:
                    - {name: a, weight: 50, steps: [{id: wait_a, wait: 1d}]}
                    - {name: b, weight: 50}
                  auto_winner: {confidence: 99%}
          - {id: done, wait: 1h}
    """))
    same, applied = with_winners(spec, {"test": "c"})  # not an arm: not applied
    assert (same, applied) == (spec, set())
    decided, applied = with_winners(spec, {"test": "b", "done": "a"})
    assert applied == {"test"}
    assert compile_journey(decided).nodes["test"].step.auto_winner.decided == "b"
    assert journey_version(decided) != journey_version(spec)
    recorded = decided.model_dump(by_alias=True, exclude_unset=True)
    assert "else" not in recorded["steps"][0]["branch"]  # untouched keys stay unset
    from nurture.runtime.versions import _yaml_form
    assert journey_version(load_recorded(_yaml_form(recorded))) == journey_version(decided)


def test_a_process_with_current_files_is_not_superseded_by_the_undecided_version_another_recorded(
        make_runtime, store):
    """A's Runtime is built first (`nurture web`'s instant worker), B records v1 after it, then
    the split is decided: A's plan is the decided version, the newest recorded one v1 — which A
    took for a newer edit, so it skipped every tick of the journey until a restart."""
    from nurture.runtime.versions import SUPERSEDED
    from nurture.store.tables import decision_t
    a = make_runtime({"ab": ab()})
    b = make_runtime({"ab": ab()})
    add_subscribers(store, 4, event="signup", at=T0)
    run_tick(b, "ab", T0 + timedelta(minutes=1))
    with store.engine.begin() as conn:
        conn.execute(decision_t.insert().values(journey="ab", step_id="test", winner="b", metric="conversion_rate",
                                                confidence=0.95, decided_at=T0 + timedelta(hours=1), version=None,
                                                stats={}))
    reports = [run_tick(a, "ab", T0 + timedelta(hours=h, minutes=1)) for h in (1, 2)]
    assert [r.skipped for r in reports] == ["", ""] and SUPERSEDED not in [r.skipped for r in reports]
    assert reports[0].stages["migrated"] == 4  # the members moved onto the decided version

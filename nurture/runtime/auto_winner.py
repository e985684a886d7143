"""Deciding a split's `auto_winner`, in the prepare stage of every tick: the rule (`judge`, pure)
and its application (`decide_splits`: read the arms, record a decision, re-plan).

The rule. A split with `auto_winner: {metric, min_per_arm, confidence}` and no decision yet
(none in `split_decision`, no `decided:` in the file) is judged on the figures the report shows
for its arms (nurture.reporting.splits.arm_stats — one computation for both). It is decided when
  1. every arm has at least `min_per_arm` recipients, and
  2. the best arm by `metric` beats every other arm: the two-sided interval at `confidence` of
     (best − other) lies entirely above 0. For `conversion_rate` that is Newcombe's hybrid score
     interval of a difference of two rates (nurture.reporting.lift, with the z of the
     confidence); for `revenue_per_recipient`, the difference of mean revenue per recipient
     (0 for members who did not convert) with Welch's standard error and a normal interval
     (nurture.reporting.incremental). Equal best arms, or an arm without spread (fewer than two
     members, all revenue 0), give no decision.
Conversions count as the engine has recorded them (the exit/convert stage runs after prepare:
a purchase is seen by the next tick's decision).

Honest caveat: the rule is checked again and again (at most hourly per process), so the data is looked at again and again, and
each look is another chance for noise to produce an interval that excludes 0. The chance that the
procedure ever picks a winner where there is no real difference is therefore higher than
1 − confidence ("peeking"); this is not a sequential test. `min_per_arm` delays the first look
until the arms are sizeable, which limits the inflation but does not remove it: when a wrong
winner is costly, ask for more (`confidence: 99%`, a larger `min_per_arm`).

A decision is written once: an insert that ignores a second one on (journey, step), so two
workers deciding at once record one, with the figures it was made on. The Runtime's plan is then
compiled again with the decision applied (nurture.runtime.effective_journey): a new journey
version, recorded and migrated to by the rest of the prepare stage, and stored in the
decision's `version`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional, Sequence

from nurture.reporting.incremental import Estimate, mean_difference
from nurture.reporting.lift import lift, z_of
from nurture.reporting.splits import ArmReport, arm_stats
from nurture.runtime.context import Runtime
from nurture.runtime.effective_journey import recorded_decisions, undecided_splits
from nurture.runtime.sql import insert_ignore
from nurture.spec.models import AutoWinner
from nurture.store.tables import decision_t


@dataclass(frozen=True)
class Verdict:
    winner: Optional[str]  # None: not decided (yet)
    reason: str  # decided | too_few_members | no_clear_winner
    stats: dict  # the figures and intervals it was judged on, as recorded with a decision


def _metric(arm: ArmReport, metric: str) -> float:
    value = arm.rate if metric == "conversion_rate" else arm.revenue_per_recipient
    return value if value is not None else 0.0


def _difference(best: ArmReport, other: ArmReport, metric: str, z: float) -> Estimate:
    """best − other with its interval at the z of the confidence."""
    if metric == "conversion_rate":
        d = lift(best.conversions, best.recipients, other.conversions, other.recipients, z)
        return Estimate(d.difference, d.low, d.high)
    return mean_difference(best.revenue_sample, other.revenue_sample, z)


def judge(arms: Sequence[ArmReport], rule: AutoWinner) -> Verdict:
    """The rule of the module docstring, on one split's arms."""
    z = z_of(rule.confidence)
    stats: dict = {"metric": rule.metric, "confidence": rule.confidence, "z": z, "min_per_arm": rule.min_per_arm,
                   "arms": [{"name": a.name, "recipients": a.recipients, "conversions": a.conversions,
                             "revenue": a.revenue, "rate": a.rate, "revenue_per_recipient": a.revenue_per_recipient}
                            for a in arms]}
    if not arms or any(a.recipients < rule.min_per_arm for a in arms):
        return Verdict(None, "too_few_members", stats)
    best = max(arms, key=lambda a: _metric(a, rule.metric))  # the first of equals
    differences = {other.name: _difference(best, other, rule.metric, z) for other in arms if other is not best}
    stats["best"] = best.name
    stats["differences"] = {name: d.as_dict() for name, d in differences.items()}  # best − each other arm
    if all(d.low is not None and d.low > 0 for d in differences.values()):
        return Verdict(best.name, "decided", stats)
    return Verdict(None, "no_clear_winner", stats)


# The arms are judged at most once per hour of the tick's clock in one process (the figures
# take tens of milliseconds; a five-minute schedule gains nothing from looking twelve times as
# often — and looks less often at noise, see "peeking" above). A decision recorded by another
# worker is read on every tick.
JUDGE_EVERY = timedelta(hours=1)


def decide_splits(rt: Runtime, journey: str, now: datetime) -> int:
    """Judge every undecided `auto_winner` split of `journey`, record the decisions, and
    compile the Runtime's plan again (also when another worker decided): how many splits this
    call decided (two workers deciding at once may both count one; the table holds one)."""
    spec = rt.project.journeys[journey]
    candidates = undecided_splits(spec)
    if not candidates:
        return 0  # no query: a journey without auto_winner never reads the decision table
    plan = rt.plan(journey)
    verdicts: dict[str, tuple[Verdict, AutoWinner]] = {}
    memo = rt.memo.setdefault(("auto_winner", journey), {})
    last = memo.get("judged_at")
    judge_now = last is None or now < last or now - last >= JUDGE_EVERY
    with rt.store.reading() as conn:
        recorded = recorded_decisions(conn, journey)  # every tick: another worker's decision counts at once
        if judge_now:
            memo["judged_at"] = now
            for step in candidates:
                if step.id in recorded or step.id not in plan.nodes:
                    continue
                arms, _ = arm_stats(conn, plan, step.id)
                verdict = judge(arms, step.auto_winner)
                if verdict.winner is not None:
                    verdicts[step.id] = (verdict, step.auto_winner)
    seen = frozenset((sid, d.winner, d.version) for sid, d in recorded.items())
    if not verdicts and memo.get("recorded") == seen:
        return 0  # nothing new: the plan the Runtime holds is the one to run
    memo["recorded"] = seen
    if verdicts:
        with rt.store.engine.begin() as conn:
            insert_ignore(conn, decision_t, [
                dict(journey=journey, step_id=sid, winner=v.winner, metric=rule.metric, confidence=rule.confidence,
                     decided_at=now, version=None, stats=v.stats)
                for sid, (v, rule) in verdicts.items()], ("journey", "step_id"))
    plan = rt.plan(journey, refresh=True)
    applied = [s.id for s in candidates if s.id in plan.nodes and plan.nodes[s.id].step.auto_winner.decided]
    unversioned = [sid for sid in applied if sid in verdicts or (sid in recorded and recorded[sid].version is None)]
    if unversioned:
        with rt.store.engine.begin() as conn:
            conn.execute(decision_t.update()
                         .where(decision_t.c.journey == journey, decision_t.c.step_id.in_(unversioned),
                                decision_t.c.version.is_(None))
                         .values(version=plan.version))
    return len(verdicts)

"""The journey a tick runs: the journey file with each recorded `auto_winner` decision applied.

A split's decision lives in the `split_decision` table (written by nurture.runtime.auto_winner)
and is applied here as `auto_winner.decided: <winner>` on that split, so the compiled plan — and
with it the version hash — changes exactly when a decision is made, and the live-edit machinery
(nurture.runtime.versions) records the new version and moves in-flight contacts onto it. A
`decided:` written in the file wins over the table; a decision whose split no longer has
`auto_winner`, or no longer that arm, is not applied. A journey without an undecided
`auto_winner` is returned as it is, without a query, so its version never depends on the table.

The split step marks every member it sends to a decided winner in `enrollment.state` under
`DECIDED_ARMS` ({step id: arm}), and every member it randomises under `SPLIT_ARMS`: that is how
the report tells the experiment's members (by the arm they took) from the arrivals after the
decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Optional, Sequence

from sqlalchemy import bindparam, select

from nurture.spec.models import Journey, Step
from nurture.store.tables import decision_t

DECIDED_ARMS = "decided_arms"  # enrollment.state key: {split step id: arm it was sent to by a decision}
SPLIT_ARMS = "arms"  # enrollment.state key: {split step id: arm the random draw sent it to}


@dataclass(frozen=True)
class RecordedDecision:
    step_id: str
    winner: str
    metric: str
    confidence: float
    decided_at: datetime
    version: Optional[str]
    stats: dict


def walk_steps(steps: Sequence[Step]) -> Iterator[Step]:
    """Every step, nested ones (branch, wait_for, split arms) included, in file order."""
    for step in steps:
        yield step
        if step.branch:
            yield from walk_steps(step.branch.then)
            yield from walk_steps(step.branch.else_)
        if step.wait_for:
            yield from walk_steps(step.wait_for.then)
            yield from walk_steps(step.wait_for.timeout)
        for arm in step.split or ():
            yield from walk_steps(arm.steps)


def undecided_splits(journey: Journey) -> list[Step]:
    """Splits with `auto_winner` and no `decided:` in the file: the ones the table can decide."""
    return [s for s in walk_steps(journey.steps) if s.auto_winner is not None and s.auto_winner.decided is None]


# (one statement object for every call: the prepare stage of every tick of a journey with an
# auto_winner split runs it, and a statement seen before runs on the lean path, store.lean)
_DECISIONS = select(decision_t).where(decision_t.c.journey == bindparam("journey"))


def recorded_decisions(conn: Any, journey: str) -> dict[str, RecordedDecision]:
    """The journey's rows of `split_decision`, by step id (one query)."""
    rows = conn.execute(_DECISIONS, {"journey": journey})
    return {r.step_id: RecordedDecision(r.step_id, r.winner, r.metric, r.confidence, r.decided_at, r.version,
                                        dict(r.stats or {})) for r in rows}


def with_winners(journey: Journey, winners: dict[str, str]) -> tuple[Journey, set[str]]:
    """`journey` with `auto_winner.decided` set on each undecided split named in `winners`
    (step id → arm), and the step ids it was set on. Models are copied, never changed."""
    applied: set[str] = set()

    def steps_of(steps: list[Step]) -> list[Step]:
        new = [step_of(s) for s in steps]
        return steps if all(a is b for a, b in zip(new, steps)) else new

    def replaced(model: Any, **fields: Any) -> Any:
        # Only what changed: an untouched list stays unset, as the file left it (the
        # recorded version's spec is written without unset keys).
        update = {k: v for k, v in fields.items() if v is not getattr(model, k)}
        return model.model_copy(update=update) if update else model

    def step_of(step: Step) -> Step:
        update: dict[str, Any] = {}
        if step.branch:
            update["branch"] = replaced(step.branch, then=steps_of(step.branch.then),
                                        else_=steps_of(step.branch.else_))
        if step.wait_for:
            update["wait_for"] = replaced(step.wait_for, then=steps_of(step.wait_for.then),
                                          timeout=steps_of(step.wait_for.timeout))
        if step.split:
            arms = [replaced(arm, steps=steps_of(arm.steps)) for arm in step.split]
            update["split"] = step.split if all(a is b for a, b in zip(arms, step.split)) else arms
        rule = step.auto_winner
        winner = winners.get(step.id)
        if (rule is not None and rule.decided is None and winner is not None
                and winner in [arm.name for arm in step.split or ()]):
            update["auto_winner"] = rule.model_copy(update={"decided": winner})
            applied.add(step.id)
        return replaced(step, **update)

    if not winners:
        return journey, applied
    changed = journey.model_copy(update={"steps": steps_of(journey.steps)})
    return (changed, applied) if applied else (journey, applied)


def effective_journey(store: Any, journey: Journey) -> Journey:
    """What a tick runs for `journey` (see the module docstring): one read of the decision
    table, and none for a journey without an undecided `auto_winner`."""
    if not undecided_splits(journey):
        return journey
    with store.reading() as conn:
        decisions = recorded_decisions(conn, journey.name)
    return with_winners(journey, {sid: d.winner for sid, d in decisions.items()})[0]

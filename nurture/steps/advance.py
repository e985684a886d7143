"""The advance stage: enrollments through their steps, set-based and in topological order.

Steps are visited in plan order (every edge points forward), so one pass carries a contact
through as many instant steps as are due. Each step is processed in batches by the handler
of its kind, looked up by name in `STEP_HANDLERS`: one batch — one query selecting the due
enrollments at that step, the transition written with one executemany — per call, in its
own transaction, until the handler finds nothing due.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from types import MappingProxyType
from typing import Mapping, Optional, Protocol

from nurture.compiler import Node, Plan
from nurture.runtime.context import Runtime
from nurture.steps import branch, exit, handover, send, split, update, wait, wait_for, wait_until
from nurture.steps.transitions import due_steps


class StepHandler(Protocol):
    def __call__(self, rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
        """Process the next batch of enrollments due at `node` (outcomes counted in `report`
        as (step id, outcome, reason)); False when none was due."""


STEP_HANDLERS: Mapping[str, StepHandler] = MappingProxyType({
    "wait": wait.handle,
    "wait_until": wait_until.handle,
    "send": send.handle,
    "branch": branch.handle,
    "wait_for": wait_for.handle,
    "split": split.handle,
    "update": update.handle,
    "handover": handover.handle,
    "exit": exit.handle,
})


class UnknownStepKind(LookupError):
    """A step kind with no handler: a kind added to the spec model but not here."""


def handler_for(kind: str) -> StepHandler:
    try:
        return STEP_HANDLERS[kind]
    except KeyError:
        raise UnknownStepKind(f"no handler for step kind '{kind}'; known kinds: {', '.join(STEP_HANDLERS)}") from None


# Steps whose enrollments can move without being due (an event arrived): always visited.
ALWAYS_VISITED = frozenset({"wait_for"})


def advance(rt: Runtime, plan: Plan, now: datetime, report: Optional[Counter] = None) -> Counter:
    """Every step in plan order, each until nothing is due. Which steps have anything due is
    read first in one statement (`due_steps`) and again after each batch that moved anyone
    (its contacts may now be due further on, and the step may have nothing left); the others
    are not visited. The outcomes are counted in `report` (given: the caller's) batch by batch,
    once each batch's transaction has committed: when a batch fails, `report` holds exactly
    what the batches before it did (a retried stage reports them, flows/journey.py)."""
    report = Counter() if report is None else report
    with rt.store.reading() as conn:
        due = due_steps(conn, plan, now)
    for step_id in plan.order:
        node = plan.nodes[step_id]
        always = node.kind in ALWAYS_VISITED
        if step_id not in due and not always:
            continue
        handle = handler_for(node.kind)
        batch: Counter = Counter()
        while handle(rt, plan, node, now, batch):
            report.update(batch)
            batch.clear()
            # Anyone moved: read again what is due. A step with nothing left is not handled once
            # more only to find that out (a write transaction of its own).
            with rt.store.reading() as conn:
                due = due_steps(conn, plan, now)
            if step_id not in due and not always:
                break
    return report

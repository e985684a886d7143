"""Spec → plan: the immutable, versioned step graph the runtime executes.

The version is a content hash of the journey spec, so an edit is a new version and an
unchanged file is the same version on every machine. Steps are flattened into nodes that
name their successors by step id; ids are the stable handles that let in-flight contacts
survive an edit (see runtime.migrate).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

from nurture.spec.models import Journey, Step


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    step: Step
    order: int
    next: Optional[str]  # where the journey continues after this step; None = the end
    then_first: Optional[str] = None  # branch / wait_for: first node of the 'then' path
    else_first: Optional[str] = None  # branch: first node of 'else'; wait_for: of 'timeout'
    arms: tuple[tuple[str, float, Optional[str]], ...] = ()  # split: (name, weight, first node)


@dataclass(frozen=True)
class Plan:
    journey: Journey
    version: str
    first: Optional[str]
    nodes: Mapping[str, Node] = field(default_factory=dict)
    order: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.journey.name

    def successor_existing_in(self, step_id: str, other: "Plan") -> Optional[str]:
        """The first step at or after `step_id` (following this plan's main path) that also
        exists in `other`: where a contact goes when its step was removed by an edit."""
        current: Optional[str] = step_id
        while current is not None:
            if current in other.nodes:
                return current
            current = self.nodes[current].next if current in self.nodes else None
        return None


def journey_version(journey: Journey) -> str:
    canonical = json.dumps(journey.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def compile_journey(journey: Journey) -> Plan:
    nodes: dict[str, Node] = {}
    order: list[str] = []

    def link(steps: list[Step], after: Optional[str]) -> Optional[str]:
        # Reserve order positions first so a branch's paths come after the branch itself.
        for i, step in enumerate(steps):
            following = steps[i + 1].id if i + 1 < len(steps) else after
            position = len(order)
            order.append(step.id)
            then_first = else_first = None
            arms: tuple = ()
            if step.branch:
                then_first = link(step.branch.then, following) if step.branch.then else following
                else_first = link(step.branch.else_, following) if step.branch.else_ else following
            elif step.wait_for:
                then_first = link(step.wait_for.then, following) if step.wait_for.then else following
                else_first = link(step.wait_for.timeout, following) if step.wait_for.timeout else following
            elif step.split:
                arms = tuple((arm.name, arm.weight, link(arm.steps, following) if arm.steps else following)
                             for arm in step.split)
            nodes[step.id] = Node(step.id, step.kind, step, position, following, then_first, else_first, arms)
        return steps[0].id if steps else after

    first = link(journey.steps, None)
    # Topological order: every edge points to a later position; process in this order and an
    # enrollment can pass several instant steps in one tick.
    return Plan(journey, journey_version(journey), first, MappingProxyType(nodes), tuple(order))

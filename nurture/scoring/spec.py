"""The `journeys/scoring.yaml` contract and the `handover` step's keys, validated with
locations like journeys are (`path:line:col: message`)."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from nurture.durations import parse_duration
from nurture.lifecycle import STAGES  # the one stage order (scoring and handovers use it from here too)
from nurture.spec.errors import SpecError
from nurture.spec.model_errors import pydantic_errors
from nurture.spec.models import Comparison, Condition, Strict
from nurture.spec.yaml_loader import Locations, load_located


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


class FitRule(Strict):
    """Points for who a contact is: a condition over attributes (role, industry, size …)."""
    when: Condition
    points: float
    label: str = ""


class BehaviourRule(Strict):
    """Points per event; `where` filters the event's properties."""
    points: float
    where: Optional[dict[str, Comparison]] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"points": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Behaviour(Strict):
    half_life: timedelta = timedelta(days=30)
    window: timedelta = timedelta(days=180)  # older events no longer count at all
    events: dict[str, BehaviourRule] = Field(default_factory=dict)

    _d = field_validator("half_life", "window", mode="before")(lambda cls, v: _duration(v))

    @field_validator("half_life")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("half_life must be longer than zero, e.g. 14d")
        return value


class Lifecycle(Strict):
    """When a contact moves forward (never backward): lead → mql (score ≥ mql_threshold)
    → sql → customer."""
    sql: Optional[Condition] = None
    customer: Optional[Condition] = None


class ScoringSpec(Strict):
    mql_threshold: float = 60
    fit: list[FitRule] = Field(default_factory=list)
    behaviour: Behaviour = Field(default_factory=Behaviour)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)


class HandoverSpec(Strict):
    """`handover: {sla: 24h, owner: sales@…, note: …}` — the sales task is due `sla` after the
    handover; `stage` is the lifecycle stage the contact is handed over with."""
    sla: timedelta = timedelta(hours=24)
    owner: Optional[str] = None
    note: str = ""
    stage: str = "mql"

    _sla = field_validator("sla", mode="before")(lambda cls, v: _duration(v))

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: str) -> str:
        if value not in STAGES:
            raise ValueError(f"stage '{value}' is not one of {', '.join(STAGES)}")
        return value


def handover_spec(raw: Optional[dict]) -> HandoverSpec:
    return HandoverSpec.model_validate(raw or {})


def check_handover(raw: Any, locs: Locations, path: tuple) -> list[SpecError]:
    """Errors of a journey's `handover` step body, located in the journey file."""
    try:
        HandoverSpec.model_validate(raw or {})
    except ValidationError as exc:
        return pydantic_errors(exc, locs, HandoverSpec, prefix=path)
    return []


def load_scoring(path: Path, display: str) -> tuple[Optional[ScoringSpec], Locations, list[SpecError]]:
    """Parse and validate scoring.yaml; (spec or None, locations, errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, Locations(display), [SpecError(display, 1, 1, f"not UTF-8 text: {exc.reason}")]
    data, locs, errors = load_located(text, display)
    if errors:
        return None, locs, errors
    if data is not None and not isinstance(data, dict):
        return None, locs, [locs.error((), "scoring.yaml holds a mapping (mql_threshold, fit, behaviour, lifecycle)")]
    try:
        return ScoringSpec.model_validate(data or {}), locs, []
    except ValidationError as exc:
        return None, locs, pydantic_errors(exc, locs, ScoringSpec)

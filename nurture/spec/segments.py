"""`journeys/segments.yaml`: named conditions and where each one syncs."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import ConfigDict, Field, field_validator

from nurture.spec.models import Condition, Strict


class Destination(Strict):
    """A sync target; destination-specific keys (audience_id, list_id, …) are checked by the
    destination integration itself."""
    model_config = ConfigDict(extra="allow", frozen=True)
    destination: str


class Segment(Strict):
    name: str
    description: str = ""
    when: Condition
    destinations: list[Destination] = Field(default_factory=list)


class SegmentsFile(Strict):
    segments: list[Segment] = Field(default_factory=list)
    sync: Optional[dict[str, Any]] = None

    @field_validator("segments")
    @classmethod
    def _unique(cls, value: list[Segment]) -> list[Segment]:
        seen: set[str] = set()
        for segment in value:
            if segment.name in seen:
                raise ValueError(f"segment '{segment.name}' is declared twice")
            seen.add(segment.name)
        return value

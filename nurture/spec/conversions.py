"""`journeys/conversions.yaml`: which events go to which ad platform as offline conversions.

```yaml
conversions:
  - event: deal_won            # a tracked event name, or a lifecycle stage: mql, sql, opportunity, customer
    since: 2026-11-01          # optional: no event before this is sent (default: what the platform accepts)
    destinations:
      - {destination: meta, dataset_id: "1234567890"}
      - {destination: google, operating_account: "1234567890", conversion_action: "987654321"}
      - {destination: linkedin, conversion_rule: "urn:lla:llaPartnerConversion:123"}
      - {destination: csv, name: won_deals}
```

The shape is checked here (pydantic, errors located `path:line:col` with a did-you-mean for
unknown keys); the destinations and their keys against the installed integrations in
nurture.conversions.validation.
"""
from __future__ import annotations

from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Optional

from pydantic import ConfigDict, Field, ValidationError, field_validator

from nurture.spec.errors import SpecError
from nurture.spec.model_errors import pydantic_errors
from nurture.spec.models import Strict
from nurture.spec.yaml_loader import Locations, load_located

MAX_EVENT_NAME = 200


class ConversionTarget(Strict):
    """Where a conversion goes; destination-specific keys (dataset_id, conversion_action, …)
    are checked against the destination integration."""
    model_config = ConfigDict(extra="allow", frozen=True)
    destination: str


class Conversion(Strict):
    event: str
    since: Optional[datetime] = None
    destinations: list[ConversionTarget]

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > MAX_EVENT_NAME or not value.isprintable():
            raise ValueError(f"an event name: printable text of 1 to {MAX_EVENT_NAME} characters")
        return value

    @field_validator("destinations")
    @classmethod
    def _some(cls, value: list[ConversionTarget]) -> list[ConversionTarget]:
        if not value:
            raise ValueError("a conversion needs at least one destination, e.g. [{destination: csv, name: sales}]")
        return value

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, value: Any) -> Any:
        """A date means its midnight UTC; a time without a zone is UTC."""
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime.combine(value, time(0), tzinfo=timezone.utc)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class ConversionsFile(Strict):
    """The file; an event declared twice is reported by nurture.conversions.validation."""
    conversions: list[Conversion] = Field(default_factory=list)


Entries = list[tuple[int, Conversion]]


def load_conversions(path: Path, display: str
                     ) -> tuple[Optional[ConversionsFile], Locations, list[SpecError], Entries]:
    """Parse and validate conversions.yaml's shape: (spec or None, locations, errors, and the
    entries whose own shape is valid with their index — so a typo in one entry does not hide
    an unknown destination in another)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, Locations(display), [SpecError(display, 1, 1, f"not UTF-8 text: {exc.reason}")], []
    data, locs, errors = load_located(text, display)
    if errors:
        return None, locs, errors, []
    if data is not None and not isinstance(data, dict):
        shape = "conversions.yaml holds a mapping: conversions: [{event, destinations}]"
        return None, locs, [locs.error((), shape)], []
    try:
        spec = ConversionsFile.model_validate(data or {})
    except ValidationError as exc:
        return None, locs, pydantic_errors(exc, locs, ConversionsFile), _valid_entries(data)
    return spec, locs, [], list(enumerate(spec.conversions))


def _valid_entries(data: Any) -> Entries:
    raw = data.get("conversions") if isinstance(data, dict) else None
    out: Entries = []
    for i, entry in enumerate(raw if isinstance(raw, list) else []):
        try:
            out.append((i, Conversion.model_validate(entry)))
        except ValidationError:
            continue
    return out

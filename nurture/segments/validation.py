"""Checks of `journeys/segments.yaml` beyond its shape, reported like journeys
(`path:line:col: message (hint)`): destinations known to the registry (CRM and audience
integrations, with a did-you-mean), the keys each destination requires (audience_id,
list_id, …) and no others, the form of a key's value where the destination declares one
(`key_formats = {key: (regex, what it must be)}` on its class, e.g. TikTok's numeric ids),
and conditions a segment can hold (no trigger `property`, no unknown or circular `segment`
reference).
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Optional

from nurture.registry import available
from nurture.spec.errors import SpecError, did_you_mean
from nurture.spec.yaml_loader import Locations

SYNC_ROLES = ("crm", "audience")


def sync_destinations() -> dict[str, type]:
    found: dict[str, type] = {}
    for role in SYNC_ROLES:
        found.update(available(role))
    return found


def _conditions(cond: Any, path: tuple) -> Iterator[tuple[Any, tuple]]:
    if cond is None:
        return
    yield cond, path
    for group in ("all", "any"):
        for i, child in enumerate(getattr(cond, group) or []):
            yield from _conditions(child, path + (group, i))
    if cond.not_ is not None:
        yield from _conditions(cond.not_, path + ("not",))


def _references(name: str, segments: Mapping[str, Any], seen: tuple = ()) -> Optional[tuple]:
    """A cycle of segment references starting at `name`, if any."""
    if name in seen:
        return seen + (name,)
    segment = segments.get(name)
    if segment is None:
        return None
    for cond, _ in _conditions(segment.when, ()):
        if cond.segment is not None:
            cycle = _references(cond.segment, segments, seen + (name,))
            if cycle:
                return cycle
    return None


def check_segments(segments: Mapping[str, Any], locs: Locations) -> list[SpecError]:
    errors: list[SpecError] = []
    known = sync_destinations()
    for i, (name, segment) in enumerate(segments.items()):
        base = ("segments", i)
        for cond, path in _conditions(segment.when, base + ("when",)):
            if cond.property is not None:
                errors.append(locs.error(path + ("property",), "'property' needs a trigger event; a segment "
                                         "can use 'attribute', 'event', 'score', 'consent' or 'segment'"))
            if cond.segment is not None and cond.segment not in segments:
                errors.append(locs.error(path + ("segment",), f"unknown segment '{cond.segment}'",
                                         did_you_mean(cond.segment, segments)))
        cycle = _references(name, segments)
        if cycle and cycle[0] == name:
            errors.append(locs.error(base + ("when",), "segments refer to each other in a circle: "
                                     + " -> ".join(cycle)))
        for j, dest in enumerate(segment.destinations):
            here = base + ("destinations", j)
            cls = known.get(dest.destination)
            if cls is None:
                hint = did_you_mean(dest.destination, known)
                errors.append(locs.error(here + ("destination",), f"unknown destination '{dest.destination}'",
                                         hint or f"known: {', '.join(sorted(known)) or 'none'}"))
                continue
            extra = dict(dest.model_extra or {})
            allowed = set(cls.required_keys) | set(cls.optional_keys)
            for key in cls.required_keys:
                value = extra.get(key)
                if value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
                    errors.append(locs.error(here, f"destination '{dest.destination}' needs '{key}'",
                                             f"e.g. {{destination: {dest.destination}, {key}: \"...\"}}"))
            for key, (pattern, what) in getattr(cls, "key_formats", {}).items():
                value = extra.get(key)
                if value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
                    continue  # missing: reported above
                if isinstance(value, bool) or not re.fullmatch(pattern, str(value).strip()):
                    errors.append(locs.error(here + (key,), f"'{key}' of destination '{dest.destination}' must be "
                                             f"{what}, not '{value}'", "copy it from the platform's UI, in quotes"))
            for key in extra:
                if key not in allowed:
                    errors.append(locs.error(here + (key,), f"unknown key '{key}' for destination "
                                             f"'{dest.destination}'",
                                             did_you_mean(key, allowed) or f"allowed: {', '.join(sorted(allowed))}",
                                             key=True))
    return errors

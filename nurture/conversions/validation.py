"""Checks of `journeys/conversions.yaml` beyond its shape, reported like journeys
(`path:line:col: message (hint)`): each event declared once, destinations known to the
registry's `conversions` role (with a did-you-mean), the keys each one requires and no others
(did-you-mean again), the values it can check (a dataset id of digits, a conversion rule
URN), and no destination listed twice for one event.
"""
from __future__ import annotations

from typing import Any, Iterable

from nurture.conversions.destination import ROLE, registered_name
from nurture.registry import available
from nurture.spec.errors import SpecError, did_you_mean
from nurture.spec.yaml_loader import Locations


def conversion_destinations() -> dict[str, type]:
    """platform name → class, for every installed conversions destination."""
    prefix = f"{ROLE}."
    return {name[len(prefix):]: cls for name, cls in available(ROLE).items() if name.startswith(prefix)}


def target_of(entry: Any) -> dict[str, Any]:
    """An entry's destination-specific keys, scalar values as text (ids may be written as numbers)."""
    return {k: (v if isinstance(v, (str, dict, list)) or v is None else
                (str(v).lower() if isinstance(v, bool) else str(v)))
            for k, v in (entry.model_extra or {}).items()}


def check_conversions(entries: Iterable[tuple[int, Any]], locs: Locations) -> list[SpecError]:
    """The errors of the (index, Conversion) entries of conversions.yaml."""
    errors: list[SpecError] = []
    known = conversion_destinations()
    events: dict[str, int] = {}
    for i, conversion in entries:
        if conversion.event in events:
            errors.append(locs.error(("conversions", i, "event"), f"event '{conversion.event}' is declared twice "
                                     f"(also conversions[{events[conversion.event]}])",
                                     "list all its destinations in one entry"))
        events.setdefault(conversion.event, i)
        keys_seen: dict[str, int] = {}
        for j, entry in enumerate(conversion.destinations):
            here = ("conversions", i, "destinations", j)
            cls = known.get(entry.destination)
            if cls is None:
                hint = did_you_mean(entry.destination, known)
                errors.append(locs.error(here + ("destination",), f"unknown conversions destination "
                                         f"'{entry.destination}'",
                                         hint or f"known: {', '.join(sorted(known)) or 'none'}"))
                continue
            target = target_of(entry)
            allowed = set(cls.required_keys) | set(cls.optional_keys)
            missing = False
            for key in cls.required_keys:
                value = target.get(key)
                if value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
                    missing = True
                    errors.append(locs.error(here, f"destination '{entry.destination}' needs '{key}'",
                                             f"e.g. {{destination: {entry.destination}, {key}: \"...\"}}"))
            for key in target:
                if key not in allowed:
                    errors.append(locs.error(here + (key,), f"unknown key '{key}' for conversions destination "
                                             f"'{entry.destination}'",
                                             did_you_mean(key, allowed) or f"allowed: {', '.join(sorted(allowed))}",
                                             key=True))
            for key, problem in cls.check_target(target).items():
                errors.append(locs.error(here + (key,), problem))
            if missing:
                continue
            key = cls.target_key(target)
            if key in keys_seen:
                errors.append(locs.error(here, f"'{conversion.event}' goes to {key} twice "
                                         f"(also destinations[{keys_seen[key]}])"))
            keys_seen.setdefault(key, j)
    return errors


def lookup_destination(platform: str) -> type:
    """The class of a platform's conversions destination (IntegrationError with the known ones)."""
    from nurture.registry import lookup
    return lookup(registered_name(platform), ROLE)

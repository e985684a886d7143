"""Pydantic validation errors as located spec errors (`path:line:col: message (hint)`): the
error's location in the YAML file, a message a marketer understands, and a did-you-mean for
an unknown key or value. Used by every loader of a YAML contract (journeys, policies,
segments, scoring)."""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from nurture.spec.errors import SpecError, did_you_mean
from nurture.spec.models import STEP_KINDS
from nurture.spec.yaml_loader import Locations


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, list, dict, Union)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out.extend(_unwrap(arg))
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (and aliases) of the model that the mapping at `loc` is validated by."""
    current: list[Any] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[Any] = []
        for cls in current:
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                for name, info in cls.model_fields.items():
                    if part in (name, info.alias):
                        nxt.extend(_unwrap(info.annotation))
            elif cls is dict or typing.get_origin(cls) is dict:
                nxt.append(cls)
        current = [c for c in nxt if c is not type(None)] or current
    keys: list[str] = []
    for cls in current:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            for name, info in cls.model_fields.items():
                keys.append(info.alias or name)
    return keys


def _clean_loc(loc: tuple, locs: Locations) -> tuple:
    path: tuple = ()
    for part in loc:
        candidate = path + (part,)
        if candidate in locs.values or candidate in locs.keys:
            path = candidate
    return path


def pydantic_errors(exc: ValidationError, locs: Locations, model: type[BaseModel],
                    prefix: tuple = ()) -> list[SpecError]:
    errors: list[SpecError] = []
    for err in exc.errors():
        # (an error may say where inside its field it is: spec.models.check_column_comparison)
        raw_loc = prefix + tuple(err["loc"]) + tuple((err.get("ctx") or {}).get("inside", ()))
        loc = _clean_loc(raw_loc, locs)
        kind = err["type"]
        message = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            key = raw_loc[-1]
            allowed = _allowed_keys(model, tuple(p for p in loc[len(prefix):-1]))
            hint = did_you_mean(key, allowed)
            if not hint and set(STEP_KINDS) <= set(allowed):  # a step of a kind that does not exist
                hint = f"a step is one of: {', '.join(STEP_KINDS)}"
            errors.append(locs.error(loc, f"unknown key '{key}'", hint, key=True))
        elif kind == "missing":
            errors.append(locs.error(loc, f"missing required key '{raw_loc[-1]}'"))
        elif kind in ("literal_error", "enum"):
            expected = err.get("ctx", {}).get("expected", "")
            options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip()]
            hint = did_you_mean(err.get("input"), options)
            errors.append(locs.error(loc, f"'{err.get('input')}' is not allowed here: expected {expected}", hint))
        else:
            errors.append(locs.error(loc, message))
    # One root cause can surface through several union branches: report it once.
    return sorted(set(errors))

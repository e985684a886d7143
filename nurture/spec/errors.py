"""Spec errors as values: a location a marketer can open, a message, and a hint."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, order=True)
class SpecError:
    path: str
    line: int
    col: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}:{self.line}:{self.col}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


class SpecInvalid(Exception):
    """Raised by loaders when a spec has errors; carries all of them."""

    def __init__(self, errors: list[SpecError]):
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

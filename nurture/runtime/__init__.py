"""The runtime: one tick of a journey as plain Python + SQL, in stages —
enroll → exit/convert → advance (with the guarded outbox) → deliver → report.
Prefect (flows/) only sequences these stages; tests run them directly.

`Runtime`, `TickReport` and `run_tick` are resolved lazily, so importing a leaf module such
as `nurture.runtime.sql` (the guards do) never drags the whole tick in (no import cycle)."""
from __future__ import annotations

from typing import Any

__all__ = ["Runtime", "TickReport", "run_tick"]


def __getattr__(name: str) -> Any:
    if name in ("Runtime", "TickReport"):
        from nurture.runtime import context
        return getattr(context, name)
    if name == "run_tick":
        from nurture.runtime.tick import run_tick
        return run_tick
    raise AttributeError(f"module 'nurture.runtime' has no attribute {name!r}")

"""The runtime: one tick of a journey as plain Python + SQL, in stages —
enroll → exit/convert → advance (with the guarded outbox) → deliver → report.
Prefect (flows/) only sequences these stages; tests run them directly."""
from nurture.runtime.context import Runtime, TickReport
from nurture.runtime.tick import run_tick

__all__ = ["Runtime", "TickReport", "run_tick"]

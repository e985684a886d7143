"""How report figures are written: money, percentages, signed percentage points."""
from __future__ import annotations

from typing import Optional


def money(value: float, currency: str = "€") -> str:
    return f"{value:,.2f} {currency}"


def pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def signed_points(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} pts"

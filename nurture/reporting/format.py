"""How report figures are written — the same in the terminal, the HTML page and the Prefect
artifact: money with two decimals and a thousands separator, counts as integers, rates and
signed percentage points with one decimal, ROI as a multiple; never "-0.0", and "n/a" for a
figure that does not exist (a goal without a value, a rate of nothing)."""
from __future__ import annotations

from typing import Optional

NA = "n/a"


def _clean(value: float, decimals: int) -> float:
    """Round for display and turn -0.0 (a tiny negative rounded away) into 0.0."""
    rounded = round(value, decimals)
    return 0.0 if rounded == 0 else rounded


def money(value: Optional[float], currency: str = "€") -> str:
    return NA if value is None else f"{_clean(value, 2):,.2f} {currency}"


def count(value: Optional[float]) -> str:
    """An integer as an integer (1,234), a fractional count (credited conversions) with one decimal."""
    if value is None:
        return NA
    rounded = _clean(float(value), 1)
    if rounded.is_integer():
        return f"{int(rounded):,}"
    return f"{rounded:,.1f}"


def pct(value: Optional[float]) -> str:
    return NA if value is None else f"{_clean(value * 100, 1):.1f}%"


def signed_points(value: Optional[float]) -> str:
    if value is None:
        return NA
    v = _clean(value * 100, 1)
    return "0.0 pts" if v == 0 else f"{v:+.1f} pts"


def multiple(value: Optional[float]) -> str:
    """An ROI: (revenue − cost) / cost as a multiple of the cost."""
    return NA if value is None else f"{_clean(value, 1):,.1f}×"


def interval(low: Optional[float], high: Optional[float], fmt=money) -> str:
    """"95% CI low … high", or "" without an interval."""
    if low is None or high is None:
        return ""
    return f"95% CI {fmt(low)} … {fmt(high)}"


def price(value: Optional[float], currency: str = "€") -> str:
    """A unit price: at least two decimals, more where a fraction of a cent matters (0.001 €)."""
    if value is None:
        return NA
    text = f"{_clean(value, 6):,.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')} {currency}"

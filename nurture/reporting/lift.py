"""Lift against the holdout: the difference of two conversion rates (messaged − holdout) with
Newcombe's hybrid score interval (Newcombe 1998, method 10: built from the two Wilson score
intervals). It behaves well at small counts and rates near 0 or 1, where the Wald interval
(p ± z·se) is too narrow or leaves [-1, 1]. Pure functions, no database."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional

Z95 = 1.959963984540054


def z_of(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence`: 0.95 → 1.95996 (Z95, to
    the last bit or so), 0.99 → 2.57583, 0.90 → 1.64485."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion x/n."""
    if n == 0:
        return (0.0, 1.0)
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Lift:
    treated_rate: float
    control_rate: float
    difference: float  # absolute, in conversion-rate points (0.05 = 5 points)
    low: Optional[float]  # interval of the difference (95 % unless `z` says otherwise); None without a control group
    high: Optional[float]
    relative: Optional[float]  # difference / control rate

    @property
    def significant(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def lift(x1: int, n1: int, x0: int, n0: int, z: float = Z95) -> Lift:
    """Treated x1 of n1 converted, control (holdout) x0 of n0."""
    p1 = x1 / n1 if n1 else 0.0
    p0 = x0 / n0 if n0 else 0.0
    d = p1 - p0
    if not n1 or not n0:
        return Lift(p1, p0, d, None, None, None)
    l1, u1 = wilson(x1, n1, z)
    l0, u0 = wilson(x0, n0, z)
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return Lift(p1, p0, d, low, high, d / p0 if p0 else None)

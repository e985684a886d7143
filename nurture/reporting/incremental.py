"""What a journey caused, not what its converters spent: incremental revenue against the
holdout and the ROI that follows from it, each with a 95 % interval. Pure functions.

Per member (an enrollment) the revenue is a number — 0 for most. The treated group (not in
the holdout) and the holdout are two independent random samples of the same population, so
the difference of their mean revenue per member estimates what the journey added per member:

    d    = mean_treated − mean_holdout
    se   = sqrt(s²_treated / n_treated + s²_holdout / n_holdout)     (Welch: unpooled variances,
                                                                     s² with n − 1)
    95 % = d ± 1.96 · se                                             (normal approximation)

incremental revenue = d × n_treated (its interval scaled the same way: the group size is
known, not estimated); incremental ROI = (incremental revenue − cost) / cost, its interval the
revenue interval mapped through the same (increasing) function — the cost is a known sum, not
a sample. Below two members in a group there is no variance, hence no interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from nurture.reporting.lift import Z95


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95 % interval (low/high None: no interval can be given; value None:
    the figure does not exist, e.g. revenue of a goal without a value)."""
    value: Optional[float]
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (for a difference) — meaningless for a ratio like ROI."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


NONE = Estimate(None)


@dataclass(frozen=True)
class Sample:
    """Sufficient statistics of per-member revenue: members, sum, sum of squares."""
    n: int
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float], members: int) -> "Sample":
        """`values`: the revenue of the members that have any (the other members had 0)."""
        values = [float(v) for v in values]
        return cls(members, math.fsum(values), math.fsum(v * v for v in values))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> Optional[float]:
        if self.n < 2:
            return None
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


def mean_difference(treated: Sample, control: Sample, z: float = Z95) -> Estimate:
    """mean(treated) − mean(control) with Welch's standard error and a normal interval."""
    if not treated.n or not control.n:
        return NONE
    d = treated.mean - control.mean
    v1, v0 = treated.variance, control.variance
    if v1 is None or v0 is None:
        return Estimate(d)
    half = z * math.sqrt(v1 / treated.n + v0 / control.n)
    return Estimate(d, d - half, d + half)


def incremental_revenue(treated: Sample, control: Sample, z: float = Z95) -> Estimate:
    """(revenue per treated member − revenue per holdout member) × treated members."""
    d = mean_difference(treated, control, z)
    if d.value is None:
        return NONE
    scale = treated.n
    return Estimate(d.value * scale, None if d.low is None else d.low * scale,
                    None if d.high is None else d.high * scale)


def roi(revenue: Estimate, cost: float) -> Estimate:
    """(revenue − cost) / cost for a revenue with an interval; no cost, no ROI."""
    if revenue.value is None or not cost or cost <= 0:
        return NONE

    def f(x: Optional[float]) -> Optional[float]:
        return None if x is None else (x - cost) / cost
    return Estimate(f(revenue.value), f(revenue.low), f(revenue.high))

"""Attribution of conversion revenue to the messages a converter received before converting:
last touch, first touch and position-based (40 % first, 40 % last, 20 % shared by the touches
in between; one touch gets everything, two touches split 50/50). Pure functions."""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable, Sequence

MODELS = ("last_touch", "first_touch", "position_based")


def position_weights(n: int) -> list[float]:
    if n == 0:
        return []
    if n == 1:
        return [1.0]
    if n == 2:
        return [0.5, 0.5]
    middle = 0.2 / (n - 2)
    return [0.4] + [middle] * (n - 2) + [0.4]


def attribute(conversions: Iterable[tuple[float, Sequence[Hashable]]]) -> dict[str, dict[Hashable, float]]:
    """conversions: (revenue, touches in time order). Returns model → touch → credited revenue.
    A conversion without touches is credited to no message (it stays unattributed)."""
    out: dict[str, dict[Hashable, float]] = {m: defaultdict(float) for m in MODELS}
    for revenue, touches in conversions:
        if not touches:
            continue
        out["last_touch"][touches[-1]] += revenue
        out["first_touch"][touches[0]] += revenue
        for touch, weight in zip(touches, position_weights(len(touches))):
            out["position_based"][touch] += revenue * weight
    return {m: dict(v) for m, v in out.items()}


def attribute_counts(conversions: Iterable[Sequence[Hashable]]) -> dict[str, dict[Hashable, float]]:
    """The same split applied to conversion counts (each conversion is worth 1)."""
    return attribute((1.0, touches) for touches in conversions)

"""Deterministic 'randomness' for holdouts and splits: a hash of (journey, contact), so the
same contact lands in the same group on every machine, every tick and every re-run."""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence


def unit_interval(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(journey: str, contact_id: int, share: float) -> bool:
    return share > 0 and unit_interval("holdout", journey, contact_id) < share


def pick_arm(journey: str, step_id: str, contact_id: int, arms: Sequence[tuple[str, float, Optional[str]]]
             ) -> tuple[str, float, Optional[str]]:
    total = sum(weight for _, weight, _ in arms)
    point = unit_interval("split", journey, step_id, contact_id) * total
    for arm in arms:
        point -= arm[1]
        if point < 0:
            return arm
    return arms[-1]

"""Removing given contacts from a target now — the sync's removal path, run outside the nightly
diff (an erasure must not wait for the night).

Exactly what `sync.sync_target` does with its removals: the destination's `remove()` with the
payload it acknowledged when the contact was added (hashed identifiers, a CRM record id), in
batches of its `max_batch`; the acknowledged membership rows are forgotten only for the
members the destination confirmed, so a failed member stays and the next run (or the next
sync: an erased contact matches no segment) retries exactly it. Each call records a `sync_run`
row (removed, failed, the remaining members) like a sync does, reasons masked with the
configured secrets.

`resolve_target` (nurture.segments.sync) finds the target a membership row's key names: from
segments.yaml, or — for a target no longer configured — rebuilt from the key itself (`meta:123`
→ destination `meta`, `{audience_id: "123"}`), so a contact held by an audience that was since
removed from the configuration can still be taken out of it.

A removal holds the target's lock like a sync (nurture.segments.target_lock); one that waited
REMOVAL_LOCK_WAIT for a sync of the same target still running is a failed removal (its rows
stay: that sync, or the next, removes an erased contact, who matches no segment). One that lost
its lock to another run midway stops there, `interrupted`: the members not removed yet stay, as
failed, for that run or the next.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from typing import Sequence

from sqlalchemy import func, select

from nurture.redaction import redact
from nurture.registry import SyncDestination, SyncMember
from nurture.segments.sync import (SyncTarget, TargetReport, _finish, _forget, _record_failure, _wall, push_removals,
                                   resolve_target)
from nurture.segments.target_lock import Hold, TargetBusy, target_lock
from nurture.store.db import Store
from nurture.store.tables import membership_t, sync_run_t


__all__ = ["REMOVAL_LOCK_WAIT", "forget_members", "remove_members", "resolve_target"]

REMOVAL_LOCK_WAIT = 120.0  # seconds: an erasure answers within minutes, pending if a sync holds the target


def remove_members(store: Store, ref: SyncTarget, destination: SyncDestination, members: Sequence[SyncMember], *,
                   secrets: Sequence[str] = ()) -> tuple[TargetReport, set[int]]:
    """Remove `members` (their `payload` as acknowledged) from one target now; the report (also
    recorded as a `sync_run` row) and the contact ids the destination confirmed."""
    try:
        with target_lock(store, ref.key, wait=REMOVAL_LOCK_WAIT) as hold:
            return _remove_locked(store, ref, destination, members, secrets, hold)
    except TargetBusy as exc:
        report = _record_failure(store, ref, str(exc))
        report.failed = len(members)
        return report, set()


def _remove_locked(store: Store, ref: SyncTarget, destination: SyncDestination, members: Sequence[SyncMember],
                   secrets: Sequence[str], hold: Hold) -> tuple[TargetReport, set[int]]:
    started = time.perf_counter()
    report = TargetReport(ref.segment, ref.destination, ref.key)
    requests_before = destination.requests_sent
    with store.engine.begin() as conn:
        run_id = conn.execute(sync_run_t.insert().values(
            segment=ref.segment, target=ref.key, destination=ref.destination, started_at=_wall(),
            status="running", members=0, added=0, removed=0, updated=0, failed=0, requests=0, duration_ms=0,
            errors=[])).inserted_primary_key[0]
    reasons: Counter = Counter()
    removed: set[int] = set()
    session = random.getrandbits(62)
    try:
        report.failed += push_removals(store, destination, ref, list(members), session, removed, reasons, secrets,
                                       hold=hold)
    except Exception as exc:  # a bug in a plug-in: this target fails, the others still run
        reasons[redact(f"{type(exc).__name__} in {ref.destination}: {exc}", secrets)[:300]] += 1
        report.failed = len(members) - len(removed)
    report.removed = len(removed)
    with store.reading() as conn:
        report.members = conn.execute(select(func.count()).select_from(membership_t).where(
            membership_t.c.segment == ref.segment, membership_t.c.target == ref.key)).scalar_one()
    report.requests = destination.requests_sent - requests_before
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    report.errors = [{"reason": reason, "count": n} for reason, n in reasons.most_common(20)]
    report.status = "ok" if not report.failed else ("partial" if removed else "failed")
    if hold.lost is not None:  # the members not sent yet stay for the run that holds the target now
        report.failed = len(members) - len(removed)
        report.errors = [{"reason": hold.lost, "count": 1}] + report.errors[:19]
        report.status = "interrupted"
    _finish(store, run_id, report)
    return report, removed


def forget_members(store: Store, segment: str, key: str, contact_ids: Sequence[int]) -> None:
    """Forget acknowledged rows without a request: the destination itself already removed the
    records (a CRM that deleted the person and told us so)."""
    with store.engine.begin() as conn:
        _forget(conn, SyncTarget(segment, key.partition(":")[0], {}, key), list(contact_ids))

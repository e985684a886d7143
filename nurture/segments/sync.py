"""The diff sync of segments to their destinations.

Per (segment, destination) — a *target*, keyed like `meta:123` — the state to diff against
is `segment_membership`: what the destination acknowledged. One run:
1. diff in SQL: contacts in the segment (nurture.segments.membership) with no acknowledged
   row, or whose contact row changed since it was acknowledged → candidate adds; rows of
   contacts no longer in the segment → removes. Python touches only these changes.
2. a changed contact whose identifiers hash the same is just re-stamped. One whose
   identifiers changed is updated in place when the destination can (`UpdatesInPlace`: a
   CRM record under the same key — its list membership is left alone); otherwise it is
   removed (old payload) and added again (new payload), as an ad audience must: it matches
   on the hashes, so the old ones have to go.
3. removes, in-place updates, then adds, in batches of the destination's limit; after each
   batch, in one short transaction, acknowledged rows are deleted/upserted. A member the destination
   failed stays as it was, so the next run retries exactly it; a crash between a request
   and its acknowledgement re-sends that batch next run (adds and removes are idempotent at
   every provider), so nothing is lost and nothing doubles.
4. a `sync_run` row: members, added, removed, updated, failed, requests, duration, errors.
Every reason that reaches a `sync_run` row (and from there the CLI and the Prefect artifact)
goes through `nurture.redaction.redact` with the configured secrets first, whatever the
destination put in it: a provider that quotes a token back never gets it recorded.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence, runtime_checkable

from sqlalchemy import and_, bindparam, exists, func, null, or_, select, update

from nurture.redaction import redact, secrets_in
from nurture.registry import (IntegrationContext, IntegrationError, MemberResult, SyncBatch, SyncDestination,
                              SyncMember, lookup)
from nurture.segments.membership import desired
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.tables import contact_t, membership_t, sync_run_t

SYNC_ROLES = ("crm", "audience")


class UnknownSegment(LookupError):
    pass


@dataclass(frozen=True)
class SyncTarget:
    segment: str
    destination: str
    target: dict
    key: str


@dataclass
class TargetReport:
    segment: str
    destination: str
    target: str
    status: str = "ok"
    members: int = 0
    added: int = 0
    removed: int = 0
    updated: int = 0
    failed: int = 0
    requests: int = 0
    duration_ms: int = 0
    errors: list = field(default_factory=list)  # [{"reason", "count"}]

    def row(self) -> dict:
        data = asdict(self)
        data["errors"] = "; ".join(f"{e['reason']} (x{e['count']})" for e in self.errors)
        return data


@runtime_checkable
class UpdatesInPlace(Protocol):
    """A destination that can change a member it already holds without taking it out first: a
    CRM whose record stays the same record when its properties change. Removing and re-adding
    such a member would fire the CRM's list workflows again, and leave it out of the list when
    the add failed."""

    def updates_in_place(self, acknowledged: dict, identifiers: dict) -> bool:
        """Can the member acknowledged with payload `acknowledged` take its new `identifiers`
        through `update()` (e.g. the same record key)? Pure."""

    def update(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        """Write the members' current identifiers (each member carries its acknowledged
        `payload`); one result per member, its payload to remember on success. Never a removal."""


def destination_class(name: str) -> type[SyncDestination]:
    for role in SYNC_ROLES:
        try:
            return lookup(name, role)  # type: ignore[return-value]
        except IntegrationError:
            continue
    return lookup(name, "audience")  # type: ignore[return-value]  # raises with the hint


def targets(project: ProjectSpec, segment: Optional[str] = None) -> list[SyncTarget]:
    if segment is not None and segment not in project.segments:
        from nurture.spec.errors import did_you_mean
        hint = did_you_mean(segment, project.segments)
        raise UnknownSegment(f"no segment named '{segment}'" + (f" ({hint})" if hint else "")
                             + f"; known: {', '.join(sorted(project.segments)) or 'none'}")
    out = []
    for name, spec in project.segments.items():
        if segment is not None and name != segment:
            continue
        for dest in spec.destinations:
            target = {k: (str(v) if not isinstance(v, str) else v) for k, v in (dest.model_extra or {}).items()}
            cls = destination_class(dest.destination)
            out.append(SyncTarget(name, dest.destination, target, cls.target_key(target)))
    return out


def fingerprint(identifiers: Optional[dict]) -> str:
    return hashlib.sha256(json.dumps(identifiers, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def _member(row: Any) -> SyncMember:
    return SyncMember(row.id, row.email, row.phone, row.first_name, row.last_name, row.country)


def push_removals(store: Store, destination: Any, ref: Any, members: list, session: int, removed: set[int],
                  reasons: Counter, secrets: Any) -> int:
    """Remove `members` from the destination in its batches, forgetting each acknowledged
    removal at once (a crash loses nothing); acknowledged ids go into `removed`, failure
    reasons into `reasons`. The number of members the destination refused."""
    failed = 0
    for seq, last, chunk in _chunks(members, destination.max_batch):
        if not chunk:
            break
        results = destination.remove(ref.target, chunk, SyncBatch(session, seq, last, len(members)))
        ok = [r.contact_id for r in results if r.ok]
        with store.engine.begin() as conn:
            _forget(conn, ref, ok)
        removed.update(ok)
        for r in results:
            if not r.ok:
                reasons[redact(r.reason, secrets) or "failed"] += 1
                failed += 1
    return failed


def push_members(store: Store, send: Callable[..., list[MemberResult]], max_batch: int, ref: SyncTarget,
                 members: list[tuple[SyncMember, datetime, str]], session: int, reasons: Counter,
                 secrets: Any) -> tuple[set[int], int]:
    """Send `members` (member, contact version, fingerprint) through `send` (the destination's
    `add` or `update`) in batches of `max_batch`, acknowledging each batch's confirmed members at
    once in one short transaction; failure reasons go into `reasons`. The contact ids confirmed,
    and the number of members the destination refused."""
    meta = {m.contact_id: (v, fp) for m, v, fp in members}
    confirmed: set[int] = set()
    failed = 0
    if not members:
        return confirmed, failed
    for seq, last, chunk in _chunks([m for m, _, _ in members], max_batch):
        results = send(ref.target, chunk, SyncBatch(session, seq, last, len(members)))
        acked = _wall()
        rows = []
        for r in results:
            if r.ok:
                version, fp = meta[r.contact_id]
                rows.append({"segment": ref.segment, "target": ref.key, "contact_id": r.contact_id,
                             "contact_version": version, "fingerprint": fp, "payload": r.payload,
                             "acked_at": acked})
                confirmed.add(r.contact_id)
            else:
                reasons[redact(r.reason, secrets) or "failed"] += 1
                failed += 1
        with store.engine.begin() as conn:
            _upsert(conn, rows)
    return confirmed, failed


def _chunks(items: Sequence[Any], size: int) -> Iterable[tuple[int, bool, Sequence[Any]]]:
    n = max(1, -(-len(items) // size))
    for i in range(n):
        yield i + 1, i == n - 1, items[i * size:(i + 1) * size]


@dataclass
class Diff:
    adds: list[tuple[SyncMember, datetime, str]] = field(default_factory=list)  # member, version, fingerprint
    removes: list[SyncMember] = field(default_factory=list)  # payload = as acknowledged
    updates: list[tuple[SyncMember, SyncMember, datetime, str]] = field(default_factory=list)  # old, new, v, fp
    # current identifiers with the acknowledged payload, v, fp: changed, but updated in place
    in_place: list[tuple[SyncMember, datetime, str]] = field(default_factory=list)
    touches: list[dict] = field(default_factory=list)  # {"mid", "v"}
    unusable: list[int] = field(default_factory=list)  # in the segment, no identifier this destination takes


DIFF_CONTACT_COLUMNS = ("id", "email", "phone", "first_name", "last_name", "country", "updated_at")


def _diff_queries(dialect: str, want: Any, ref: SyncTarget) -> list[Any]:
    """The rows that differ between the segment (`want`, over contact) and what `ref`
    acknowledged — one row per changed contact: its current columns (NULL when it left the
    segment) beside its acknowledged row (NULL when it is new).

    PostgreSQL: one FULL JOIN, so the membership expression is evaluated once (a merge or
    hash join: the planner cannot estimate a JSON/consent condition, and a FULL JOIN leaves
    it no nested-loop plan to mis-pick). SQLite (FULL JOIN only since 3.39): the same rows as
    a left join plus an anti-join, which it plans well with its correlated subqueries."""
    m = membership_t
    held = and_(m.c.segment == ref.segment, m.c.target == ref.key)
    contact_cols = [contact_t.c[name] for name in DIFF_CONTACT_COLUMNS]
    if dialect == "postgresql":
        d = select(*contact_cols).where(want).subquery("desired")
        h = select(m.c.id, m.c.contact_id, m.c.contact_version, m.c.fingerprint, m.c.payload).where(held).subquery("held")
        return [select(*[d.c[name] for name in DIFF_CONTACT_COLUMNS], h.c.id.label("mid"),
                       h.c.contact_id.label("held_id"), h.c.fingerprint, h.c.payload)
                .select_from(d.join(h, h.c.contact_id == d.c.id, full=True))
                .where(or_(h.c.id.is_(None), d.c.id.is_(None), h.c.contact_version != d.c.updated_at))
                .order_by(func.coalesce(d.c.id, h.c.contact_id))]
    joined = contact_t.outerjoin(m, and_(m.c.contact_id == contact_t.c.id, held))
    changed = (select(*contact_cols, m.c.id.label("mid"), m.c.contact_id.label("held_id"), m.c.fingerprint,
                      m.c.payload)
               .select_from(joined)
               .where(want, or_(m.c.id.is_(None), m.c.contact_version != contact_t.c.updated_at))
               .order_by(contact_t.c.id))
    still = exists(select(contact_t.c.id).where(contact_t.c.id == m.c.contact_id, want))
    left = (select(*[null().label(name) for name in DIFF_CONTACT_COLUMNS], m.c.id.label("mid"),
                   m.c.contact_id.label("held_id"), m.c.fingerprint, m.c.payload)
            .where(held, ~still)
            .order_by(m.c.contact_id))
    return [changed, left]


def compute_diff(store: Store, project: ProjectSpec, ref: SyncTarget, destination: SyncDestination,
                 now: datetime) -> Diff:
    """The changes to push, computed in the database; memory grows with the changes only."""
    want = desired(project.segments[ref.segment], project.segments, type(destination), now)
    in_place = destination.updates_in_place if isinstance(destination, UpdatesInPlace) else None
    with store.reading() as conn:
        rows = [row for query in _diff_queries(store.dialect, want, ref) for row in conn.execute(query).all()]
    diff = Diff()
    for row in rows:
        if row.id is None:  # acknowledged, no longer in the segment (or deleted)
            diff.removes.append(SyncMember(row.held_id, payload=dict(row.payload or {})))
            continue
        member = _member(row)
        ident = destination.identifiers(member)
        if ident is None:
            if row.mid is None:
                diff.unusable.append(row.id)
            else:  # it lost its last usable identifier: it must leave the audience
                diff.removes.append(SyncMember(row.id, payload=dict(row.payload or {})))
            continue
        fp = fingerprint(ident)
        if row.mid is None:
            diff.adds.append((member, row.updated_at, fp))
        elif fp == row.fingerprint:
            diff.touches.append({"mid": row.mid, "v": row.updated_at})
        elif in_place is not None and in_place(dict(row.payload or {}), ident):
            diff.in_place.append((replace(member, payload=dict(row.payload or {})), row.updated_at, fp))
        else:
            diff.updates.append((SyncMember(row.id, payload=dict(row.payload or {})), member, row.updated_at, fp))
    return diff


def _upsert(conn: Any, rows: list[dict]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(membership_t)
    stmt = stmt.on_conflict_do_update(
        index_elements=["segment", "target", "contact_id"],
        set_={k: stmt.excluded[k] for k in ("contact_version", "fingerprint", "payload", "acked_at")})
    conn.execute(stmt, rows)


def _forget(conn: Any, ref: SyncTarget, contact_ids: list[int]) -> None:
    if contact_ids:
        conn.execute(membership_t.delete().where(membership_t.c.segment == ref.segment,
                                                 membership_t.c.target == ref.key,
                                                 membership_t.c.contact_id.in_(contact_ids)))


def _wall() -> datetime:
    return datetime.now(timezone.utc)


def sync_target(store: Store, project: ProjectSpec, ref: SyncTarget, destination: SyncDestination,
                now: datetime, *, session_id: Optional[int] = None, secrets: Sequence[str] = ()) -> TargetReport:
    """Push one target's changes; `secrets` are masked in every recorded reason."""
    started = time.perf_counter()
    report = TargetReport(ref.segment, ref.destination, ref.key)
    requests_before = destination.requests_sent
    reasons: Counter = Counter()
    with store.engine.begin() as conn:
        conn.execute(update(sync_run_t).where(sync_run_t.c.segment == ref.segment, sync_run_t.c.target == ref.key,
                                              sync_run_t.c.status == "running").values(status="interrupted"))
        run_id = conn.execute(sync_run_t.insert().values(
            segment=ref.segment, target=ref.key, destination=ref.destination, started_at=_wall(),
            status="running", members=0, added=0, removed=0, updated=0, failed=0, requests=0, duration_ms=0,
            errors=[])).inserted_primary_key[0]

    diff = compute_diff(store, project, ref, destination, now)
    session = session_id if session_id is not None else random.getrandbits(62)
    succeeded = 0

    if diff.touches:
        with store.engine.begin() as conn:
            conn.execute(update(membership_t).where(membership_t.c.id == bindparam("mid"))
                         .values(contact_version=bindparam("v")), diff.touches)
    for cid in diff.unusable:
        reasons["no identifier this destination can match"] += 1
    report.failed += len(diff.unusable)

    # Removals first (incl. the old identifiers of replaced contacts), in-place updates, then additions.
    updated_ids = {old.contact_id for old, _, _, _ in diff.updates}
    to_remove = diff.removes + [old for old, _, _, _ in diff.updates]
    removed_ok: set[int] = set()
    report.failed += push_removals(store, destination, ref, to_remove, session, removed_ok, reasons, secrets)
    report.removed = len(removed_ok - updated_ids)

    # Changed members the destination updates in place: the acknowledged row is replaced only
    # when it confirms, so a failed update keeps the old state (and the member) for the next run.
    changed_ok: set[int] = set()
    if diff.in_place:  # only an UpdatesInPlace destination fills it
        update_members = destination.update  # type: ignore[attr-defined]
        changed_ok, failed = push_members(store, update_members, destination.max_batch, ref, diff.in_place,
                                          session + 2, reasons, secrets)
        report.failed += failed

    to_add = diff.adds + [(new, v, fp) for old, new, v, fp in diff.updates if old.contact_id in removed_ok]
    added_ids, failed = push_members(store, destination.add, destination.max_batch, ref, to_add, session + 1,
                                     reasons, secrets)
    report.failed += failed
    report.added = len(added_ids - updated_ids)
    report.updated = len(added_ids & updated_ids) + len(changed_ok)
    succeeded = len(added_ids) + len(removed_ok) + len(changed_ok)

    with store.reading() as conn:
        report.members = conn.execute(select(func.count()).select_from(membership_t).where(
            membership_t.c.segment == ref.segment, membership_t.c.target == ref.key)).scalar_one()
    report.requests = destination.requests_sent - requests_before
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    report.errors = [{"reason": reason, "count": n} for reason, n in reasons.most_common(20)]
    report.status = "ok" if not report.failed else ("partial" if succeeded or diff.touches else "failed")
    _finish(store, run_id, report)
    return report


def _finish(store: Store, run_id: int, report: TargetReport) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(sync_run_t).where(sync_run_t.c.id == run_id).values(
            finished_at=_wall(), status=report.status, members=report.members, added=report.added,
            removed=report.removed, updated=report.updated, failed=report.failed, requests=report.requests,
            duration_ms=report.duration_ms, errors=report.errors))


def _record_failure(store: Store, ref: SyncTarget, reason: str) -> TargetReport:
    report = TargetReport(ref.segment, ref.destination, ref.key, status="failed",
                          errors=[{"reason": reason, "count": 1}])
    with store.engine.begin() as conn:
        run_id = conn.execute(sync_run_t.insert().values(
            segment=ref.segment, target=ref.key, destination=ref.destination, started_at=_wall(),
            status="failed", members=0, added=0, removed=0, updated=0, failed=0, requests=0, duration_ms=0,
            errors=[])).inserted_primary_key[0]
    _finish(store, run_id, report)
    return report


Factory = Callable[[str, IntegrationContext], SyncDestination]


def default_factory(name: str, context: IntegrationContext) -> SyncDestination:
    return destination_class(name).from_env(context)  # type: ignore[return-value]


def sync_one(store: Store, project: ProjectSpec, ref: SyncTarget, now: datetime, context: IntegrationContext,
             factory: Optional[Factory] = None) -> TargetReport:
    """Sync one target; a destination that cannot even start (missing credentials) is a
    failed sync_run with its reason, never an exception that stops the other targets. The
    secrets configured in `context.env` are masked in every reason recorded."""
    secrets = secrets_in(context.env)
    try:
        destination = (factory or default_factory)(ref.destination, context)
    except IntegrationError as exc:
        return _record_failure(store, ref, redact(str(exc), secrets) or "")
    try:
        return sync_target(store, project, ref, destination, now, secrets=secrets)
    except Exception as exc:  # a bug in a plug-in: this target fails loudly, the others still run
        with store.engine.begin() as conn:
            conn.execute(update(sync_run_t).where(sync_run_t.c.segment == ref.segment,
                                                  sync_run_t.c.target == ref.key,
                                                  sync_run_t.c.status == "running").values(status="interrupted"))
        reason = redact(f"{type(exc).__name__} in {ref.destination}: {exc}", secrets) or ""
        return _record_failure(store, ref, reason[:300])
    finally:
        destination.close()


def sync_segments(store: Store, project: ProjectSpec, now: datetime, context: IntegrationContext, *,
                  segment: Optional[str] = None, factory: Optional[Factory] = None) -> list[TargetReport]:
    return [sync_one(store, project, ref, now, context, factory) for ref in targets(project, segment)]

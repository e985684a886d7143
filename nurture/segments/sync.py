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

One run at a time per target key: a run holds the target's lock (nurture.segments.target_lock)
from its diff to its last acknowledgement, so a second run (a manual sync beside the nightly
one, a retry, another segment feeding the same audience) diffs against what the first one left.
The lock is confirmed before each batch: a run that lost it (PostgreSQL: its session ended) and
finds another run holding it sends nothing more and ends `interrupted` with what it acknowledged.
A removal forgets only the acknowledged row it removed (same fingerprint), and it is not sent
when another acknowledged row of the same target key (another segment, or a contact whose
identifiers normalize the same, e.g. Google's gmail rules) holds the same identifiers: the
platform holds them once, and the other member still needs them.

Right before each batch of additions (and in-place updates) the batch's contacts are checked
against the segment again, so a contact erased, revoked or suppressed since the diff is not
sent; and the acknowledgement checks them once more (on PostgreSQL with the contact rows
share-locked, which an erasure's lock waits for): one that left while its batch was at the
provider is acknowledged and removed again by the same run at once.

Acknowledged rows of a (segment, target) no longer in segments.yaml — a segment deleted or
renamed, a destination removed, an audience id corrected — are a *detached* target
(`detached_targets`): a full run removes every member it still holds from it (the audience is
no longer fed by the segment, so nobody in it is there by Nurture's configuration any more),
then forgets the rows; a member the destination fails stays and the next run retries it.

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
from nurture.runtime.sql import ids_in, texts_in
from nurture.segments.membership import desired
from nurture.segments.target_lock import Hold, TargetBusy, target_lock
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.tables import contact_t, membership_t, sync_run_t

SYNC_ROLES = ("crm", "audience")
# How long a run waits for another run of the same target before it gives up (a failed target).
SYNC_LOCK_WAIT = 15 * 60.0


class UnknownSegment(LookupError):
    pass


@dataclass(frozen=True)
class SyncTarget:
    segment: str
    destination: str
    target: dict
    key: str
    detached: bool = False  # held rows, no longer in segments.yaml: every member is removed


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
    detached: bool = False  # a target no longer in segments.yaml, being emptied

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


def resolve_target(project: ProjectSpec, segment: str, key: str) -> SyncTarget:
    """The target of membership rows `(segment, key)`: from segments.yaml (any destination with
    that key, so its optional keys are kept), or — for a target no longer configured — rebuilt
    from the key itself (`meta:123` → destination `meta`, `{audience_id: "123"}`).
    IntegrationError when neither can say which destination and audience it is."""
    for spec in project.segments.values():
        for dest in spec.destinations:
            try:
                cls = destination_class(dest.destination)
            except IntegrationError:
                continue
            target = {k: (str(v) if not isinstance(v, str) else v) for k, v in (dest.model_extra or {}).items()}
            try:
                if cls.target_key(target) == key:
                    return SyncTarget(segment, dest.destination, target, key)
            except KeyError:  # a target missing a required key: segments.yaml is invalid there
                continue
    name, _, rest = key.partition(":")
    cls = destination_class(name)  # IntegrationError: no such destination installed
    keys = cls.required_keys
    values = rest.split(":", len(keys) - 1) if keys else []
    target = dict(zip(keys, values))
    if len(values) != len(keys) or cls.target_key(target) != key:
        raise IntegrationError(f"cannot tell the audience of '{key}' (no longer in segments.yaml)")
    return SyncTarget(segment, name, target, key)


def detached_targets(store: Store, project: ProjectSpec, segment: Optional[str] = None) -> list[SyncTarget]:
    """The (segment, target key) pairs with acknowledged rows that segments.yaml no longer
    configures (of `segment` only, when given), as `detached` targets; `sync_one` resolves
    each (`resolve_target`) and empties it."""
    configured = set()
    for name, spec in project.segments.items():
        for dest in spec.destinations:
            try:
                cls = destination_class(dest.destination)
                target = {k: (str(v) if not isinstance(v, str) else v) for k, v in (dest.model_extra or {}).items()}
                configured.add((name, cls.target_key(target)))
            except (IntegrationError, KeyError):  # invalid there: `targets` reports it
                continue
    query = select(membership_t.c.segment, membership_t.c.target).distinct()
    if segment is not None:
        query = query.where(membership_t.c.segment == segment)
    with store.reading() as conn:
        held = conn.execute(query.order_by(membership_t.c.segment, membership_t.c.target)).all()
    return [SyncTarget(seg, key.partition(":")[0], {}, key, detached=True)
            for seg, key in held if (seg, key) not in configured]


def fingerprint(identifiers: Optional[dict]) -> str:
    return hashlib.sha256(json.dumps(identifiers, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def _member(row: Any) -> SyncMember:
    return SyncMember(row.id, row.email, row.phone, row.first_name, row.last_name, row.country)


def push_removals(store: Store, destination: Any, ref: Any, members: list, session: int, removed: set[int],
                  reasons: Counter, secrets: Any, fingerprints: Optional[dict[int, str]] = None, *,
                  hold: Optional[Hold] = None) -> int:
    """Remove `members` from the destination in its batches, forgetting each acknowledged
    removal at once (a crash loses nothing); acknowledged ids go into `removed`, failure
    reasons into `reasons`. The number of members the destination refused.

    `fingerprints` (contact id → the fingerprint of the acknowledged row being removed; read from
    the rows when not given): only a row that still holds it is forgotten, and a member whose
    identifiers another acknowledged row of the same target key still holds is not sent — the
    platform keeps one entry for both — only its own row is forgotten.

    `hold` (the target's lock) is confirmed before each batch: once it is lost to another run,
    no further batch is sent (the caller reads why in `hold.lost`)."""
    failed = 0
    leaving = {m.contact_id for m in members}
    for seq, last, chunk in _chunks(members, destination.max_batch):
        if not chunk or (hold is not None and not hold.confirm()):
            break
        ids = [m.contact_id for m in chunk]
        with store.reading() as conn:
            fps = dict(fingerprints or {})
            if fingerprints is None:
                fps.update(conn.execute(select(membership_t.c.contact_id, membership_t.c.fingerprint).where(
                    membership_t.c.segment == ref.segment, membership_t.c.target == ref.key,
                    ids_in(membership_t.c.contact_id, ids))).all())
            shared = _still_needed(conn, ref, {fps[i] for i in ids if i in fps}, leaving)
        kept = [m for m in chunk if fps.get(m.contact_id) in shared]
        send = [m for m in chunk if fps.get(m.contact_id) not in shared]
        results = destination.remove(ref.target, send, SyncBatch(session, seq, last, len(members))) if send else []
        ok = [r.contact_id for r in results if r.ok] + [m.contact_id for m in kept]
        with store.engine.begin() as conn:
            _forget(conn, ref, ok, fps)
        removed.update(ok)
        for r in results:
            if not r.ok:
                reasons[redact(r.reason, secrets) or "failed"] += 1
                failed += 1
    return failed


def _still_needed(conn: Any, ref: Any, fps: set[str], leaving: set[int]) -> set[str]:
    """Of the fingerprints `fps`, those another acknowledged row of `ref`'s target key holds (any
    segment; in `ref`'s own segment, a contact not among `leaving`)."""
    if not fps:
        return set()
    m = membership_t
    rows = conn.execute(select(m.c.segment, m.c.contact_id, m.c.fingerprint).where(
        m.c.target == ref.key, texts_in(m.c.fingerprint, sorted(fps)))).all()
    return {fp for segment, cid, fp in rows if segment != ref.segment or cid not in leaving}


Wanted = Callable[[Any, Sequence[int]], set[int]]  # (connection, contact ids) -> those still wanted


def push_members(store: Store, send: Callable[..., list[MemberResult]], max_batch: int, ref: SyncTarget,
                 members: list[tuple[SyncMember, datetime, str]], session: int, reasons: Counter,
                 secrets: Any, wanted: Optional[Wanted] = None,
                 late: Optional[list[tuple[SyncMember, str]]] = None, *,
                 hold: Optional[Hold] = None) -> tuple[set[int], int]:
    """Send `members` (member, contact version, fingerprint) through `send` (the destination's
    `add` or `update`) in batches of `max_batch`, acknowledging each batch's confirmed members at
    once in one short transaction; failure reasons go into `reasons`. The contact ids confirmed,
    and the number of members the destination refused.

    `wanted` re-checks a batch's contacts right before it is sent (one no longer wanted is left
    out: not sent, not failed) and again in the acknowledging transaction: a confirmed member no
    longer wanted then (erased or revoked while its batch was at the provider) is acknowledged
    all the same — so its removal is never lost — and put on `late` (member with the payload
    acknowledged, fingerprint) for the caller to remove at once; it is not among the confirmed.

    `hold` (the target's lock) is confirmed before each batch: once it is lost to another run,
    no further batch is sent (the caller reads why in `hold.lost`); a batch already at the
    provider is acknowledged all the same (that is what the provider holds now)."""
    meta = {m.contact_id: (v, fp) for m, v, fp in members}
    confirmed: set[int] = set()
    failed = 0
    if not members:
        return confirmed, failed
    for seq, last, chunk in _chunks([m for m, _, _ in members], max_batch):
        if hold is not None and not hold.confirm():
            break
        if wanted is not None:
            with store.reading() as conn:
                still = wanted(conn, [m.contact_id for m in chunk])
            chunk = [m for m in chunk if m.contact_id in still]
            if not chunk:
                continue
        results = send(ref.target, chunk, SyncBatch(session, seq, last, len(members)))
        acked = _wall()
        rows = []
        for r in results:
            if r.ok:
                version, fp = meta[r.contact_id]
                rows.append({"segment": ref.segment, "target": ref.key, "contact_id": r.contact_id,
                             "contact_version": version, "fingerprint": fp, "payload": r.payload,
                             "acked_at": acked})
            else:
                reasons[redact(r.reason, secrets) or "failed"] += 1
                failed += 1
        with store.engine.begin() as conn:
            gone: set[int] = set()
            if wanted is not None and rows:
                ids = [row["contact_id"] for row in rows]
                gone = set(ids) - wanted(conn, ids)
            _upsert(conn, rows)
        for row in rows:
            if row["contact_id"] in gone:
                if late is not None:
                    late.append((SyncMember(row["contact_id"], payload=dict(row["payload"] or {})),
                                 row["fingerprint"]))
            else:
                confirmed.add(row["contact_id"])
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
    fingerprints: dict[int, str] = field(default_factory=dict)  # contact id -> acknowledged, of removes/updates


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
        if row.mid is not None:
            diff.fingerprints[row.held_id] = row.fingerprint
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


def _forget(conn: Any, ref: SyncTarget, contact_ids: list[int], fingerprints: Optional[dict[int, str]] = None) -> None:
    """Delete the acknowledged rows of `contact_ids` — with `fingerprints`, only a row that
    still holds the fingerprint that was removed (not one another run has rewritten since)."""
    if not contact_ids:
        return
    m = membership_t
    if fingerprints is None:
        conn.execute(m.delete().where(m.c.segment == ref.segment, m.c.target == ref.key,
                                      m.c.contact_id.in_(contact_ids)))
        return
    known = [{"cid": cid, "fp": fingerprints[cid]} for cid in contact_ids if cid in fingerprints]
    unknown = [cid for cid in contact_ids if cid not in fingerprints]
    if known:
        conn.execute(m.delete().where(m.c.segment == ref.segment, m.c.target == ref.key,
                                      m.c.contact_id == bindparam("cid"), m.c.fingerprint == bindparam("fp")), known)
    if unknown:
        _forget(conn, ref, unknown)


def _wall() -> datetime:
    return datetime.now(timezone.utc)


def sync_target(store: Store, project: ProjectSpec, ref: SyncTarget, destination: SyncDestination,
                now: datetime, *, session_id: Optional[int] = None, secrets: Sequence[str] = ()) -> TargetReport:
    """Push one target's changes, holding the target's lock (a run of the same target key
    under way is waited for); `secrets` are masked in every recorded reason."""
    try:
        with target_lock(store, ref.key, wait=SYNC_LOCK_WAIT) as hold:
            return _sync_locked(store, project, ref, destination, now, session_id, secrets, hold)
    except TargetBusy as exc:
        return _record_failure(store, ref, str(exc))


def _start(store: Store, ref: SyncTarget) -> int:
    """The run's `sync_run` row (`running`); one of the same target still `running` is a run that
    died (the lock is held, so it is not running any more): it becomes `interrupted`."""
    with store.engine.begin() as conn:
        conn.execute(update(sync_run_t).where(sync_run_t.c.segment == ref.segment, sync_run_t.c.target == ref.key,
                                              sync_run_t.c.status == "running").values(status="interrupted"))
        return conn.execute(sync_run_t.insert().values(
            segment=ref.segment, target=ref.key, destination=ref.destination, started_at=_wall(),
            status="running", members=0, added=0, removed=0, updated=0, failed=0, requests=0, duration_ms=0,
            errors=[])).inserted_primary_key[0]


def _interrupted(store: Store, run_id: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(sync_run_t).where(sync_run_t.c.id == run_id, sync_run_t.c.status == "running")
                     .values(status="interrupted", finished_at=_wall()))


def _wanted(project: ProjectSpec, ref: SyncTarget, destination: SyncDestination, now: datetime) -> Wanted:
    """Which of some contacts the target should hold now (the segment at `now`, revocations,
    suppressions and erasures up to this very moment). On PostgreSQL the contact rows are
    share-locked for the rest of the caller's transaction, so an erasure (which locks its
    contact row) either committed before the answer or waits for the caller's commit."""
    segment, cls = project.segments[ref.segment], type(destination)

    def wanted(conn: Any, ids: Sequence[int]) -> set[int]:
        query = select(contact_t.c.id).where(ids_in(contact_t.c.id, ids),
                                             desired(segment, project.segments, cls, now))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(key_share=True, of=contact_t)
        return set(conn.execute(query).scalars())
    return wanted


def _sync_locked(store: Store, project: ProjectSpec, ref: SyncTarget, destination: SyncDestination,
                 now: datetime, session_id: Optional[int], secrets: Sequence[str], hold: Hold) -> TargetReport:
    started = time.perf_counter()
    report = TargetReport(ref.segment, ref.destination, ref.key)
    requests_before = destination.requests_sent
    reasons: Counter = Counter()
    run_id = _start(store, ref)
    try:
        diff = compute_diff(store, project, ref, destination, now)
        session = session_id if session_id is not None else random.getrandbits(62)

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
        report.failed += push_removals(store, destination, ref, to_remove, session, removed_ok, reasons, secrets,
                                       diff.fingerprints, hold=hold)

        wanted = _wanted(project, ref, destination, now)
        late: list[tuple[SyncMember, str]] = []  # sent, then found erased/revoked: removed again below
        # Changed members the destination updates in place: the acknowledged row is replaced only
        # when it confirms, so a failed update keeps the old state (and the member) for the next run.
        changed_ok: set[int] = set()
        if diff.in_place:  # only an UpdatesInPlace destination fills it
            update_members = destination.update  # type: ignore[attr-defined]
            changed_ok, failed = push_members(store, update_members, destination.max_batch, ref, diff.in_place,
                                              session + 2, reasons, secrets, wanted, late, hold=hold)
            report.failed += failed

        to_add = diff.adds + [(new, v, fp) for old, new, v, fp in diff.updates if old.contact_id in removed_ok]
        added_ids, failed = push_members(store, destination.add, destination.max_batch, ref, to_add, session + 1,
                                         reasons, secrets, wanted, late, hold=hold)
        report.failed += failed
        if late:
            report.failed += push_removals(store, destination, ref, [m for m, _ in late], session + 3, set(),
                                           reasons, secrets, {m.contact_id: fp for m, fp in late}, hold=hold)
        report.added = len(added_ids - updated_ids)
        report.updated = len(added_ids & updated_ids) + len(changed_ok)
        # A replaced contact whose old identifiers went but whose new ones did not stay has left.
        report.removed = len(removed_ok - updated_ids) + len((removed_ok & updated_ids) - added_ids)
        succeeded = len(added_ids) + len(removed_ok) + len(changed_ok)

        report.members = _held(store, ref)
    except BaseException:
        _interrupted(store, run_id)
        raise
    return _close(store, run_id, report, destination.requests_sent - requests_before, started, reasons,
                  partly=bool(succeeded or diff.touches), stopped=hold.lost)


def sync_detached(store: Store, ref: SyncTarget, destination: SyncDestination, *,
                  secrets: Sequence[str] = ()) -> TargetReport:
    """Empty a detached target (`detached_targets`): remove every member its rows still hold,
    under the target's lock, and forget them. What another configured segment of the same
    target key still holds is not sent (`push_removals`), only forgotten here."""
    started = time.perf_counter()
    report = TargetReport(ref.segment, ref.destination, ref.key, detached=True)
    requests_before = destination.requests_sent
    reasons: Counter = Counter()
    try:
        with target_lock(store, ref.key, wait=SYNC_LOCK_WAIT) as hold:
            run_id = _start(store, ref)
            try:
                with store.reading() as conn:
                    rows = conn.execute(select(membership_t.c.contact_id, membership_t.c.fingerprint,
                                               membership_t.c.payload)
                                        .where(membership_t.c.segment == ref.segment,
                                               membership_t.c.target == ref.key)
                                        .order_by(membership_t.c.contact_id)).all()
                members = [SyncMember(r.contact_id, payload=dict(r.payload or {})) for r in rows]
                removed: set[int] = set()
                report.failed = push_removals(store, destination, ref, members, random.getrandbits(62), removed,
                                              reasons, secrets, {r.contact_id: r.fingerprint for r in rows},
                                              hold=hold)
                report.removed = len(removed)
                report.members = _held(store, ref)
            except BaseException:
                _interrupted(store, run_id)
                raise
    except TargetBusy as exc:
        return _record_failure(store, ref, str(exc))
    return _close(store, run_id, report, destination.requests_sent - requests_before, started, reasons,
                  partly=bool(report.removed), stopped=hold.lost)


def _held(store: Store, ref: SyncTarget) -> int:
    """The members the destination holds of `ref` after a run (its acknowledged rows)."""
    with store.reading() as conn:
        return conn.execute(select(func.count()).select_from(membership_t).where(
            membership_t.c.segment == ref.segment, membership_t.c.target == ref.key)).scalar_one()


def _close(store: Store, run_id: int, report: TargetReport, requests: int, started: float, reasons: Counter, *,
           partly: bool, stopped: Optional[str] = None) -> TargetReport:
    """A finished run's report and `sync_run` row: `partly` — something succeeded beside the
    failures; `stopped` — why the run stopped before its end (it lost its lock to another run):
    `interrupted`, with what it acknowledged until then."""
    report.requests = requests
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    report.errors = [{"reason": reason, "count": n} for reason, n in reasons.most_common(20)]
    report.status = "ok" if not report.failed else ("partial" if partly else "failed")
    if stopped is not None:
        report.errors = [{"reason": stopped, "count": 1}] + report.errors[:19]
        report.status = "interrupted"
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
                          errors=[{"reason": reason, "count": 1}], detached=ref.detached)
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
    if ref.detached:  # rebuilt from what was stored: the configuration no longer names it
        try:
            ref = replace(resolve_target(project, ref.segment, ref.key), detached=True)
        except IntegrationError as exc:
            return _record_failure(store, ref, redact(f"{exc}; its members stay until they are removed there by "
                                                      "hand and its rows deleted", secrets) or "")
    try:
        destination = (factory or default_factory)(ref.destination, context)
    except IntegrationError as exc:
        return _record_failure(store, ref, redact(str(exc), secrets) or "")
    try:
        if ref.detached:
            return sync_detached(store, ref, destination, secrets=secrets)
        return sync_target(store, project, ref, destination, now, secrets=secrets)
    except Exception as exc:  # a bug in a plug-in: this target fails loudly, the others still run
        reason = redact(f"{type(exc).__name__} in {ref.destination}: {exc}", secrets) or ""
        return _record_failure(store, ref, reason[:300])
    finally:
        destination.close()


def sync_segments(store: Store, project: ProjectSpec, now: datetime, context: IntegrationContext, *,
                  segment: Optional[str] = None, factory: Optional[Factory] = None) -> list[TargetReport]:
    """Every configured target (of `segment`, when given), then every detached one: a segment
    renamed onto the same audience has acknowledged its members under the new name first, so
    emptying the old name's rows sends nothing for them."""
    refs = targets(project, segment) + detached_targets(store, project, segment)
    return [sync_one(store, project, ref, now, context, factory) for ref in refs]

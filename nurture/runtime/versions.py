"""Live edits: every compiled version is recorded, and in-flight enrollments of an older
version are moved onto the current one at the start of a tick.

The rule (also in the README): a contact continues at its step id if that id still exists
in the new version, keeping its scheduled time. If its step was removed, it moves forward
along the *old* version's path to the first following step that still exists, arriving there
now; if none does, it has finished the journey (completed).

Which version is live is the one recorded last (by id: a sequence, not a clock). A process
whose files are older than it — it read them before another process recorded a newer edit: a
`nurture web` or a warm runner started before the edit — must neither tick its version nor move
anyone back onto it: `superseded` says so and the tick stops after `prepare` (SUPERSEDED). A
revert is a new edit: a process that read the reverted file after the edit was recorded
records its content as live again (`record_version` moves a version seen before to the end).
"""
from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection

from nurture.compiler import Plan, compile_journey
from nurture.durations import format_duration
from nurture.runtime.context import Runtime
from nurture.runtime.effective_journey import walk_steps, with_winners
from nurture.spec.models import RECORDED, Journey
from nurture.runtime.sql import chunks, for_update, insert_ignore
from nurture.store.tables import contact_t, enrollment_t, version_t


_DURATION_KEYS = {"wait", "within", "lookback", "per", "reentry"}


def _yaml_form(value: object) -> object:
    """The spec as a journey file would say it: durations as `1d`, dates as ISO, unset keys left out, so a
    recorded version validates again as a Journey."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, date):  # objectives' deadlines: ISO dates, as a journey file writes them
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _yaml_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_form(v) for v in value]
    return value


def _from_record(value: object, key: str = "") -> object:
    """Read a recorded spec, also one recorded as a full JSON dump (ISO 8601 durations, every
    unset key as null) by earlier versions of this module, and a send with `channels` recorded
    with the `channel` the model derives from it (which the language refuses beside
    `channels`: every later edit of such a journey failed its ticks reading it back)."""
    if isinstance(value, dict):
        if key in _USER_MAPS:  # the marketer's own keys and values: a null there means "clear it"
            return value
        derived = "channel" if value.get("channels") is not None else None
        return {k: _from_record(v, k) for k, v in value.items() if v is not None and k != derived}
    if isinstance(value, list):
        return [_from_record(v) for v in value]
    if key in _DURATION_KEYS and isinstance(value, str) and value.startswith("P"):
        return format_duration(TypeAdapter(timedelta).validate_python(value))
    return value


_USER_MAPS = {"attributes", "handover"}  # (an `update` step's attributes, a handover's fields)


def _without_derived_channel(value: object) -> object:
    """The record with only the `channel` a `channels` send derives left out: a null the
    marketer wrote (`coupon: null` clears an attribute, `{eq: null}` in a condition) stays."""
    if isinstance(value, dict):
        derived = "channel" if value.get("channels") is not None else None
        return {k: _without_derived_channel(v) for k, v in value.items() if k != derived}
    if isinstance(value, list):
        return [_without_derived_channel(v) for v in value]
    return value


def load_recorded(spec: dict) -> Journey:
    try:
        return Journey.model_validate(spec, context={RECORDED: True})
    except ValidationError:
        pass
    try:
        return Journey.model_validate(_without_derived_channel(spec), context={RECORDED: True})
    except ValidationError:  # a full JSON dump of an earlier version of this module
        return Journey.model_validate(_from_record(spec), context={RECORDED: True})


_NEWEST = (select(version_t.c.id, version_t.c.version).where(version_t.c.journey == bindparam("journey"))
           .order_by(version_t.c.id.desc()).limit(1))
_OLD_VERSIONS = (select(enrollment_t.c.version).distinct()
                 .where(enrollment_t.c.journey == bindparam("journey"), enrollment_t.c.status == "active",
                        enrollment_t.c.version != bindparam("version")))

SUPERSEDED = "a newer version of this journey is live; this process has an older one"


def superseded(conn: Connection, rt: Runtime, plan: Plan) -> bool:
    """True when the journey's live version (the one recorded last) is not `plan`'s and was
    recorded after `rt` read its files (`Runtime.versions_seen`) and not by `rt` itself: the
    file was edited since, and this process must not tick its older version until it loads the
    files again."""
    newest = conn.execute(_NEWEST, {"journey": plan.name}).first()
    known = max(rt.versions_seen or 0, rt.memo.get(("version_live", plan.name), 0))
    if newest is None or newest.version == plan.version or newest.id <= known:
        return False
    return not _this_file_decided(conn, rt, plan.name, newest)


def _this_file_decided(conn: Connection, rt: Runtime, journey: str, newest: Any) -> bool:
    """Whether the newest recorded version is this process's own file with `auto_winner`
    decisions applied (none, fewer or others than its plan has now): a decision re-plans — a new
    version — but is no edit of the file, and another process recording the undecided version
    after this one read its files makes this one no older (memoized per recorded row)."""
    key = ("version_from_this_file", journey, newest.id)
    if key not in rt.memo:
        spec = conn.execute(select(version_t.c.spec).where(version_t.c.id == newest.id)).scalar()
        own = rt.project.journeys.get(journey)
        try:
            recorded = load_recorded(spec)
            winners = {s.id: s.auto_winner.decided for s in walk_steps(recorded.steps)
                       if s.auto_winner is not None and s.auto_winner.decided is not None}
            rt.memo[key] = own is not None and compile_journey(with_winners(own, winners)[0]).version == newest.version
        except (ValidationError, ValueError, TypeError):  # a record this code cannot read: not its file
            rt.memo[key] = False
    return rt.memo[key]


def record_version(rt: Runtime, plan: Plan, now: datetime) -> bool:
    """Record `plan` as the journey's live version: a new content is added; a content recorded
    before (a file reverted to an earlier text) is moved to the end,
    keeping the time it was first recorded — a revert is an edit like any other. False (nothing
    recorded) when a newer edit was recorded since the caller's check (`superseded`, again here,
    in the writing transaction: recorders of a journey take turns)."""
    # Once per Runtime and project it took (Runtime.use_project: the files read again may be a
    # revert to a version this Runtime recorded before, to be moved to the end again).
    key = ("version_recorded", plan.name, plan.version, rt.versions_seen)
    if rt.memo.get(key):
        return True
    with rt.store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # (SQLite: the write transaction is exclusive already)
            conn.execute(select(func.pg_advisory_xact_lock(_journey_lock(plan.name)))).scalar()
        if superseded(conn, rt, plan):
            return False
        newest = conn.execute(_NEWEST, {"journey": plan.name}).first()
        if newest is None or newest.version != plan.version:
            earlier = conn.execute(select(version_t).where(version_t.c.journey == plan.name,
                                                           version_t.c.version == plan.version)).first()
            if earlier is not None:  # a new id is a new place in the order: delete and insert again
                conn.execute(version_t.delete().where(version_t.c.id == earlier.id))
                row = dict(journey=plan.name, version=plan.version, step_order=earlier.step_order,
                           spec=earlier.spec, created_at=earlier.created_at)
            else:
                row = dict(journey=plan.name, version=plan.version, step_order=list(plan.order),
                           spec=_yaml_form(plan.journey.model_dump(by_alias=True, exclude_unset=True)),
                           created_at=now)
            insert_ignore(conn, version_t, [row], ("journey", "version"))
            newest = conn.execute(_NEWEST, {"journey": plan.name}).first()
        # This Runtime's own record is no newer edit than its files (a split decision it made
        # re-plans: the version it recorded before must not make its new one look older).
        if newest is not None and newest.version == plan.version:
            rt.memo[("version_live", plan.name)] = newest.id
    rt.memo[key] = True
    return True


def _journey_lock(journey: str) -> int:
    """The pg_advisory_xact_lock key of recording a journey's version ("nurt-ver" and the name)."""
    digest = hashlib.sha256(f"nurt-ver:{journey}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migrate_enrollments(rt: Runtime, plan: Plan, now: datetime) -> int:
    moved = 0
    params = {"journey": plan.name, "version": plan.version}
    with rt.store.reading() as conn:  # a read first: enrollments of older versions are rare
        if conn.execute(_OLD_VERSIONS, params).first() is None:
            return 0
    with rt.store.engine.begin() as conn:
        if superseded(conn, rt, plan):  # never back onto an older version (the caller checked: a race)
            return 0
        old_versions = [r[0] for r in conn.execute(_OLD_VERSIONS, params)]
        for old in old_versions:
            spec = conn.execute(select(version_t.c.spec).where(version_t.c.journey == plan.name,
                                                               version_t.c.version == old)).scalar()
            old_plan = compile_journey(load_recorded(spec)) if spec else None
            steps = [r[0] for r in conn.execute(
                select(enrollment_t.c.step_id).distinct()
                .where(enrollment_t.c.journey == plan.name, enrollment_t.c.version == old,
                       enrollment_t.c.status == "active"))]
            for step_id in steps:
                where = [enrollment_t.c.journey == plan.name, enrollment_t.c.version == old,
                         enrollment_t.c.status == "active", enrollment_t.c.step_id == step_id]
                if step_id in plan.nodes:
                    result = conn.execute(enrollment_t.update().where(*where).values(version=plan.version))
                else:
                    target = old_plan.successor_existing_in(step_id, plan) if old_plan else None
                    if target is None:
                        result = conn.execute(enrollment_t.update().where(*where).values(
                            version=plan.version, status="completed", step_id=None, next_due_at=None,
                            left_at=now, exit_reason="step_removed"))
                    else:
                        from nurture.steps.transitions import move
                        # Locked as they are read (PostgreSQL): a second worker migrating at the
                        # same moment waits here, then finds them migrated and moves none again
                        # (it must not put back on `target` an enrollment that has moved on since).
                        rows = [(eid, cid, tz, now) for eid, cid, tz in conn.execute(for_update(
                            select(enrollment_t.c.id, enrollment_t.c.contact_id, contact_t.c.timezone)
                            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
                            .where(*where), conn, of=enrollment_t))]
                        for part in chunks([r[0] for r in rows]):
                            conn.execute(enrollment_t.update().where(enrollment_t.c.id.in_(part))
                                         .values(version=plan.version))
                        moved += move(conn, rt, plan, rows, target, now)
                        continue
                moved += result.rowcount or 0
    return moved

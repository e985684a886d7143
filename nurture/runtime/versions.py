"""Live edits: every compiled version is recorded, and in-flight enrollments of an older
version are moved onto the current one at the start of a tick.

The rule (also in the README): a contact continues at its step id if that id still exists
in the new version, keeping its scheduled time. If its step was removed, it moves forward
along the *old* version's path to the first following step that still exists, arriving there
now; if none does, it has finished the journey (completed).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from nurture.compiler import Plan, compile_journey
from nurture.runtime.context import Runtime
from nurture.spec.models import Journey
from nurture.store.models import Enrollment, JourneyVersion

enrollment_t = Enrollment.__table__
version_t = JourneyVersion.__table__


def record_version(rt: Runtime, plan: Plan, now: datetime) -> None:
    with rt.store.engine.begin() as conn:
        exists = conn.execute(select(version_t.c.id).where(version_t.c.journey == plan.name,
                                                           version_t.c.version == plan.version)).first()
        if exists is None:
            from nurture.runtime.sql import insert_ignore
            insert_ignore(conn, version_t, [dict(journey=plan.name, version=plan.version,
                                                 step_order=list(plan.order),
                                                 spec=plan.journey.model_dump(mode="json", by_alias=True),
                                                 created_at=now)], ("journey", "version"))


def migrate_enrollments(rt: Runtime, plan: Plan, now: datetime) -> int:
    moved = 0
    with rt.store.engine.begin() as conn:
        old_versions = [r[0] for r in conn.execute(
            select(enrollment_t.c.version).distinct()
            .where(enrollment_t.c.journey == plan.name, enrollment_t.c.status == "active",
                   enrollment_t.c.version != plan.version))]
        for old in old_versions:
            spec = conn.execute(select(version_t.c.spec).where(version_t.c.journey == plan.name,
                                                               version_t.c.version == old)).scalar()
            old_plan = compile_journey(Journey.model_validate(spec)) if spec else None
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
                        from nurture.conditions import contact_t
                        from nurture.runtime.advance import move
                        rows = [(eid, cid, tz, now) for eid, cid, tz in conn.execute(
                            select(enrollment_t.c.id, enrollment_t.c.contact_id, contact_t.c.timezone)
                            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
                            .where(*where))]
                        conn.execute(enrollment_t.update().where(*where).values(version=plan.version))
                        moved += move(conn, rt, plan, rows, target, now)
                        continue
                moved += result.rowcount or 0
    return moved

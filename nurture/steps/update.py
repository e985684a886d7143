"""The `update` step: set contact attributes (merged into `attributes`, in SQL for the whole
batch) and/or the lifecycle stage, then move on. A forward stage move is recorded as a
`lifecycle_stage_changed` event in the step's transaction (nurture.lifecycle)."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, case, cast, func
from sqlalchemy.dialects.postgresql import JSONB

from nurture.compiler import Node, Plan
from nurture.lifecycle import set_stage
from nurture.runtime.context import Runtime
from nurture.runtime.sql import chunks, ids_in
from nurture.steps.transitions import due_rows, move, step_batch
from nurture.store.tables import contact_t


def handle(rt: Runtime, plan: Plan, node: Node, now: datetime, report: Counter) -> bool:
    with step_batch(rt) as conn:
        rows = due_rows(conn, plan, node, now, rt.batch_size)
        if not rows:
            return False
        _apply_update(conn, plan, node, [r[1] for r in rows], now)
        move(conn, rt, plan, rows, node.next, now)
        report[(node.id, "updated", None)] += len(rows)
        return True


def merged_attributes(conn: Any, values: dict) -> Any:
    """`attributes` with `values` merged in, as one SQL expression for a whole batch. A key set
    to `None` holds a JSON null afterwards (cleared, still present), on both databases."""
    patch = bindparam("attributes_patch", json.dumps(values), type_=String)
    if conn.dialect.name == "postgresql":
        return contact_t.c.attributes.op("||")(cast(patch, JSONB))
    merged = func.json_patch(contact_t.c.attributes, patch)
    nulls = [key for key, value in values.items() if value is None]
    if not nulls:
        return merged
    # json_patch is an RFC 7396 merge patch: a null there REMOVES the key, where PostgreSQL's
    # `||` stores the null. So the null keys (removed by the patch) are appended to its compact
    # text as `"key":null`. Not json_set: SQLite's JSON paths cannot name every key (one
    # holding a `"` is unreachable), while the JSON text of the members can.
    members = bindparam("attributes_nulls", json.dumps(dict.fromkeys(nulls))[1:-1], type_=String)
    return case((merged == "{}", "{" + members + "}"),
                else_=func.substr(merged, 1, func.length(merged) - 1) + "," + members + "}")


def _apply_update(conn: Any, plan: Plan, node: Node, contact_ids: list[int], now: datetime) -> None:
    spec = node.step.update
    if spec.lifecycle_stage:
        set_stage(conn, contact_ids, spec.lifecycle_stage, now, source=f"update:{plan.name}:{node.id}")
    if spec.attributes:
        for part in chunks(sorted(set(contact_ids))):
            conn.execute(contact_t.update().where(ids_in(contact_t.c.id, part))
                         .values(attributes=merged_attributes(conn, spec.attributes), updated_at=now))

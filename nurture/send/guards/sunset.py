"""The sunset policy (`policies.yaml` `sunset: {after, without}`): marketing stops for contacts
who have been known for longer than `after` and did none of the `without` events (opens,
clicks, purchases …) within it — mailing people who stopped reading hurts the sender's
reputation with the mailbox providers. A contact is "known since" its creation or its first
event, whichever is earlier, so a new sign-up is never sunset. One query per batch."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable, NamedTuple

from sqlalchemy import bindparam, exists, select

from nurture.runtime.sql import chunks, ids_in, prebuilt
from nurture.store.tables import contact_t, event_t


class SunsetRule(NamedTuple):
    after: timedelta
    without: tuple[str, ...]


def sunset_contacts(conn: Any, contact_ids: Iterable[int], rule: SunsetRule, now: datetime) -> set[int]:
    """The contacts among `contact_ids` the rule stops at `now`."""
    def build() -> Any:
        cutoff = bindparam("cutoff")
        engaged = exists().where(event_t.c.contact_id == contact_t.c.id, event_t.c.name.in_(rule.without),
                                 event_t.c.occurred_at > cutoff, event_t.c.occurred_at <= bindparam("now"))
        seen_before = exists().where(event_t.c.contact_id == contact_t.c.id, event_t.c.occurred_at <= cutoff)
        return select(contact_t.c.id).where(ids_in(contact_t.c.id, ()), ~engaged,
                                            (contact_t.c.created_at <= cutoff) | seen_before)
    stmt = prebuilt(("sunset", tuple(rule.without)), build)
    out: set[int] = set()
    for part in chunks(sorted(set(contact_ids))):
        out.update(conn.execute(stmt, {"ids_id": list(part), "cutoff": now - rule.after, "now": now}).scalars())
    return out

"""Who belongs in a segment for one destination, as one SQL expression over `contact`.

The segment's condition (the journeys' condition language, compiled by
`nurture.conditions`) AND what the destination needs: an identifier it can match on, no
suppression that covers it (any-channel suppressions for every destination, `ads` ones for
ad audiences) and — for ad audiences — the latest `ads` consent granted. Evaluated in the
database for all contacts at once; a revoked consent or a new suppression simply makes the
contact fall out of the expression, and the diff removes it downstream.

The segment's condition and a grant are read at the sync's logical clock (`now`: a Prefect
run's scheduled start, `--now`); a revocation or a suppression counts as soon as it is
recorded — up to the wall clock (`wall`), whatever `now` says, like the send pipeline's
consent check (nurture.consent_ledger.current_consent): a late or re-run scheduled sync must
not upload again someone who has since withdrawn.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional

from sqlalchemy import ColumnElement, and_, exists, not_, or_, select

from nurture.conditions import ConditionScope, compile_condition
from nurture.consent_ledger import latest_consent_status, revocations_until
from nurture.store.tables import contact_t, suppression_t


def not_suppressed(*, ads: bool, now: datetime) -> ColumnElement:
    """No suppression of the contact (by id, e-mail or phone) for every channel — or, for ad
    audiences, for the `ads` channel — created at or before `now` (pass the later of the logical
    and the wall clock: a suppression counts once it exists)."""
    parts = []
    for column, match in (("contact_id", contact_t.c.id), ("address", contact_t.c.email),
                          ("address", contact_t.c.phone)):
        s = suppression_t.alias(f"supp_{len(parts)}")
        channel = or_(s.c.channel.is_(None), s.c.channel == "ads") if ads else s.c.channel.is_(None)
        parts.append(not_(exists(select(s.c.id).where(s.c[column] == match, channel, s.c.created_at <= now))))
    return and_(*parts)


def has_identifier(columns: tuple[str, ...]) -> ColumnElement:
    return or_(*[contact_t.c[name].isnot(None) for name in columns])


def ads_consent_granted(now: datetime, until: Optional[datetime] = None) -> ColumnElement:
    """The latest `ads` row at `now` is a grant — and, when `until` (the wall clock) lies later,
    the latest row up to `until` is no revocation."""
    granted = latest_consent_status("ads", "marketing", now) == "granted"
    if until is None or until <= now:
        return granted
    return and_(granted, latest_consent_status("ads", "marketing", until) != "revoked")


def desired(segment: Any, segments: Mapping[str, Any], destination: Any, now: datetime,
            wall: Optional[datetime] = None) -> ColumnElement:
    """The contacts `destination` (an integration class) should hold for `segment` at `now`;
    revocations and suppressions recorded up to `wall` (default: the real time) count too."""
    until = revocations_until(now, wall)
    parts = [compile_condition(segment.when, ConditionScope(now, segments)),
             has_identifier(destination.identifier_columns),
             not_suppressed(ads=destination.needs_ads_consent, now=until)]
    if destination.needs_ads_consent:
        parts.append(ads_consent_granted(now, until))
    return and_(*parts)


def members(conn: Any, segment: Any, segments: Mapping[str, Any], destination: Any, now: datetime,
            wall: Optional[datetime] = None) -> list[int]:
    """Contact ids in the segment for `destination` (for previews and tests; the sync diffs)."""
    query = (select(contact_t.c.id).where(desired(segment, segments, destination, now, wall))
             .order_by(contact_t.c.id))
    return list(conn.execute(query).scalars())

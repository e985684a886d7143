"""Which recorded conversions the report counts: one goal event converts at most one
enrollment of a journey.

The engine records a goal event on every enrollment of the contact whose goal window is open
(nurture.runtime.outcomes). A contact who entered the journey again while an earlier
enrollment's window was still open (`reentry` shorter than the goal's `within`, a trigger other
than the goal event) has two such enrollments, both converted at the same moment by the same
purchase. Counted per enrollment, one purchase of 100 € would be two conversions and 200 € of
the journey's revenue. The report counts it once, for the latest enrollment that entered
before it (the one the contact was most recently in; on a tie of entry times, the later row);
the others count as not converted. Every figure that counts a journey's conversions — the
funnel, lift, incremental and attributed revenue, steps, split arms, objectives — reads this
one rule."""
from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, or_, select

from nurture.store.tables import enrollment_t


def counted_conversion(enrollment: Any = enrollment_t) -> Any:
    """SQL: the enrollment (`enrollment_t` or an alias of it) is converted, and no later entry of
    the same contact into the same journey was converted by the same goal event."""
    later = enrollment_t.alias("later_entry")
    return and_(enrollment.c.converted_at.isnot(None), ~exists(select(later.c.id).where(
        later.c.contact_id == enrollment.c.contact_id, later.c.journey == enrollment.c.journey,
        later.c.converted_at == enrollment.c.converted_at,
        or_(later.c.entered_at > enrollment.c.entered_at,
            and_(later.c.entered_at == enrollment.c.entered_at, later.c.id > enrollment.c.id)))))

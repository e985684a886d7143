"""The incremental deal pull (`nurture crm pull`, the hourly `crm-pull` flow, the HubSpot
webhook's "pull this deal now"): which window to read, and the one transaction per batch.

The cursor (`crm_cursor`: the last modification time and deal id acknowledged per CRM) moves
only in the transaction that stores a batch's deals and events, so a crash, a network failure
or a refused request mid-pull loses nothing — the batch is read again by the next pull — and
doubles nothing: deal events have deterministic ids (nurture.crm.deals). A pull reads from
the cursor minus SEARCH_LAG (HubSpot's search index trails its writes by a few seconds, so a
deal written just before the previous pull's last one may only now be findable; reading a
deal twice is harmless); the first pull reads the last `lookback` (90 days unless told);
`since` reads from a time of the caller's choosing — the cursor then moves only if that
window started at or before it (a later `since` would otherwise skip what lies between).
Every pull first attaches the deals that waited for their contact (`attach_waiting`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional, Sequence

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from nurture.crm.deals import DealsResult, apply_deals, attach_waiting
from nurture.crm.source import CrmUnavailable, DealSource
from nurture.store.db import Store
from nurture.store.tables import crm_cursor_t
from nurture.store.times import aware

LOOKBACK = timedelta(days=90)
MAX_LOOKBACK_DAYS = 3650
SEARCH_LAG = timedelta(minutes=5)


@dataclass
class PullResult:
    """What a pull did: `deals` (nurture.crm.deals.DealsResult), the window it read, the cursor
    before and after, the provider requests it made, and `failure` — why it stopped early
    (the CRM unreachable or refusing), None when it read everything."""
    crm: str
    deals: DealsResult = field(default_factory=DealsResult)
    since: Optional[datetime] = None
    until: Optional[datetime] = None
    cursor_before: Optional[datetime] = None
    cursor_after: Optional[datetime] = None
    batches: int = 0
    requests: int = 0
    failure: Optional[str] = None

    def row(self) -> dict:
        """The pull as one flat row (the flow's table artifact, `--json`)."""
        d = self.deals
        return {"crm": self.crm, "since": _iso(self.since), "until": _iso(self.until), "deals_read": d.read,
                "new": d.new, "changed": d.changed, "events": d.events, "stage_changes": d.stage_changes,
                "won": d.won, "lost": d.lost, "revenue": round(d.revenue, 2), "without_contact": d.without_contact,
                "attached": d.attached, "erased": d.erased, "other_currency": d.other_currency,
                "won_corrected": d.corrected, "revenue_corrected": round(d.corrected_revenue, 2),
                "problems": len(d.problems), "requests": self.requests, "cursor": _iso(self.cursor_after),
                "failure": self.failure or ""}


def _iso(moment: Optional[datetime]) -> Optional[str]:
    return None if moment is None else moment.isoformat()


def lookback_days(value: Any) -> timedelta:
    """A lookback of whole days, 1 … MAX_LOOKBACK_DAYS; ValueError naming the problem."""
    try:
        days = int(str(value).strip())
    except ValueError:
        raise ValueError(f"'{str(value)[:40]}' is not a whole number of days") from None
    if not 1 <= days <= MAX_LOOKBACK_DAYS:
        raise ValueError(f"{days} days is outside 1 … {MAX_LOOKBACK_DAYS}")
    return timedelta(days=days)


def read_cursor(conn: Any, crm: str) -> Optional[tuple[datetime, Optional[str]]]:
    row = conn.execute(select(crm_cursor_t.c.modified_at, crm_cursor_t.c.deal_id)
                       .where(crm_cursor_t.c.crm == crm)).first()
    if row is None or row.modified_at is None:
        return None
    return aware(row.modified_at), row.deal_id



def save_cursor(conn: Any, crm: str, position: tuple[datetime, str], now: datetime) -> None:
    """Move the cursor to `position`, never back, in the caller's transaction."""
    current = read_cursor(conn, crm)
    if current is not None and current[0] > position[0]:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(crm_cursor_t).values(crm=crm, modified_at=position[0], deal_id=position[1], updated_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=["crm"], set_={
        "modified_at": stmt.excluded.modified_at, "deal_id": stmt.excluded.deal_id,
        "updated_at": stmt.excluded.updated_at}))


def pull_deals(store: Store, source: DealSource, *, now: datetime, currency: str, since: Optional[datetime] = None,
               lookback: timedelta = LOOKBACK) -> PullResult:
    """Read the deals `source` changed since the cursor (or `since`, or `lookback` before `now`
    on the first pull) up to `now`, storing each batch with the cursor in one transaction.
    Never raises for the CRM's failures: they end the pull with `failure` set."""
    crm = source.crm
    result = PullResult(crm, until=now)
    with store.reading() as conn:
        cursor = read_cursor(conn, crm)
    result.cursor_before = result.cursor_after = cursor[0] if cursor else None
    if since is not None:
        start = since
    elif cursor is not None:
        start = cursor[0] - SEARCH_LAG
    else:
        start = now - lookback
    result.since = start
    advance = cursor is None or start <= cursor[0]
    with store.engine.begin() as conn:
        attach_waiting(conn, crm, now=now, currency=currency, result=result.deals)
    try:
        for batch in source.changed(start, now):
            with store.engine.begin() as conn:
                apply_deals(conn, crm, batch.deals, now=now, currency=currency, result=result.deals)
                if advance and batch.position is not None:
                    save_cursor(conn, crm, batch.position, now)
            result.deals.problems.extend(batch.problems)
            result.batches += 1
            if advance and batch.position is not None:
                if result.cursor_after is None or batch.position[0] > result.cursor_after:
                    result.cursor_after = batch.position[0]
    except CrmUnavailable as exc:
        result.failure = str(exc)
    result.requests = source.requests
    return result


def pull_named(store: Store, source: DealSource, deal_ids: Sequence[str], *, now: datetime,
               currency: str) -> PullResult:
    """Read these deals now (a webhook said they changed) and store them; the cursor is not
    touched — the next incremental pull reads them again and adds nothing."""
    result = PullResult(source.crm, until=now)
    try:
        batch = source.deals(list(deal_ids))
    except CrmUnavailable as exc:
        result.failure = str(exc)
    else:
        with store.engine.begin() as conn:
            apply_deals(conn, source.crm, batch.deals, now=now, currency=currency, result=result.deals)
        result.deals.problems.extend(batch.problems)
        result.batches = 1
    result.requests = source.requests
    return result

"""Sending the declared conversions: each (conversion, destination) — a *target*, keyed like
`meta:1234567890` — once per run.

1. a `conversion_run` row (a run of the same target left `running` by a crash becomes
   `interrupted`);
2. due events get a `pending` delivery row (nurture.conversions.selection.enqueue, one SQL
   statement);
3. the target's pending and failed rows are read in pages of the destination's batch size,
   with their event and contact; at send time, for the whole page in a few queries, each is
   checked: the event still exists, the contact is not erased (`erased`) and not suppressed
   for ads or every channel (`suppressed`), its latest `ads` consent (marketing) is granted
   (`no_ads_consent`, through nurture.consent_ledger.current_consent, the ledger's one
   reader), and the event is not older than the platform takes (`too_old`, with a margin
   for the batch in flight) — each of those is `skipped` with that reason, before batching,
   so one stale event never makes Meta refuse a whole request. The others get their value,
   currency, lead id and click ids (per platform: the event's own, else the contact's last
   touch's, else its first touch's — nurture.sources keeps them in `contact_touch` — a touch's
   click only when it happened at or before the event and within CLICK_WINDOW of it);
4. they go to the destination in full batches of its limit; its per-event results are
   written in one short transaction per batch: `sent` (acknowledged), `failed` (retried next
   run), `skipped` (e.g. no identifier the platform can match), `validated` (a dry run: stays
   pending). A crash between the request and that transaction leaves the batch `pending`:
   the next run sends it again with the same event ids, which every platform de-duplicates;
5. the run row: due, sent, skipped by reason, failed, requests, duration, errors — every
   reason masked with the configured secrets (nurture.redaction) first.
Skips are outcomes, not failures; only `failed` rows make a run `partial` or `failed`.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, Sequence

from sqlalchemy import bindparam, or_, select, update

from nurture.consent_ledger import current_consent
from nurture.conversions.destination import ConversionDestination, ConversionEvent, ConversionResult
from nurture.conversions.event_fields import click_id, conversion_id, currency_of, lead_id_of, value_of
from nurture.conversions.selection import enqueue, floor
from nurture.conversions.validation import lookup_destination, target_of
from nurture.privacy.tombstones import ERASED_REASON
from nurture.redaction import redact, secrets_in
from nurture.registry import IntegrationContext, IntegrationError
from nurture.runtime.sql import chunks, ids_in, write_many
from nurture.sources import CLICK_IDS
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.tables import (contact_t, conversion_delivery_t, conversion_run_t, event_t, suppression_t,
                                  touch_t)

# An event this close to the platform's age limit is skipped too: the batch is still in flight.
AGE_MARGIN = timedelta(minutes=10)
# A touch's click is sent with a conversion only when it came at most this long before it (and
# not after it: a click after the conversion did not lead to it). Every platform's window:
# Google refuses a click after the conversion (CONVERSION_PRECEDES_EVENT) or before the
# conversion action's click-through window, at most 90 days (EXPIRED_EVENT) — gclid, gbraid
# and wbraid alike; LinkedIn's li_fat_id and Meta's _fbc cookie (the fbc built from an fbclid)
# live 90 days.
CLICK_WINDOW = timedelta(days=90)
DUE = ("pending", "failed")
RESULTS = ("sent", "failed", "skipped", "validated")
MAX_REASON = 300


class ConversionsInvalid(Exception):
    """conversions.yaml has errors; the message lists them."""


@dataclass(frozen=True)
class ConversionTarget:
    conversion: str  # the declared event
    destination: str  # the platform name in conversions.yaml
    target: dict
    key: str
    since: Optional[datetime] = None


@dataclass
class ConversionReport:
    conversion: str
    destination: str
    target: str
    status: str = "ok"
    due: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    validated: int = 0
    requests: int = 0
    duration_ms: int = 0
    skipped_reasons: dict = field(default_factory=dict)  # reason -> count
    errors: list = field(default_factory=list)  # [{"reason", "count"}]

    def row(self) -> dict:
        data = asdict(self)
        data["skipped_reasons"] = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped_reasons.items()))
        data["errors"] = "; ".join(f"{e['reason']} (x{e['count']})" for e in self.errors)
        return data


def targets(project: ProjectSpec) -> list[ConversionTarget]:
    """Every (conversion, destination) of a valid conversions.yaml (ConversionsInvalid otherwise)."""
    errors = project.file_errors("conversions")
    if errors:
        raise ConversionsInvalid("journeys/conversions.yaml has errors:\n" + "\n".join(str(e) for e in errors))
    out = []
    for conversion in project.conversions:
        for entry in conversion.destinations:
            target = target_of(entry)
            cls = lookup_destination(entry.destination)
            out.append(ConversionTarget(conversion.event, entry.destination, target, cls.target_key(target),
                                        conversion.since))
    return out


def _wall() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- what is read at send time


def _blocked(conn: Any, rows: Sequence[Any]) -> dict[int, str]:
    """contact id → `erased` or `suppressed`, for the page's contacts with a suppression for
    every channel or for ads (by contact, e-mail or phone), whenever it was recorded."""
    ids = sorted({r.contact_id for r in rows if r.contact_id is not None})
    known = set(ids)
    by_address: dict[str, set[int]] = {}
    for r in rows:
        for address in (r.email, r.phone):
            if address:
                by_address.setdefault(address.lower(), set()).add(r.contact_id)
    s = suppression_t
    covering = or_(s.c.channel.is_(None), s.c.channel == "ads")
    queries = [select(s.c.contact_id, s.c.address, s.c.reason).where(ids_in(s.c.contact_id, ids), covering)] \
        if ids else []
    queries += [select(s.c.contact_id, s.c.address, s.c.reason).where(s.c.address.in_(part), covering)
                for part in chunks(sorted(by_address))]
    out: dict[int, str] = {}
    for contact_id, address, reason in (row for query in queries for row in conn.execute(query)):
        for cid in ({contact_id} & known) | by_address.get((address or "").lower(), set()):
            if reason == ERASED_REASON and contact_id == cid:
                out[cid] = "erased"
            else:
                out.setdefault(cid, "suppressed")
    return out


Clicks = dict[str, tuple[str, datetime]]  # click id type → (click id, when seen)


def _touches(conn: Any, contact_ids: Sequence[int]) -> dict[int, list[Clicks]]:
    """contact id → the click ids of its last touch, then of its first touch."""
    out: dict[int, list[Clicks]] = {}
    if not contact_ids:
        return out
    rows = conn.execute(select(touch_t.c.contact_id, touch_t.c.touch, touch_t.c.click_id_type, touch_t.c.click_id,
                               touch_t.c.occurred_at)
                        .where(ids_in(touch_t.c.contact_id, sorted(set(contact_ids))), touch_t.c.click_id.isnot(None))
                        .order_by(touch_t.c.contact_id, touch_t.c.touch.desc()))  # "last" before "first"
    for contact_id, _touch, kind, value, at in rows:
        value = click_id(value)
        if kind in CLICK_IDS and value:
            out.setdefault(contact_id, []).append({kind: (value, at)})
    return out


def _click_ids(own: Clicks, touches: list[Clicks], occurred_at: datetime) -> Clicks:
    """Per platform (gclid, gbraid and wbraid are Google's), the click ids of the best source
    that has one: the event itself, else the contact's last touch, else its first — a touch
    only when its click could have led to the event: at or before it, within CLICK_WINDOW.
    (The last touch moves on with every visit, so a conversion sent days later would
    otherwise carry a click made after it.)"""
    chosen: Clicks = {}
    taken: set[str] = set()
    fitting = [{kind: (value, at) for kind, (value, at) in touch.items()
                if at <= occurred_at and occurred_at - at <= CLICK_WINDOW} for touch in touches]
    for source in (own, *fitting):
        platforms = {CLICK_IDS[kind][0] for kind in source} - taken
        chosen.update({kind: clicked for kind, clicked in source.items() if CLICK_IDS[kind][0] in platforms})
        taken |= platforms
    return chosen


def _event(row: Any, touches: dict[int, list[Clicks]], currency: str) -> ConversionEvent:
    props = row.properties if isinstance(row.properties, dict) else {}
    own = {kind: (value, row.occurred_at) for kind, value in ((k, click_id(props.get(k))) for k in CLICK_IDS) if value}
    clicks = _click_ids(own, touches.get(row.contact_id, []), row.occurred_at)
    return ConversionEvent(
        event_pk=row.event_pk, event_id=conversion_id(row.event_id), conversion=row.conversion,
        occurred_at=row.occurred_at, contact_id=row.contact_id, currency=currency_of(props, currency),
        value=value_of(props), email=row.email, phone=row.phone, first_name=row.first_name,
        last_name=row.last_name, country=row.country, click_ids={k: v for k, (v, _) in clicks.items()},
        clicked_at={k: at for k, (_, at) in clicks.items()}, lead_id=lead_id_of(props, row.attributes))


def _page(conn: Any, ref: ConversionTarget, after: int, size: int) -> list[Any]:
    d = conversion_delivery_t
    c = contact_t
    return conn.execute(
        select(d.c.id, d.c.event_pk, d.c.attempts, d.c.contact_id, d.c.conversion, event_t.c.event_id,
               event_t.c.properties, event_t.c.occurred_at, c.c.email, c.c.phone, c.c.first_name, c.c.last_name,
               c.c.country, c.c.attributes)
        .select_from(d.outerjoin(event_t, event_t.c.id == d.c.event_pk).outerjoin(c, c.c.id == d.c.contact_id))
        .where(d.c.target == ref.key, d.c.conversion == ref.conversion, d.c.status.in_(DUE), d.c.id > after)
        .order_by(d.c.id).limit(size)).all()


# ---------------------------------------------------------------- one target


def send_target(store: Store, project: ProjectSpec, ref: ConversionTarget, destination: ConversionDestination,
                now: datetime, *, secrets: Sequence[str] = (), wall: Optional[datetime] = None) -> ConversionReport:
    """Send one target's due conversions at logical time `now`; `secrets` are masked in every
    recorded reason. `wall`: the real time, which the platform judges ages by (default: the
    clock of this machine; a test gives its fake platform's clock)."""
    started = time.perf_counter()
    report = ConversionReport(ref.conversion, ref.destination, ref.key)
    requests_before = destination.requests_sent
    skipped: Counter = Counter()
    failures: Counter = Counter()
    r = conversion_run_t
    with store.engine.begin() as conn:
        conn.execute(update(r).where(r.c.conversion == ref.conversion, r.c.target == ref.key, r.c.status == "running")
                     .values(status="interrupted"))
        run_id = conn.execute(r.insert().values(
            conversion=ref.conversion, target=ref.key, destination=ref.destination, started_at=_wall(),
            status="running", due=0, sent=0, skipped=0, failed=0, validated=0, requests=0, duration_ms=0,
            skipped_reasons={}, errors=[])).inserted_primary_key[0]
    max_age = destination.max_age(ref.target)
    wall = wall or _wall()
    with store.engine.begin() as conn:
        enqueue(conn, target=ref.key, destination=ref.destination, conversion=ref.conversion,
                since=floor(ref.since, max_age, now, wall), now=now, stamp=_wall())
    # The platform judges an event's age by its own clock, the real time of the request: a run
    # dated in the past (a late or catch-up Prefect run) must not send what is stale by then —
    # as current_consent lets a revocation up to the wall clock win over a past `now`.
    oldest = max(now, wall) - max_age + AGE_MARGIN if max_age is not None else None
    currency = project.policies.currency
    size = destination.max_batch
    ready: list[tuple[Any, ConversionEvent]] = []  # checked, waiting for a full batch
    after = 0
    while True:
        with store.reading() as conn:
            rows = _page(conn, ref, after, size)
            if rows:
                after = rows[-1].id
                contact_ids = [row.contact_id for row in rows]
                consent = current_consent(conn, contact_ids, "ads", "marketing", now, wall)
                blocked = _blocked(conn, rows)
                touches = _touches(conn, contact_ids)
        skips: dict[int, ConversionResult] = {}
        for row in rows:
            reason = None
            if row.event_id is None:
                reason = "event_gone"
            elif row.contact_id in blocked:
                reason = blocked[row.contact_id]
            elif consent.get(row.contact_id, ("none", None))[0] != "granted":
                reason = "no_ads_consent"
            elif oldest is not None and row.occurred_at < oldest:
                reason = "too_old"
            if reason:
                skips[row.event_pk] = ConversionResult(row.event_pk, "skipped", reason)
            else:
                ready.append((row, _event(row, touches, currency)))
        if skips:
            _record(store, [row for row in rows if row.event_pk in skips], skips, run_id, secrets, report, skipped,
                    failures)
        # full batches only, while pages keep coming: skips never make a request smaller than it could be
        while ready and (len(ready) >= size or not rows):
            batch, ready = ready[:size], ready[size:]
            outcome: dict[int, ConversionResult] = {}
            for result in destination.send(ref.target, [event for _, event in batch], now):
                outcome.setdefault(result.event_pk, result)
            _record(store, [row for row, _ in batch], outcome, run_id, secrets, report, skipped, failures)
        if not rows:
            break
    report.requests = destination.requests_sent - requests_before
    report.duration_ms = int((time.perf_counter() - started) * 1000)
    report.skipped_reasons = dict(skipped)
    report.errors = [{"reason": reason, "count": n} for reason, n in failures.most_common(20)]
    report.status = "ok" if not report.failed else ("partial" if report.sent or report.validated else "failed")
    _finish(store, run_id, report)
    return report


def _record(store: Store, rows: Sequence[Any], outcome: dict[int, ConversionResult], run_id: int,
            secrets: Sequence[str], report: ConversionReport, skipped: Counter, failures: Counter) -> None:
    """Write a page's outcomes in one transaction, and count them."""
    acked = _wall()
    updates = []
    for row in rows:
        result = outcome.get(row.event_pk) or ConversionResult(row.event_pk, "failed", "no answer from the destination")
        if result.status not in RESULTS:  # a plug-in's bug: never recorded as anything but a failure
            result = ConversionResult(row.event_pk, "failed", f"unknown result status {str(result.status)[:40]!r}")
        reason = (redact(result.reason, secrets) or "")[:MAX_REASON] or None
        carried = result.status in ("sent", "failed", "validated")
        status = "pending" if result.status == "validated" else result.status
        updates.append({"did": row.id, "st": status, "why": reason, "tries": row.attempts + (1 if carried else 0),
                        "rid": (result.request_id or None) and str(result.request_id)[:200],
                        "at": acked if status == "sent" else None, "now": acked, "run": run_id})
        report.due += 1
        if result.status == "sent":
            report.sent += 1
        elif result.status == "validated":
            report.validated += 1
        elif result.status == "skipped":
            report.skipped += 1
            skipped[reason or "skipped"] += 1
        else:
            report.failed += 1
            failures[reason or "failed"] += 1
    d = conversion_delivery_t
    with store.engine.begin() as conn:
        write_many(conn, update(d).where(d.c.id == bindparam("did")).values(
            status=bindparam("st"), reason=bindparam("why"), attempts=bindparam("tries"), request_id=bindparam("rid"),
            sent_at=bindparam("at"), updated_at=bindparam("now"), run_id=bindparam("run")), updates)


def _finish(store: Store, run_id: int, report: ConversionReport) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(conversion_run_t).where(conversion_run_t.c.id == run_id).values(
            finished_at=_wall(), status=report.status, due=report.due, sent=report.sent, skipped=report.skipped,
            failed=report.failed, validated=report.validated, requests=report.requests,
            duration_ms=report.duration_ms, skipped_reasons=report.skipped_reasons, errors=report.errors))


def _record_failure(store: Store, ref: ConversionTarget, reason: str) -> ConversionReport:
    report = ConversionReport(ref.conversion, ref.destination, ref.key, status="failed",
                              errors=[{"reason": reason, "count": 1}])
    with store.engine.begin() as conn:
        conn.execute(update(conversion_run_t).where(
            conversion_run_t.c.conversion == ref.conversion, conversion_run_t.c.target == ref.key,
            conversion_run_t.c.status == "running").values(status="interrupted"))
        run_id = conn.execute(conversion_run_t.insert().values(
            conversion=ref.conversion, target=ref.key, destination=ref.destination, started_at=_wall(),
            status="failed", due=0, sent=0, skipped=0, failed=0, validated=0, requests=0, duration_ms=0,
            skipped_reasons={}, errors=[])).inserted_primary_key[0]
    _finish(store, run_id, report)
    return report


# ---------------------------------------------------------------- every target

Factory = Callable[[str, IntegrationContext], ConversionDestination]


def default_factory(platform: str, context: IntegrationContext) -> ConversionDestination:
    return lookup_destination(platform).from_env(context)  # type: ignore[return-value]


def send_one(store: Store, project: ProjectSpec, ref: ConversionTarget, now: datetime, context: IntegrationContext,
             factory: Optional[Factory] = None, *, wall: Optional[datetime] = None) -> ConversionReport:
    """Send one target; a destination that cannot start (missing credentials) or a bug in a
    plug-in is a failed run with its reason, never an exception that stops the other targets."""
    secrets = secrets_in(context.env)
    try:
        destination = (factory or default_factory)(ref.destination, context)
    except IntegrationError as exc:
        return _record_failure(store, ref, redact(str(exc), secrets) or "")
    try:
        return send_target(store, project, ref, destination, now, secrets=secrets, wall=wall)
    except Exception as exc:  # a plug-in's bug: this target fails loudly, the others still run
        reason = redact(f"{type(exc).__name__} in {ref.destination}: {exc}", secrets) or ""
        return _record_failure(store, ref, reason[:MAX_REASON])
    finally:
        destination.close()


def send_conversions(store: Store, project: ProjectSpec, now: datetime, context: IntegrationContext, *,
                     factory: Optional[Factory] = None, wall: Optional[datetime] = None) -> list[ConversionReport]:
    """Every declared (conversion, destination), one after the other."""
    return [send_one(store, project, ref, now, context, factory, wall=wall) for ref in targets(project)]

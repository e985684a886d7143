"""Retention (`policies.yaml` `retention:`): how long each kind of record is kept, applied by
`nurture purge [--dry-run]` and by the `hygiene` flow. A kind without a period is kept.

| kind | what goes once older than its period |
|---|---|
| `events` | tracked events (by `occurred_at`) — except the trigger event of an enrollment still in its journey (its templates read it) |
| `messages` | message-log rows (by `created_at`) of enrollments that have left their journey (and system mail); never one still queued or sending, never one inside the longest frequency-cap window (caps count them) |
| `message_bodies` | the rendered bodies: outbox `.eml` files and `sms.jsonl` / `whatsapp.jsonl` lines of messages older than the period, and those of messages already purged (found from the files: a run's work is bounded by the bodies kept) |
| `pending_contacts` | contacts created before the cutoff whose consent never got past `pending` (no `granted` row ever): the contact and everything about it (events, consent rows, enrollments, messages, lead source). No tombstone: they may sign up again. Their acknowledged audience/CRM-list memberships stay until the next segment sync removes them at the destination (a deleted contact leaves every segment) and forgets them: deleted here, nothing could ever take them out of a HubSpot list (which needs no consent) |
| `sync_records` | audience/CRM sync runs (by `started_at`) |
| `erasure_records` | completed erasure records (by `completed_at`) |

The cutoff is the logical clock (`--now`) minus the period. Every kind is deleted set-based in
its own transaction; a dry run counts the same rows and files without touching them. Reports
lose what is purged: a journey's figures then cover the kept period (docs/report.md).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import and_, delete, exists, func, not_, or_, select

from nurture.privacy.files import EMAIL_OUTBOX, SMS_OUTBOX, WHATSAPP_OUTBOX, drop_lines, remove_outbox
from nurture.privacy.models import erasure_t
from nurture.runtime.sql import chunks, ids_in
from nurture.spec.models import Policies
from nurture.store.db import Store
from nurture.store.tables import (consent_t, contact_t, deal_t, enrollment_t, event_t, handover_t, message_t,
                                  identity_t, pending_t, suppression_t, sync_run_t, touch_t)

KINDS = ("events", "messages", "message_bodies", "pending_contacts", "sync_records", "erasure_records")
_EML = re.compile(r"^(\d{9,})\.eml$")  # `{id:09d}`: ten digits and more from id 10⁹ on


@dataclass
class PurgeResult:
    dry_run: bool
    cutoffs: dict[str, datetime] = field(default_factory=dict)  # kind → records before this go
    counts: Counter = field(default_factory=Counter)  # what was (or would be) removed, by name

    def rows(self) -> list[dict]:
        """One row per configured kind and what it removed: the purge's report."""
        return [{"kind": kind, "older_than": self.cutoffs[kind].isoformat(),
                 "removed": {k: v for k, v in sorted(self.counts.items()) if k.split(":")[0] == kind}}
                for kind in KINDS if kind in self.cutoffs]


def cutoffs(policies: Policies, now: datetime) -> dict[str, datetime]:
    kept = policies.retention
    out = {kind: now - getattr(kept, kind) for kind in KINDS if getattr(kept, kind) is not None}
    if "messages" in out and policies.frequency_caps:
        # rows inside a cap window still count against the caps: never purged before it ends
        longest = max(c.per for c in policies.frequency_caps)
        out["messages"] = min(out["messages"], now - longest)
    return out


def purge(store: Store, policies: Policies, now: datetime, data_dir: Path, *, dry_run: bool = False) -> PurgeResult:
    result = PurgeResult(dry_run, cutoffs(policies, now))
    steps: list[tuple[str, Callable[[Any, datetime, Path, PurgeResult], None]]] = [
        ("message_bodies", _bodies), ("pending_contacts", _pending_contacts), ("messages", _messages),
        ("events", _events), ("sync_records", _sync_records), ("erasure_records", _erasure_records)]
    for kind, step in steps:
        cutoff = result.cutoffs.get(kind)
        if cutoff is None:
            continue
        with (store.reading() if dry_run else store.engine.begin()) as conn:
            step(conn, cutoff, data_dir, result)
    return result


def _remove(conn: Any, result: PurgeResult, name: str, table: Any, where: Any) -> None:
    """Count (dry run) or delete the rows of `table` matching `where`."""
    if result.dry_run:
        n = conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()
    else:
        n = conn.execute(delete(table).where(where)).rowcount or 0
    if n:
        result.counts[name] += n


def _left_journey() -> Any:
    """A message whose enrollment has left its journey (or that has none: system mail)."""
    return or_(message_t.c.enrollment_id.is_(None),
               exists().where(enrollment_t.c.id == message_t.c.enrollment_id, enrollment_t.c.status != "active"))


def _bodies(conn: Any, cutoff: datetime, data_dir: Path, result: PurgeResult) -> None:
    """The bodies the outbox holds — `.eml` files, `sms.jsonl` and `whatsapp.jsonl` lines — of
    messages older than the cutoff (never one still queued or sending) or whose row is gone
    (purged earlier, or the database was reset). Found from the files, so each run's work is
    bounded by the bodies kept (the period's), not by the message rows kept for years: the
    hygiene flow runs every 15 minutes."""
    root = data_dir.joinpath(*EMAIL_OUTBOX)
    emails: dict[int, list[Path]] = {}
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir():
                for path in folder.iterdir():
                    if (m := _EML.match(path.name)) is not None:
                        emails.setdefault(int(m.group(1)), []).append(path)
    outboxes = {channel: data_dir.joinpath(*outbox) for channel, outbox in
                (("sms", SMS_OUTBOX), ("whatsapp", WHATSAPP_OUTBOX))}
    lines = {channel: _line_ids(path) for channel, path in outboxes.items()}
    gone = _gone(conn, set(emails) | {mid for ids in lines.values() for mid in ids}, cutoff)
    for mid in sorted(gone & set(emails)):
        for path in emails[mid]:
            if not result.dry_run:
                path.unlink(missing_ok=True)
            result.counts["message_bodies:outbox_emails"] += 1
    for channel, path in outboxes.items():
        if not gone.intersection(lines[channel]):
            continue
        if result.dry_run:
            n = sum(mid in gone for mid in lines[channel])
        else:
            n = drop_lines(path, lambda r: r.get("message_id") in gone)
        if n:
            result.counts[f"message_bodies:outbox_{channel}"] += n


def _line_ids(path: Path) -> list[int]:
    """The message id of each line of an outbox JSONL file (a line that is not one is kept)."""
    if not path.is_file():
        return []
    ids = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                mid = json.loads(line).get("message_id")
            except (ValueError, AttributeError):
                continue
            if isinstance(mid, int) and not isinstance(mid, bool):
                ids.append(mid)
    return ids


def _gone(conn: Any, ids: set[int], cutoff: datetime) -> set[int]:
    """Of these message ids, those whose body goes: the row is older than the cutoff and no
    longer queued or sending, or there is no row."""
    existing: set[int] = set()
    old: set[int] = set()
    for part in chunks(sorted(ids)):
        existing.update(conn.execute(select(message_t.c.id).where(ids_in(message_t.c.id, part))).scalars())
        old.update(conn.execute(select(message_t.c.id).where(
            ids_in(message_t.c.id, part), message_t.c.created_at < cutoff,
            message_t.c.status.not_in(("queued", "sending")))).scalars())
    return old | (ids - existing)


def _pending_contacts(conn: Any, cutoff: datetime, data_dir: Path, result: PurgeResult) -> None:
    never_granted = and_(  # (an erased contact has neither address nor number left)
        contact_t.c.created_at < cutoff, or_(contact_t.c.email.is_not(None), contact_t.c.phone.is_not(None)),
        exists().where(consent_t.c.contact_id == contact_t.c.id, consent_t.c.status == "pending"),
        not_(exists().where(consent_t.c.contact_id == contact_t.c.id, consent_t.c.status == "granted")))
    ids = list(conn.execute(select(contact_t.c.id).where(never_granted)).scalars())
    for part in chunks(ids):
        mine = ids_in(contact_t.c.id, part)
        if not result.dry_run:  # their files too: .eml, SMS outbox and handover lines (as `erase` does)
            sent = conn.execute(select(message_t.c.id, message_t.c.journey, message_t.c.channel)
                                .where(ids_in(message_t.c.contact_id, part))).all()
            handovers = conn.execute(select(handover_t.c.id).where(ids_in(handover_t.c.contact_id, part))).scalars()
            remove_outbox(data_dir, emails=[(m, j) for m, j, c in sent if c == "email"],
                          sms=[m for m, _, c in sent if c == "sms"], whatsapp=[m for m, _, c in sent if c == "whatsapp"],
                          handovers=list(handovers))
            # a CRM deal keeps its amounts (pipeline and revenue still add up), not the person
            conn.execute(deal_t.update().where(ids_in(deal_t.c.contact_id, part)).values(contact_id=None, email=None))
        for name, table, where in (
                ("messages", message_t, ids_in(message_t.c.contact_id, part)),
                ("handovers", handover_t, ids_in(handover_t.c.contact_id, part)),
                ("enrollments", enrollment_t, ids_in(enrollment_t.c.contact_id, part)),
                ("events", event_t, ids_in(event_t.c.contact_id, part)),
                ("consents", consent_t, ids_in(consent_t.c.contact_id, part)),
                ("suppressions", suppression_t, ids_in(suppression_t.c.contact_id, part)),
                ("lead_sources", touch_t, ids_in(touch_t.c.contact_id, part)),
                ("identities", identity_t, ids_in(identity_t.c.contact_id, part))):
            _remove(conn, result, f"pending_contacts:{name}", table, where)
        _remove(conn, result, "pending_contacts:contacts", contact_t, mine)


def _messages(conn: Any, cutoff: datetime, data_dir: Path, result: PurgeResult) -> None:
    _remove(conn, result, "messages:messages", message_t,
            and_(message_t.c.created_at < cutoff, message_t.c.status.not_in(("queued", "sending")), _left_journey()))


def _events(conn: Any, cutoff: datetime, data_dir: Path, result: PurgeResult) -> None:
    in_use = or_(exists().where(enrollment_t.c.trigger_event_pk == event_t.c.id, enrollment_t.c.status == "active"),
                 exists().where(pending_t.c.event_pk == event_t.c.id))
    _remove(conn, result, "events:events", event_t, and_(event_t.c.occurred_at < cutoff, not_(in_use)))


def _sync_records(conn: Any, cutoff: datetime, data_dir: Path, result: PurgeResult) -> None:
    _remove(conn, result, "sync_records:sync_runs", sync_run_t, sync_run_t.c.started_at < cutoff)


def _erasure_records(conn: Any, cutoff: datetime, data_dir: Path, result: PurgeResult) -> None:
    _remove(conn, result, "erasure_records:erasures", erasure_t,
            and_(erasure_t.c.completed_at.is_not(None), erasure_t.c.completed_at < cutoff))

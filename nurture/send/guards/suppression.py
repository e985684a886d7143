"""Suppressions (unsubscribed, bounced, complained, SMS-stopped, manual), by contact or by
address, looked up for a whole batch in one query."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

from nurture.runtime.sql import ids_in, texts_in
from nurture.store.tables import suppression_t

# An unsubscribe ends marketing; bounces, complaints and STOP end every message.
MARKETING_ONLY = {"unsubscribed"}


_FOR = (select(suppression_t.c.contact_id, suppression_t.c.address, suppression_t.c.channel, suppression_t.c.reason)
        .where(or_(ids_in(suppression_t.c.contact_id, ()), texts_in(suppression_t.c.address, ()))))


def suppressions_for(conn: Connection, contact_ids: Iterable[int], addresses: Iterable[str]
                     ) -> tuple[dict[int, list[tuple[Optional[str], str]]], dict[str, list[tuple[Optional[str], str]]]]:
    by_contact: dict[int, list] = defaultdict(list)
    by_address: dict[str, list] = defaultdict(list)
    ids, addrs = list(contact_ids), [a.lower() for a in addresses if a]
    for start in range(0, max(len(ids), len(addrs)), 2000):
        id_chunk, addr_chunk = ids[start:start + 2000], addrs[start:start + 2000]
        if not id_chunk and not addr_chunk:
            break
        rows = conn.execute(_FOR, {"ids_contact_id": list(id_chunk), "texts_address": list(addr_chunk)}).all()
        for contact_id, address, channel, reason in rows:
            if contact_id is not None:
                by_contact[contact_id].append((channel, reason))
            if address:
                by_address[address.lower()].append((channel, reason))
    return by_contact, by_address


def suppression_reason(entries: Iterable[tuple[Optional[str], str]], channel: str, purpose: str) -> Optional[str]:
    for entry_channel, reason in entries:
        if entry_channel not in (None, channel):
            continue
        if purpose == "transactional" and reason in MARKETING_ONLY:
            continue
        return reason
    return None

"""WhatsApp's own rules (WhatsApp Business messaging policy, as Twilio documents it: error
63016 "Outside messaging window"):

- Opt-in only: the `whatsapp` consent channel needs an explicit grant for every purpose —
  a transactional message too (`EXPLICIT_OPT_IN`).
- The 24-hour customer-service window: free text may only go to a contact whose last inbound
  WhatsApp message (the `whatsapp_received` event the Twilio webhook records) is less than 24
  hours old. Outside it, only an approved template (`content_sid`) may be sent; a step without
  one skips such contacts (`whatsapp_session_closed`) — or, with `channels:`, passes over to
  the next channel.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import select

# WHATSAPP_RECEIVED: the event an inbound WhatsApp message records (nurture.web.webhooks.twilio_inbound);
# no ingest path accepts it from outside (nurture.event_schema.RESERVED).
from nurture.event_schema import WHATSAPP_RECEIVED
from nurture.runtime.sql import chunks, ids_in
from nurture.store.tables import event_t

EXPLICIT_OPT_IN = frozenset({"whatsapp"})
SESSION = timedelta(hours=24)


def whatsapp_sessions(conn: Any, contact_ids: Iterable[int], now: datetime) -> set[int]:
    """The contacts whose 24-hour WhatsApp session is open at `now` (one indexed query per
    chunk: ix_event_contact_name_time)."""
    open_: set[int] = set()
    for part in chunks(sorted(set(contact_ids))):
        open_.update(r[0] for r in conn.execute(
            select(event_t.c.contact_id).distinct()
            .where(ids_in(event_t.c.contact_id, part), event_t.c.name == WHATSAPP_RECEIVED,
                   event_t.c.occurred_at > now - SESSION, event_t.c.occurred_at <= now)))
    return open_

"""Writing to the consent ledger (append-only) and to the suppression list."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select

from nurture.store.models import Consent, Contact, Suppression

consent_t = Consent.__table__
contact_t = Contact.__table__
suppression_t = Suppression.__table__


class UnknownContact(LookupError):
    pass


def contact_id_by_email(conn: Any, email: str) -> int:
    cid = conn.execute(select(contact_t.c.id).where(contact_t.c.email == email.strip().lower())).scalar()
    if cid is None:
        raise UnknownContact(f"no contact with e-mail {email}")
    return cid


def record_consent(conn: Any, contact_id: int, channel: str, status: str, *, purpose: str = "marketing",
                   source: str, at: datetime, policy_version: str = "", confirmed: bool = False) -> None:
    conn.execute(consent_t.insert().values(
        contact_id=contact_id, channel=channel, purpose=purpose, status=status, source=source,
        policy_version=policy_version, recorded_at=at,
        confirmed_at=at if (confirmed and status == "granted") else None))


def is_suppressed(conn: Any, *, address: str, reason: str) -> bool:
    """Whether the address is already on the suppression list for this reason: webhooks are
    replayed by their providers, and a replay must neither add a row nor count as applied."""
    return conn.execute(select(suppression_t.c.id).where(suppression_t.c.address == address.lower(),
                                                         suppression_t.c.reason == reason).limit(1)).first() is not None


def suppress(conn: Any, *, reason: str, at: datetime, contact_id: Optional[int] = None,
             address: Optional[str] = None, channel: Optional[str] = None) -> None:
    conn.execute(suppression_t.insert().values(contact_id=contact_id, address=address.lower() if address else None,
                                               channel=channel, reason=reason, created_at=at))

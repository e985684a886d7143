"""The `erasure` table: one row per erasure request (GDPR Art. 17) — who asked (the CLI user,
the web API, a CRM webhook), when, why, what became of it and how many records of each kind
were removed or pseudonymized. Never the personal data itself: the person is named only by
`subject_hash` (SHA-256 of the normalized e-mail, the same value as the consent ledger's
tombstone and the `erased` suppression), and only when something was held about them."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, Column, Index, Table
from sqlmodel import Field, SQLModel

# Outcomes of one request.
ERASED = "erased"  # personal data removed now (`pending` lists what must still happen downstream)
ALREADY_ERASED = "already_erased"  # erased before; only outstanding downstream work was retried
NOT_FOUND = "not_found"  # nothing held about this address
IN_PROGRESS = "in_progress"  # the store part committed, downstream work not yet recorded (a crash)


class Erasure(SQLModel, table=True):
    __tablename__ = "erasure"
    __table_args__ = (Index("ix_erasure_subject", "subject_hash"), Index("ix_erasure_contact", "contact_id"))
    id: Optional[int] = Field(default=None, primary_key=True)
    contact_id: Optional[int] = None  # the pseudonymized contact row (no foreign key: a purge may delete it)
    subject_hash: Optional[str] = None  # SHA-256 hex of the normalized e-mail; None for not_found
    actor: str  # who: cli:<user> | web | webhook:hubspot
    reason: str  # why: a short label (request, hubspot_privacy_deletion, …)
    outcome: str  # erased | already_erased | not_found | in_progress
    removed: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    pending: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    requested_at: datetime
    completed_at: Optional[datetime] = None


erasure_t: Table = Erasure.__table__  # type: ignore[attr-defined]

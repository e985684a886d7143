"""The `handover` table: one row per MQL handed to sales by a journey's `handover` step —
what was sent where, the sales task's SLA due time, and the delivery outcome. Whether sales
made contact within the SLA is read from `sales_contacted` events (see docs/scoring.md)."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class Handover(SQLModel, table=True):
    __tablename__ = "handover"
    __table_args__ = (UniqueConstraint("enrollment_id", "step_id", name="uq_handover_step"),
                      Index("ix_handover_contact", "contact_id", "created_at"))
    id: Optional[int] = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id")
    enrollment_id: Optional[int] = Field(default=None, foreign_key="enrollment.id")
    journey: str
    step_id: str
    stage: str
    score: float
    owner: Optional[str] = None
    note: str = ""
    destination: str  # crm integration name, or "file"
    status: str  # pending | delivered | failed | holdout (a holdout member's pass: never delivered)
    reason: Optional[str] = None
    external_id: Optional[str] = None
    attempts: int = 0
    sla_due_at: datetime
    created_at: datetime
    delivered_at: Optional[datetime] = None
    # The delivery run that holds a pending row (nurture.scoring.handover): its token and when
    # it took the row, by the wall clock. None: nobody is delivering it (migration 0024).
    claim: Optional[str] = None
    claimed_at: Optional[datetime] = None

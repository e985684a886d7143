"""The tables of the conversions: one row per (destination, event) — what happened to that
conversion at that platform — and one row per run of a (conversion, destination).

`conversion_delivery` is unique on (target, event_pk): an event is sent to a destination
exactly once. A row is written `pending` when the event falls due, before anything is sent;
it becomes `sent` only after the platform ACKNOWLEDGED the batch that carried it, `failed`
when the platform refused it (or kept failing), `skipped` with a reason when it must not or
cannot be sent (no ads consent, erased, too old for the platform, no identifier). Pending
and failed rows are retried by the next run; a crash between a request and its
acknowledgement leaves the batch `pending`, so it is sent again — harmless, because every
platform de-duplicates by the conversion's event id (nurture.conversions.event_fields).
Rows hold no personal data: ids, statuses, reasons, times.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

DeliveryStatus = Literal["pending", "sent", "skipped", "failed"]
RunStatus = Literal["running", "ok", "partial", "failed", "interrupted"]


class ConversionDelivery(SQLModel, table=True):
    __tablename__ = "conversion_delivery"
    __table_args__ = (UniqueConstraint("target", "event_pk", name="uq_conversion_delivery"),
                      Index("ix_conversion_delivery_due", "target", "status", "id"),
                      Index("ix_conversion_delivery_contact", "contact_id"))
    id: Optional[int] = Field(default=None, primary_key=True)
    target: str  # destination key, e.g. "meta:1234567890" (ConversionDestination.target_key)
    destination: str  # meta | google | linkedin | csv | a plug-in's name
    conversion: str  # the declared event: purchase, deal_won, mql, …
    event_pk: int  # event.id; no foreign key: a purged event must not block anything
    contact_id: int
    status: str = "pending"  # DeliveryStatus
    reason: Optional[str] = None
    attempts: int = 0  # requests that carried it (skips do not count)
    request_id: Optional[str] = None  # the platform's id of the acknowledged request (or the CSV file)
    created_at: datetime  # when it fell due
    updated_at: datetime
    sent_at: Optional[datetime] = None
    run_id: Optional[int] = None  # the conversion_run that last handled it


class ConversionRun(SQLModel, table=True):
    __tablename__ = "conversion_run"
    __table_args__ = (Index("ix_conversion_run_target", "conversion", "target", "started_at"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    conversion: str
    target: str
    destination: str
    started_at: datetime
    finished_at: Optional[datetime] = None
    status: str = "running"  # RunStatus
    due: int = 0  # rows handled: new and retried
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    validated: int = 0  # dry runs (Google validateOnly): checked by the platform, still pending
    requests: int = 0
    duration_ms: int = 0
    skipped_reasons: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    errors: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))

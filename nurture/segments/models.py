"""The tables of the segment sync: what each destination has acknowledged, and one row per
sync of a (segment, destination).

`segment_membership` is the last state a destination ACKNOWLEDGED — never what we merely
intended to send. A row is written only after the provider confirmed the record, and
deleted only after it confirmed the removal, so the next diff is always against the truth
as far as we know it. `payload` keeps what was sent (hashed identifiers, a CRM record id):
removals must name exactly what was added, even after the contact changed its e-mail.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def _json_column() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))


class SegmentMembership(SQLModel, table=True):
    __tablename__ = "segment_membership"
    __table_args__ = (UniqueConstraint("segment", "target", "contact_id", name="uq_segment_membership"),
                      Index("ix_segment_membership_contact", "contact_id"),
                      # is an identifier still held by another row of the same target? (sync.push_removals)
                      Index("ix_segment_membership_fingerprint", "target", "fingerprint"))
    id: Optional[int] = Field(default=None, primary_key=True)
    segment: str
    target: str  # destination key, e.g. "meta:123456" (see nurture.segments.targets)
    contact_id: int  # no foreign key: a deleted contact must still be removed downstream
    contact_version: datetime  # contact.updated_at when acknowledged: a change re-checks it
    fingerprint: str  # digest of payload: unchanged identifiers are not sent again
    payload: dict = _json_column()
    acked_at: datetime


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_run"
    __table_args__ = (Index("ix_sync_run_target", "segment", "target", "started_at"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    segment: str
    target: str
    destination: str
    started_at: datetime
    finished_at: Optional[datetime] = None
    status: str = "running"  # running | ok | partial | failed
    members: int = 0  # desired members at the time of the run
    added: int = 0
    removed: int = 0
    updated: int = 0
    failed: int = 0
    requests: int = 0
    duration_ms: int = 0
    errors: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))

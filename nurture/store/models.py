"""The tables of Nurture: contacts, their events and consent ledger, suppressions,
journey enrollments, the message outbox/audit log and the product catalog.

All datetimes are timezone-aware UTC (SQLModel's UTCDateTime stores them as UTC on both
backends); local time exists only inside the guards and rendering.
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Any, Final, Literal, Optional, get_args

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def _json_column() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))


# The tables whose ids cursors read past (a journey trigger's `last_event_pk`, a Runtime's
# incremental looks: nurture.store.event_order) or that outlive their rows (a contact's id in
# the links of the mail it was sent and in the memberships left for the next sync; a message's
# in its Message-ID): on SQLite AUTOINCREMENT, so an id is never handed out again after the
# newest rows were deleted (migrations 0019, 0020, 0029).
IDS_ONLY_GROW = {"sqlite_autoincrement": True}


class Contact(SQLModel, table=True):
    __table_args__ = (IDS_ONLY_GROW,)
    id: Optional[int] = Field(default=None, primary_key=True)
    email: Optional[str] = Field(default=None, unique=True, index=True)
    phone: Optional[str] = Field(default=None, index=True)
    external_id: Optional[str] = Field(default=None, unique=True, index=True)  # Segment's userId (0014)
    first_name: Optional[str] = None
    last_name: Optional[str] = None
    timezone: Optional[str] = None
    country: Optional[str] = None
    locale: Optional[str] = None
    lifecycle_stage: str = Field(default="lead")
    score: float = Field(default=0.0)
    # JSONB on PostgreSQL (migration 0005): conditions read attributes for every contact at once,
    # and `json` would be re-parsed from text on every access.
    attributes: dict = Field(default_factory=dict, sa_column=Column(
        JSON().with_variant(JSONB(), "postgresql"), nullable=False, default=dict))
    created_at: datetime
    updated_at: datetime


class Event(SQLModel, table=True):
    __table_args__ = (Index("ix_event_contact_name_time", "contact_id", "name", "occurred_at"),
                      Index("ix_event_name_id", "name", "id"), IDS_ONLY_GROW)
    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)
    contact_id: int = Field(foreign_key="contact.id")
    name: str
    properties: dict = _json_column()
    occurred_at: datetime
    received_at: datetime


class Consent(SQLModel, table=True):
    """Append-only ledger; the current state of (contact, channel, purpose) is its latest row."""
    __table_args__ = (Index("ix_consent_lookup", "contact_id", "channel", "purpose", "recorded_at", "id"),
                      IDS_ONLY_GROW)
    id: Optional[int] = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id")
    channel: str  # email | sms | ads
    purpose: str = "marketing"  # marketing | transactional
    status: str  # granted | revoked | pending
    source: str
    policy_version: str = ""
    recorded_at: datetime
    confirmed_at: Optional[datetime] = None
    subject_hash: Optional[str] = None  # an erasure's tombstone: SHA-256 of the e-mail (nurture.privacy)
    # Proof of a consent given on Nurture's own web pages (nurture.consent_ledger.Proof)
    ip_address: Optional[str] = None
    user_agent: Optional[str] = None


class Suppression(SQLModel, table=True):
    __table_args__ = (Index("ix_suppression_contact", "contact_id"),
                      Index("ix_suppression_address", "address"))
    id: Optional[int] = Field(default=None, primary_key=True)
    contact_id: Optional[int] = Field(default=None, foreign_key="contact.id")
    address: Optional[str] = None  # lowercased e-mail or E.164 phone
    channel: Optional[str] = None  # None: every channel
    reason: str  # unsubscribed | hard_bounce | complaint | sms_stop | manual
    created_at: datetime


class JourneyVersion(SQLModel, table=True):
    """Every compiled version of a journey that ever ran: how in-flight contacts are
    migrated when a live journey is edited."""
    __table_args__ = (UniqueConstraint("journey", "version"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    journey: str = Field(index=True)
    version: str
    step_order: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    spec: dict = _json_column()
    created_at: datetime


class JourneyCursor(SQLModel, table=True):
    """How far the trigger of a journey has read the event table (by event.id), and which
    trigger event it read (a changed trigger starts again; None: not recorded yet)."""
    journey: str = Field(primary_key=True)
    last_event_pk: int = 0
    updated_at: datetime
    trigger_event: Optional[str] = None


class JourneyPendingTrigger(SQLModel, table=True):
    """Trigger events the cursor passed while they were still in the future (clock skew,
    scheduled events): they enroll once their time has come, without holding others back."""
    __table_args__ = (Index("ix_pending_trigger_due", "journey", "occurred_at"),)
    journey: str = Field(primary_key=True)
    event_pk: int = Field(primary_key=True)
    occurred_at: datetime


class Enrollment(SQLModel, table=True):
    __table_args__ = (Index("ix_enrollment_due", "journey", "status", "step_id", "next_due_at"),
                      Index("ix_enrollment_contact", "contact_id", "journey"),
                      # the conversion check of every tick: open goal windows (outcomes.record_conversions)
                      Index("ix_enrollment_open_goal", "journey", "converted_at", "entered_at"),
                      Index("uq_enrollment_trigger_key", "journey", "contact_id", "trigger_key", unique=True),
                      IDS_ONLY_GROW)
    id: Optional[int] = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id")
    journey: str
    version: str
    step_id: Optional[str] = None  # None once the journey is left
    next_due_at: Optional[datetime] = None
    step_entered_at: Optional[datetime] = None
    status: str = "active"  # active | completed | exited | converted
    holdout: bool = False
    entered_at: datetime
    left_at: Optional[datetime] = None
    exit_reason: Optional[str] = None
    trigger_event_pk: Optional[int] = None
    # the date-trigger occurrence that enrolled the contact (0016): unique per journey and contact
    trigger_key: Optional[str] = None
    converted_at: Optional[datetime] = None
    revenue: float = 0.0
    defer_count: int = 0
    state: dict = _json_column()  # split arms chosen etc.


# What became of a message (`message.status`). A send step's outcome is decided by the guard
# pipeline (queued, or holdout / suppressed / skipped / deferred with a reason code); delivery
# takes a queued row through `sending` to `sent` or `failed` (a retry goes back to queued).
MessageStatus = Literal["queued", "sending", "sent", "deferred", "suppressed", "skipped", "failed", "holdout"]
QUEUED: Final[MessageStatus] = "queued"
SENDING: Final[MessageStatus] = "sending"
SENT: Final[MessageStatus] = "sent"
DEFERRED: Final[MessageStatus] = "deferred"
SUPPRESSED: Final[MessageStatus] = "suppressed"
SKIPPED: Final[MessageStatus] = "skipped"
FAILED: Final[MessageStatus] = "failed"
HOLDOUT: Final[MessageStatus] = "holdout"
MESSAGE_STATUSES: Final[tuple[MessageStatus, ...]] = get_args(MessageStatus)


class Message(SQLModel, table=True):
    """Outbox and audit log in one. `attempt_key` is 'send' for the one delivery of a step
    (so a retry can never send twice) and 'defer:N' for the record of each deferral."""
    __table_args__ = (UniqueConstraint("enrollment_id", "step_id", "attempt_key", name="uq_message_attempt"),
                      Index("ix_message_cap", "contact_id", "counted_at"),
                      Index("ix_message_queue", "status", "due_at"),
                      Index("ix_message_journey", "journey", "step_id"), IDS_ONLY_GROW)
    id: Optional[int] = Field(default=None, primary_key=True)
    enrollment_id: Optional[int] = Field(default=None, foreign_key="enrollment.id")
    contact_id: int = Field(foreign_key="contact.id")
    journey: str
    step_id: str
    attempt_key: str = "send"
    channel: str
    purpose: str = "marketing"
    template: str
    subject: Optional[str] = None
    address: Optional[str] = None
    status: str  # a MessageStatus (stored as text: no schema change for a new status)
    reason: Optional[str] = None
    due_at: datetime
    counted_at: Optional[datetime] = None  # when it started counting against frequency caps
    sent_at: Optional[datetime] = None
    provider_id: Optional[str] = None
    claim: Optional[str] = None
    claimed_at: Optional[datetime] = None  # when a worker took it for delivery (crash detection)
    attempts: int = 0
    created_at: datetime
    # A send step with `channels: [...]`: why the channels before this one were passed over
    # ("whatsapp: no_consent; sms: quiet_hours"); NULL for a single-channel send.
    passed_over: Optional[str] = None


# The product catalog (nurture.catalog: import, and `catalog.related(...)` for templates). Declared
# here, with the other core tables, so that nurture.store.tables can name it without importing
# the catalog's import code.
class Product(SQLModel, table=True):
    __tablename__ = "product"
    __table_args__ = (Index("ix_product_category", "category", "active", "rank"),)
    sku: str = Field(primary_key=True)
    name: str
    category: str
    price: float
    url: Optional[str] = None
    image_url: Optional[str] = None
    consumption_days: Optional[int] = None
    active: bool = True
    rank: int = 1000
    attributes: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    updated_at: datetime


class ContactTouch(SQLModel, table=True):
    """A contact's lead source (nurture.sources): its `first` and its `last` marketing touch —
    the UTM parameters and click id of the earliest and the latest tracked event that carried
    any (`occurred_at` decides, so late-arriving events land in the right place)."""
    __tablename__ = "contact_touch"
    __table_args__ = (Index("ix_contact_touch_source", "touch", "source", "medium"),)
    contact_id: int = Field(foreign_key="contact.id", primary_key=True)
    touch: str = Field(primary_key=True)  # first | last
    source: Optional[str] = None
    medium: Optional[str] = None
    campaign: Optional[str] = None
    content: Optional[str] = None
    term: Optional[str] = None
    click_id_type: Optional[str] = None  # gclid | gbraid | wbraid | fbclid | ttclid | li_fat_id | msclkid
    click_id: Optional[str] = None
    event_pk: Optional[int] = None  # the event it came from (None: an import column)
    occurred_at: datetime


class AdSpend(SQLModel, table=True):
    """Ad spend per day, source, medium and campaign (`nurture import spend`): a re-import of the
    same day/source/medium/campaign replaces the amount. `medium` is '' when the file has none."""
    __tablename__ = "ad_spend"
    __table_args__ = (UniqueConstraint("day", "source", "medium", "campaign", name="uq_ad_spend_key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    day: date
    source: str
    medium: str = ""
    campaign: str
    amount: float
    currency: str
    imported_from: str
    imported_at: datetime


class SplitDecision(SQLModel, table=True):
    """A split's `auto_winner` decision: from `decided_at` on, new arrivals go to `winner`; the
    journey version carrying it is `version`. `stats` keeps the per-arm figures it was made on."""
    __tablename__ = "split_decision"
    journey: str = Field(primary_key=True)
    step_id: str = Field(primary_key=True)
    winner: str
    metric: str
    confidence: float
    decided_at: datetime
    version: Optional[str] = None
    stats: dict = _json_column()


class Deal(SQLModel, table=True):
    """A CRM deal as Nurture last saw it (nurture.crm): pulled from HubSpot (`crm` "hubspot") or
    imported from a CRM export ("import"). `outcome` is open | won | lost; its stage changes are
    also events of the contact (deal_created, deal_stage_changed, deal_won, deal_lost).
    `contact_id` is None for a deal whose contacts Nurture does not know (counted, reported)."""
    __tablename__ = "deal"
    __table_args__ = (Index("ix_deal_contact", "contact_id"), Index("ix_deal_outcome", "outcome"))
    crm: str = Field(primary_key=True)
    deal_id: str = Field(primary_key=True)
    contact_id: Optional[int] = Field(default=None, foreign_key="contact.id")
    email: Optional[str] = None  # the associated contact's address as the CRM has it
    name: Optional[str] = None
    pipeline: Optional[str] = None
    stage: str
    outcome: str = "open"  # open | won | lost
    amount: Optional[float] = None
    currency: Optional[str] = None
    closed_at: Optional[datetime] = None
    modified_at: datetime  # the CRM's last modification
    created_at: datetime
    updated_at: datetime


class DealAddress(SQLModel, table=True):
    """An address a deal waiting for its contact names (nurture.crm): every usable one the CRM
    associates with the deal, in the CRM's order (`position`), so the deal gets its contact as
    soon as any of them is a contact's. Removed when the deal has its contact, and by an erasure."""
    __tablename__ = "deal_address"
    __table_args__ = (Index("ix_deal_address_email", "email"),)
    crm: str = Field(primary_key=True)
    deal_id: str = Field(primary_key=True)
    position: int = Field(primary_key=True)
    email: str


class CrmCursor(SQLModel, table=True):
    """How far a CRM pull has acknowledged: every deal modified up to (modified_at, deal_id) is
    in the store, so the next pull starts there."""
    __tablename__ = "crm_cursor"
    crm: str = Field(primary_key=True)
    modified_at: Optional[datetime] = None
    deal_id: Optional[str] = None
    updated_at: datetime


class ContactIdentity(SQLModel, table=True):
    """An identifier a contact is known by (nurture.identities): `kind` is anonymous_id |
    external_id | email | phone. (kind, value) is one person: unique."""
    __tablename__ = "contact_identity"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_contact_identity"),
                      Index("ix_contact_identity_contact", "contact_id"))
    id: Optional[int] = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id")
    kind: str
    value: str
    first_seen_at: datetime


class InstantRun(SQLModel, table=True):
    """What an instant run of `nurture web` did (nurture.runtime.instant), kept until the next
    tick of the journey reports it in its artifact and removes it (take_instant_runs)."""
    __tablename__ = "instant_run"
    __table_args__ = (Index("ix_instant_run_journey", "journey", "id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    journey: str
    ran_at: datetime
    counts: dict = _json_column()  # enrolled and messages by outcome


class DeliveryLease(SQLModel, table=True):
    """A delivery run's hold on the messages it marked `sending` with its claim token
    (nurture.send.lease): while the run is alive, reconcile leaves them to it. `host`, `boot`,
    `pid` and `started` name the process (a crash on the same machine is seen at once),
    `beat_at` is its last heartbeat by the wall clock (a run elsewhere is dead once it stops)."""
    __tablename__ = "delivery_lease"
    token: str = Field(primary_key=True)
    host: str
    boot: str
    pid: int
    started: Optional[int] = Field(default=None, sa_type=BigInteger)  # the process's start (clock ticks after boot)
    taken_at: datetime
    beat_at: datetime


class ContactMerge(SQLModel, table=True):
    """A contact merged into another (an anonymous visitor who identified): its events,
    enrollments, touches, messages and consents moved to `into_contact_id`; `counts` says how many."""
    __tablename__ = "contact_merge"
    __table_args__ = (Index("ix_contact_merge_into", "into_contact_id"), IDS_ONLY_GROW)
    id: Optional[int] = Field(default=None, primary_key=True)
    from_contact_id: int
    into_contact_id: int
    reason: str
    merged_at: datetime
    counts: dict = _json_column()

"""The SQLAlchemy Core handle of every table, named once: `contact_t` is `Contact.__table__`.

Set-based SQL (the stages, guards, syncs and reports) reads and writes the tables through these
handles; the SQLModel classes (nurture.store.models, nurture.segments.models,
nurture.scoring.models) declare the columns. A module that needs a table imports its handle
from here and never defines its own. This module imports only the model modules, so any
module of the engine can import it without an import cycle.
"""
from __future__ import annotations

from sqlalchemy import Table

from nurture.conversions.models import ConversionDelivery, ConversionRun
from nurture.scoring.models import Handover
from nurture.segments.models import SegmentMembership, SyncRun
from nurture.store.models import (AdSpend, Consent, Contact, ContactIdentity, ContactMerge, ContactTouch, DeliveryLease, InstantRun, CrmCursor, Deal, DealAddress, Enrollment, Event,
                                  JourneyCursor,
                                  JourneyPendingTrigger, JourneyVersion, Message, Product, SplitDecision,
                                  Suppression)

contact_t: Table = Contact.__table__  # type: ignore[attr-defined]
event_t: Table = Event.__table__  # type: ignore[attr-defined]
consent_t: Table = Consent.__table__  # type: ignore[attr-defined]
suppression_t: Table = Suppression.__table__  # type: ignore[attr-defined]
version_t: Table = JourneyVersion.__table__  # type: ignore[attr-defined]
cursor_t: Table = JourneyCursor.__table__  # type: ignore[attr-defined]
pending_t: Table = JourneyPendingTrigger.__table__  # type: ignore[attr-defined]
enrollment_t: Table = Enrollment.__table__  # type: ignore[attr-defined]
message_t: Table = Message.__table__  # type: ignore[attr-defined]
product_t: Table = Product.__table__  # type: ignore[attr-defined]
membership_t: Table = SegmentMembership.__table__  # type: ignore[attr-defined]
sync_run_t: Table = SyncRun.__table__  # type: ignore[attr-defined]
handover_t: Table = Handover.__table__  # type: ignore[attr-defined]
touch_t: Table = ContactTouch.__table__  # type: ignore[attr-defined]
spend_t: Table = AdSpend.__table__  # type: ignore[attr-defined]
decision_t: Table = SplitDecision.__table__  # type: ignore[attr-defined]
deal_t: Table = Deal.__table__  # type: ignore[attr-defined]
deal_address_t: Table = DealAddress.__table__  # type: ignore[attr-defined]
crm_cursor_t: Table = CrmCursor.__table__  # type: ignore[attr-defined]
conversion_delivery_t: Table = ConversionDelivery.__table__  # type: ignore[attr-defined]
conversion_run_t: Table = ConversionRun.__table__  # type: ignore[attr-defined]
identity_t: Table = ContactIdentity.__table__  # type: ignore[attr-defined]
merge_t: Table = ContactMerge.__table__  # type: ignore[attr-defined]
instant_run_t: Table = InstantRun.__table__  # type: ignore[attr-defined]
lease_t: Table = DeliveryLease.__table__  # type: ignore[attr-defined]

__all__ = ["contact_t", "event_t", "consent_t", "suppression_t", "version_t", "cursor_t", "pending_t",
           "enrollment_t", "message_t", "product_t", "membership_t", "sync_run_t", "handover_t",
           "touch_t", "spend_t", "decision_t", "deal_t", "deal_address_t", "crm_cursor_t", "conversion_delivery_t", "conversion_run_t",
           "identity_t", "merge_t", "instant_run_t", "lease_t"]

"""The CRM as the source of truth for deals: what a CRM (HubSpot, or a CRM export imported from
a file) says about deals becomes `deal` rows and events of the deal's contact —
`deal_created`, `deal_stage_changed`, `deal_won` (its `value` is revenue), `deal_lost` — and
moves the contact's lifecycle stage forward (docs/crm.md).

`deals` owns the engine side (a batch of deal snapshots in, rows and events out: one set of
rules for every CRM), `source` the shape a CRM integration hands deals over in, `pull` the
incremental pull (its cursor, its transaction per batch) and `deal_file` the rules of
`nurture import deals`. The engine never imports a CRM integration: it finds one through
the registry (`source.deal_source`).
"""
from __future__ import annotations

from nurture.crm.deals import CrmContact, DealSnapshot, DealsResult, apply_deals
from nurture.crm.source import CrmUnavailable, DealBatch, DealSource

__all__ = ["CrmContact", "DealSnapshot", "DealsResult", "apply_deals", "CrmUnavailable", "DealBatch", "DealSource"]

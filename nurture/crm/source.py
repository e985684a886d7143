"""How a CRM integration hands deals to the engine, and how the engine finds one.

A `crm` integration (nurture.registry) that can be pulled from has a classmethod

    deal_source(context: IntegrationContext) -> DealSource

(HubSpot's: integrations.hubspot). A `DealSource` reads the deals changed in a time window,
oldest modification first, in batches (`changed`), or named deals (`deals`: the webhook's
"pull this one now"); each `DealBatch` carries its snapshots and its `position` — the last
modification time and deal id read — which the pull stores as its cursor once the batch is
committed. A CRM that cannot be reached or refuses the credentials raises `CrmUnavailable`
with a message a user can act on; a single bad deal is not an exception but one of the
batch's `problems`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Optional, Protocol, Sequence

from nurture.crm.deals import DealSnapshot
from nurture.registry import IntegrationContext, IntegrationError, lookup

DEAL_SOURCE_METHOD = "deal_source"
DEFAULT_CRM = "hubspot"


class CrmUnavailable(Exception):
    """The CRM cannot be read now (unreachable, credentials refused, a limit reached): what
    was committed before stays, the cursor stands where the last committed batch left it."""


@dataclass
class DealBatch:
    deals: list[DealSnapshot]
    position: Optional[tuple[datetime, str]] = None  # (modified_at, deal id) of the last deal read
    problems: list[str] = field(default_factory=list)  # deals the source could not read


class DealSource(Protocol):
    crm: str  # the `deal.crm` value of its deals, e.g. "hubspot"

    @property
    def requests(self) -> int:
        """Provider requests made so far (retries included)."""

    def changed(self, since: datetime, until: datetime) -> Iterator[DealBatch]:
        """The deals modified in [since, until], oldest modification first, in batches."""

    def deals(self, deal_ids: Sequence[str]) -> DealBatch:
        """These deals as they are now (an unknown id is left out)."""

    def close(self) -> None:
        ...


def deal_source(name: str, context: IntegrationContext) -> DealSource:
    """The deal source of the `crm` integration `name`; IntegrationError when there is none
    by that name, it cannot be pulled from, or it is not configured."""
    cls = lookup(name, "crm")
    factory = getattr(cls, DEAL_SOURCE_METHOD, None)
    if not callable(factory):
        raise IntegrationError(f"the CRM integration '{name}' cannot pull deals")
    return factory(context)

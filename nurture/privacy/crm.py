"""How a CRM integration offers a GDPR delete, and how the erasure finds the ones to call.

A `crm` integration that can permanently delete a person — HubSpot's
`POST /crm/v3/objects/contacts/gdpr-delete` — has a method

    def erase_person(self, email: str) -> PersonErasure

answering `deleted`, `not_found` (nothing to delete: done as well) or `failed` with a reason,
never raising for a provider problem. The erasure calls it for every registered CRM
integration that has the method and is configured (its `from_env` succeeds: for HubSpot,
NURTURE_HUBSPOT_TOKEN is set). One the project uses — a segment destination in
segments.yaml, or NURTURE_HANDOVER_CRM — but that is not configured is reported as pending.
Integrations are found through the registry, like the sync's destinations: the engine never
imports them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from nurture.registry import IntegrationContext, IntegrationError, available
from nurture.settings import Settings, SettingsError
from nurture.spec.project import ProjectSpec

DELETED, NOT_FOUND, FAILED = "deleted", "not_found", "failed"
ERASE_METHOD = "erase_person"


@dataclass(frozen=True)
class PersonErasure:
    status: str  # deleted | not_found | failed
    reason: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.status in (DELETED, NOT_FOUND)


def used_crms(project: ProjectSpec, env: dict[str, str]) -> set[str]:
    """The CRM names the project sends people to: segment destinations and the handover CRM."""
    names = {d.destination for spec in project.segments.values() for d in spec.destinations}
    try:
        handover = Settings.from_env(env).handover_crm
    except SettingsError:
        handover = None
    return names | ({handover} if handover else set())


def crm_erasers(project: ProjectSpec, context: IntegrationContext,
                factory: Callable[[str, IntegrationContext], Any], skip: set[str]
                ) -> Iterator[tuple[str, Any, Optional[str]]]:
    """(name, integration or None, problem) for every CRM that can erase people and is not in
    `skip`: an integration when configured; a problem when the project uses it but it cannot
    be set up; CRMs neither configured nor used are left out."""
    used = used_crms(project, context.env)
    for name, cls in sorted(available("crm").items()):
        if name in skip or not callable(getattr(cls, ERASE_METHOD, None)):
            continue
        try:
            crm = factory(name, context)
        except IntegrationError as exc:
            if name in used:
                yield name, None, f"not configured ({exc})"
            continue
        except Exception as exc:  # a bug in a plug-in: reported, the erasure goes on
            yield name, None, f"{type(exc).__name__}: {exc}"
            continue
        yield name, crm, None

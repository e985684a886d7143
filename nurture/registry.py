"""Integrations: the roles a plug-in can play and the registry that finds them by name.

An integration is a class with a `name`, a `role` and a `from_env(context)` constructor. The
engine only knows these types; built-ins and third-party packages register through the
`nurture.integrations` entry-point group (or `register()` in tests), so adding an ESP, CRM or
ad platform never touches the engine.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

from nurture.settings import Settings

ENTRY_POINT_GROUP = "nurture.integrations"


class IntegrationError(Exception):
    """A configuration problem a user can fix (missing credentials, unknown backend)."""


@dataclass(frozen=True)
class IntegrationContext:
    project_dir: Path
    data_dir: Path  # <project>/.nurture
    env: dict[str, str] = field(default_factory=dict)

    def setting(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A raw value of `env`, for third-party integrations without a settings model (the
        built-ins read theirs through their model's `from_env`: see nurture.settings)."""
        return self.env.get(name, default)


@dataclass
class OutgoingMessage:
    """One rendered message handed to a channel."""
    message_pk: int
    rfc_message_id: str
    contact_id: int
    channel: str
    journey: str
    step_id: str
    purpose: str
    to: str
    to_name: str = ""
    subject: str = ""
    html: str = ""
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    created_at: Optional[datetime] = None
    locale: Optional[str] = None
    # WhatsApp outside the contact's 24-hour session: the approved template (Twilio Content SID)
    # and its placeholder values; `text` then only records what the free-text version would say.
    content_sid: Optional[str] = None
    content_variables: Optional[dict[str, str]] = None


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one message. `status`: sent | retry (temporary, try again on a later
    tick; counts against the message's attempts) | failed (permanent) | unavailable (the
    channel itself could not be used — authentication refused, server unreachable — and the
    message was not handed over: it goes back to the queue unchanged, the attempt does not
    count, and the tick stops delivering on this channel; reported once, not per message).
    `suppress` names a suppression reason to record (hard_bounce, complaint, sms_stop) for
    the recipient's address."""
    message_pk: int
    status: str
    provider_id: Optional[str] = None
    reason: Optional[str] = None
    suppress: Optional[str] = None


class Integration(abc.ABC):
    name: ClassVar[str]
    role: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_env(cls, context: IntegrationContext) -> "Integration":
        ...

    def close(self) -> None:  # pragma: no cover - default no-op
        pass


class Channel(Integration):
    """Delivers a batch of rendered messages of one channel (email | sms | whatsapp)."""
    role: ClassVar[str] = "channel"
    channel: ClassVar[str]
    # True for channels that only write on this machine (the file outbox). Every other
    # channel delivers to real people and needs a real secret and public URL for its links.
    local: ClassVar[bool] = False

    @abc.abstractmethod
    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        """Deliver; one result per message, in any order. Must not raise for per-message
        problems (a bounced address is a result, not an exception). A message left without a
        result, or a batch that raises, is treated as after a crash: `was_delivered` is asked,
        and what it cannot vouch for is recorded `failed / delivery_unknown`, never resent."""

    def was_delivered(self, message_pk: int, rfc_message_id: str) -> Optional[bool]:
        """After a crash between delivering and recording: True/False if the channel can tell
        for sure, None if it cannot (the message is then recorded as failed, never resent)."""
        return None


@dataclass(frozen=True)
class SyncMember:
    """One contact as a sync destination sees it: raw identifiers from the contact table
    (normalizing and hashing them is the destination's job) and, for a removal, the
    `payload` the destination acknowledged when the contact was added."""
    contact_id: int
    email: Optional[str] = None
    phone: Optional[str] = None
    first_name: Optional[str] = None
    last_name: Optional[str] = None
    country: Optional[str] = None
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MemberResult:
    """What the destination did with one member. `payload` (adds) is what to remember for
    a later removal: hashed identifiers, a CRM record id."""
    contact_id: int
    ok: bool
    payload: dict = field(default_factory=dict)
    reason: Optional[str] = None


@dataclass(frozen=True)
class SyncBatch:
    """Where a request stands in one upload (Meta's `session`): 1-based `seq`, `last` flag."""
    session_id: int
    seq: int = 1
    last: bool = True
    estimated_total: int = 0


class SyncDestination(Integration):
    """Common shape of CRM and audience destinations: a segment's members are added and
    removed in batches of at most `max_batch`; results come back per member and never as
    an exception for a per-record or provider failure (those are results with ok=False)."""
    required_keys: ClassVar[tuple[str, ...]] = ()  # keys a segments.yaml entry must set
    optional_keys: ClassVar[tuple[str, ...]] = ()
    identifier_columns: ClassVar[tuple[str, ...]] = ("email",)  # a member needs one of them
    max_batch: ClassVar[int] = 1000
    needs_ads_consent: ClassVar[bool] = False
    requests_sent: int = 0  # provider requests made (retries included), for sync_run

    @classmethod
    def target_key(cls, target: dict[str, Any]) -> str:
        """A stable name of one audience/list, e.g. `meta:123`: the membership state's key."""
        return ":".join([cls.name, *(str(target[k]) for k in cls.required_keys)])

    @abc.abstractmethod
    def identifiers(self, member: SyncMember) -> Optional[dict]:
        """The normalized (hashed, for ad platforms) identifiers this destination sends for
        `member`, or None when it has none usable. Pure: its digest detects changes."""

    def identifiable(self, members: Sequence[SyncMember], missing: str
                     ) -> tuple[list[tuple[SyncMember, dict]], list[MemberResult]]:
        """Members paired with their identifiers, and a failed result (reason `missing`) for
        each member that has none usable."""
        pairs: list[tuple[SyncMember, dict]] = []
        failed: list[MemberResult] = []
        for member in members:
            ident = self.identifiers(member)
            if ident is None:
                failed.append(MemberResult(member.contact_id, False, reason=missing))
            else:
                pairs.append((member, ident))
        return pairs, failed

    @abc.abstractmethod
    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        ...

    @abc.abstractmethod
    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        ...


class CrmDestination(SyncDestination):
    role: ClassVar[str] = "crm"


class AudienceDestination(SyncDestination):
    """An ad platform's audience: only contacts whose latest `ads` consent is granted."""
    role: ClassVar[str] = "audience"
    needs_ads_consent: ClassVar[bool] = True


_registry: dict[str, type[Integration]] = {}
_loaded = False


def register(cls: type[Integration]) -> type[Integration]:
    _registry[cls.name] = cls
    return cls


def _load(ep: Any) -> None:
    """Register entry point `ep` unless it is registered already (or known broken); one that
    fails to import is recorded as `!<name>`, never raised: a broken third-party plug-in must
    not break the engine."""
    if ep.name in _registry or f"!{ep.name}" in _registry:
        return
    try:
        _registry[ep.name] = ep.load()
    except Exception as exc:
        _registry[f"!{ep.name}"] = type("Broken", (), {"error": str(exc)})


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load(ep)


def available(role: Optional[str] = None) -> dict[str, type[Integration]]:
    _load_entry_points()
    return {n: c for n, c in _registry.items()
            if not n.startswith("!") and (role is None or getattr(c, "role", None) == role)}


def _load_one(name: str) -> None:
    """The entry point called `name` alone, if it is not registered yet: a tick that sends
    e-mail through `email.file` imports that module, not every integration installed (~0.13 s
    of imports in each process — the tick's, and each delivery process of a large tick)."""
    if not _loaded:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            _load(ep)


def lookup(name: str, role: Optional[str] = None) -> type[Integration]:
    _load_one(name)
    cls = _registry.get(name)
    if cls is not None and (role is None or getattr(cls, "role", None) == role):
        return cls
    found = available(role)  # (unknown or of another role: the error names what there is)
    if name not in found:
        from nurture.spec.errors import did_you_mean
        hint = did_you_mean(name, found)
        raise IntegrationError(f"no {role or 'integration'} named '{name}'"
                               + (f" ({hint})" if hint else "") + f"; known: {', '.join(sorted(found)) or 'none'}")
    return found[name]


def channel_for(channel: str, context: IntegrationContext) -> Channel:
    """The configured channel integration: NURTURE_EMAIL_BACKEND / NURTURE_SMS_BACKEND
    (default `file`) selects `email.<backend>` / `sms.<backend>`."""
    backend = Settings.from_env(context.env).channel_backend(channel)
    cls = lookup(f"{channel}.{backend}", "channel")
    return cls.from_env(context)  # type: ignore[return-value]

"""What a tick runs with: the store, the validated project, channels, and the counters a
tick reports."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sqlalchemy import func, select

from nurture.compiler import Plan, compile_journey
from nurture.rendering.templates import TemplateLibrary
from nurture.runtime.effective_journey import effective_journey
from nurture.registry import Channel, IntegrationContext, IntegrationError, channel_for
from nurture.send.guards.frequency_cap import Cap
from nurture.send.guards.pipeline import SendRules
from nurture.send.guards.sunset import SunsetRule
from nurture.send.guards.quiet_hours import QuietWindow
from nurture.spec.project import ProjectSpec
from nurture.store.db import Store
from nurture.store.models import QUEUED
from nurture.store.tables import version_t
from nurture.settings import Settings
from nurture.tokens import link_settings_problem


@dataclass
class TickReport:
    journey: str
    now: str = ""
    stages: Counter = field(default_factory=Counter)  # enrolled, exited, converted, migrated …
    outcomes: Counter = field(default_factory=Counter)  # (step id, status, reason) → count
    ran: list = field(default_factory=list)  # the stages run, in order
    # Why the tick stopped after a stage and ran no further ("" when it ran them all): a process
    # whose files are older than the journey's live version (nurture.runtime.versions.SUPERSEDED).
    skipped: str = ""

    def merge(self, other: "TickReport") -> "TickReport":
        self.stages.update(other.stages)
        self.outcomes.update(other.outcomes)
        self.skipped = self.skipped or other.skipped
        return self

    def table(self, step_order: Sequence[str] = ()) -> list[dict]:
        """One row per (step, outcome, reason), in the journey's step order (then the
        channel-level rows). `queued` — a message that passed the checks at advance — is not a
        row of its own: the same message is counted once more by delivery (sent, retry …), so
        it is reported as the stage count `queued` instead."""
        rank = {step: i for i, step in enumerate(step_order)}

        def key(item: tuple) -> tuple:
            (step, status, reason), _ = item
            return (rank.get(step, len(rank)), str(step), str(status), str(reason or ""))
        return [{"step": step, "outcome": status, "reason": reason or "", "count": n}
                for (step, status, reason), n in sorted(self.outcomes.items(), key=key)
                if status != QUEUED and n]

    @property
    def queued(self) -> int:
        return sum(n for (_, status, _), n in self.outcomes.items() if status == QUEUED)

    def totals(self) -> Counter:
        """Messages by outcome over all steps (sent, failed, deferred, suppressed …)."""
        out: Counter = Counter()
        for (_, status, _), n in self.outcomes.items():
            out[status] += n
        return out


def newest_version_id(store: Store) -> int:
    """The id of the journey version recorded last (0: none yet); ids only grow."""
    with store.reading() as conn:
        return conn.execute(select(func.max(version_t.c.id))).scalar() or 0


@dataclass
class Runtime:
    store: Store
    project: ProjectSpec
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    batch_size: int = 5000
    channel_factory: Optional[Callable[[str], Channel]] = None
    _plans: dict[str, Plan] = field(default_factory=dict)
    _channels: dict[str, Channel] = field(default_factory=dict)
    _templates: Optional[TemplateLibrary] = None
    # What a stage remembers between the ticks of this Runtime (e.g. when auto_winner last judged).
    memo: dict = field(default_factory=dict)
    # A pipelined tick's hand-off (nurture.send.handoff) while its advance stage runs: the send
    # transaction then claims the messages it queues, for the tick's delivery processes.
    handoff: Optional[Any] = None
    # The newest journey version recorded when this Runtime took its project (None: read at
    # construction). A version of other content recorded after that is a newer edit than this
    # process's files: its ticks of that journey are skipped (nurture.runtime.versions.superseded).
    versions_seen: Optional[int] = None

    def __post_init__(self) -> None:
        if self.versions_seen is None:
            self.versions_seen = newest_version_id(self.store)

    def use_project(self, project: ProjectSpec) -> None:
        """Go on with `project`, loaded anew from the files (a long-lived process: `nurture web`):
        plans and templates are compiled again on their next use; channels are kept."""
        seen = newest_version_id(self.store)
        self.project = project
        self._plans = {}
        self._templates = None
        self.versions_seen = seen

    @property
    def templates(self) -> TemplateLibrary:
        if self._templates is None:
            from nurture.catalog import install_catalog
            policies = self.project.policies
            self._templates = TemplateLibrary(self.project.root / "templates", currency=policies.currency,
                                              locale=policies.locale, timezone=policies.timezone)
            install_catalog(self._templates, self.store)  # `catalog.related(...)` for cross-sell
        return self._templates

    @property
    def settings(self) -> Settings:
        """The engine's settings in `env`, read anew on each call (tests change `env` between
        ticks): a stage that needs them per message reads them once per batch."""
        return Settings.from_env(self.env)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir_of(self.project.root)

    def plan(self, journey: str, refresh: bool = False) -> Plan:
        """The compiled journey a tick runs: the file with its recorded split decisions
        applied (nurture.runtime.effective_journey). Compiled once per Runtime; `refresh`
        reads the decisions again — the prepare stage does, on every tick, so a long-lived
        Runtime picks up a decision another worker made."""
        if refresh or journey not in self._plans:
            self._plans[journey] = compile_journey(effective_journey(self.store, self.project.journeys[journey]))
        return self._plans[journey]

    def channel(self, name: str) -> Channel:
        """The configured integration of a channel. One that delivers beyond this machine
        (SMTP, Twilio …) is refused — IntegrationError — without a proper secret and public
        URL: its links would otherwise be signed with the public development secret. Every
        e-mail channel is refused with a NURTURE_FROM_EMAIL no mail server could take
        (Settings.sender_problem: a domain with no A-label form)."""
        if name not in self._channels:
            if self.channel_factory is not None:
                integration = self.channel_factory(name)
            else:
                ctx = IntegrationContext(self.project.root, self.data_dir, self.env)
                integration = channel_for(name, ctx)
            problem = link_settings_problem(self.env) if not getattr(integration, "local", False) else None
            if not problem and name == "email":  # a sender no Message-ID or MAIL FROM can hold
                problem = self.settings.sender_problem()
            if problem:
                integration.close()
                raise IntegrationError(f"{integration.name} will not send: {problem}")
            self._channels[name] = integration
        return self._channels[name]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- policy views
    def quiet_window(self, plan: Optional[Plan], channel: str) -> Optional[QuietWindow]:
        hours = self.project.policies.quiet_hours
        # WhatsApp without hours of its own keeps the SMS hours: both reach a phone.
        qh = (plan.journey.quiet_hours if plan is not None else None) or hours.get(channel) or \
            (hours.get("sms") if channel == "whatsapp" else None)
        return QuietWindow.parse(qh.start, qh.end) if qh else None

    def send_rules(self, plan: Optional[Plan], channel: str, purpose: str, step_id: Optional[str] = None) -> SendRules:
        """What the guard pipeline needs to know about a send step (`plan` None: a message
        whose journey is not in the project — Nurture's own system mail, or a journey removed
        since — which gets the policies' defaults). `step_id`: the send step, for what depends
        on it (a WhatsApp template)."""
        policies = self.project.policies
        marketing = purpose == "marketing"
        node = plan.nodes.get(step_id) if plan is not None and step_id else None
        send = node.step.send if node is not None and node.step is not None else None
        return SendRules(channel=channel, purpose=purpose,
                         caps=tuple(self.caps(plan)) if marketing else (),
                         window=self.quiet_window(plan, channel) if marketing else None,
                         on_cap=policies.on_cap, double_opt_in=policies.needs_double_opt_in(channel, purpose),
                         default_timezone=policies.timezone,
                         topic=plan.journey.topic if plan is not None else None,
                         sunset=self.sunset_rule(plan) if marketing else None,
                         whatsapp_template=bool(send is not None and send.content_sid))

    def sunset_rule(self, plan: Optional[Plan]) -> Optional[SunsetRule]:
        sunset = self.project.policies.sunset
        if sunset is None or (plan is not None and plan.journey.reach_sunset):
            return None
        return SunsetRule(sunset.after, tuple(sunset.without))

    def caps(self, plan: Optional[Plan]) -> list[Cap]:
        caps = [Cap(c.channel, c.max, c.per) for c in self.project.policies.frequency_caps]
        if plan is not None:
            caps += [Cap(c.channel, c.max, c.per) for c in plan.journey.frequency_cap]
        return caps

    @property
    def public_url(self) -> str:
        return self.settings.links_url

    @property
    def secret_key(self) -> str:
        return self.settings.signing_secret

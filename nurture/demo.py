"""`nurture demo`: the whole story on the embedded default, no servers needed.

A synthetic company (nurture.demo_data: ~5,000 B2C and B2B contacts in many time zones, mixed
consent, a catalog, 30 days of events) meets the project's six journeys. The month runs on the
simulator (nurture.simulate) against the demo's own database: the real tick, at the moments
something falls due (a sign-up, a wait's end, the end of a recipient's quiet hours), at most
RESOLUTION late — so a "1 h" cart reminder leaves an hour after the cart, not at the next of a
few coarse ticks. Around each moment the company's events up to then are ingested, CRM deals
imported, lead scores recomputed every SCORE_EVERY, and the world's
reactions to what was sent (opens, clicks, purchases, unsubscribes, sales calls) fed back.
The last tick runs as Prefect flow runs (`tick-all` and its journeys' flows, PREFECT_EVERY after the
simulated part ends), so the Prefect UI has runs and artifacts to show. Segments sync weekly to the CSV
fallback. At the end: the HTML report, the outbox, and a short summary of where to look.

Runs in its own data directory (`.nurture/demo/`), wiped first: run it again and again; the
same seed gives the same company.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

from rich.console import Console

from nurture.demo_data import generate, react
from nurture.graph import journey_graphs
from nurture.registry import IntegrationContext
from nurture.reporting import build_report
from nurture.reporting import views
from nurture.reporting.format import money, multiple, pct
from nurture.reporting.format import number_style
from nurture.reporting.html_page import render_html
from nurture.runtime.context import Runtime
from nurture.scoring.compute import score_contacts
from nurture.scratch import throwaway
from nurture.simulate import simulate
from nurture.spec.project import ProjectSpec, load_project
from nurture.store.db import migrate, open_store
from nurture.store.models import SENT

JOURNEYS = ("welcome", "browse_abandonment", "cart_abandonment", "b2b_nurture", "post_purchase", "win_back")
START = datetime(2026, 10, 5, 6, 0, tzinfo=timezone.utc)  # a Monday
DAYS = 30
CONTACTS = 5000
RESOLUTION = timedelta(hours=1)  # the least time between two ticks of a journey in the simulated part
PREFECT_TICKS = 1  # the last tick(s), as Prefect flow runs (each costs about half a second per journey)
PREFECT_EVERY = timedelta(hours=6)
SCORE_EVERY = timedelta(hours=6)  # the company's scoring cadence (deployed, the `scoring` flow runs hourly)
SYNC_EVERY = timedelta(days=7)


def _fail(message: str) -> None:
    from nurture.cli.invocation import CliError
    raise CliError(message)


def _sync(store, spec, root: Path, demo_dir: Path, now: datetime) -> list:
    try:
        from nurture.segments.sync import sync_segments
    except ImportError:  # pragma: no cover - segments ship with Nurture
        return []
    context = IntegrationContext(root, demo_dir, dict(os.environ))
    return sync_segments(store, spec, now, context)


def _import_spend(store, spec, demo_dir: Path, seed: int, end: datetime):
    """The ad platforms' export, as a marketer would import it (`nurture import spend`)."""
    import csv

    from nurture.demo_data import ad_spend_rows
    from nurture.spend import import_spend
    path = demo_dir / "ad_spend.csv"
    rows = ad_spend_rows(START, end, seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = import_spend(store, path, currency=spec.policies.currency, now=START)
    if result.errors:  # the demo's own file: a bug, said plainly
        _fail(f"{path}: {result.errors[0]}")
    return result


def _import_deals(store, spec, demo_dir: Path, rows: list, now: datetime) -> int:
    """The CRM's changes since the last tick, as an export a small shop would import
    (`nurture import deals`): deal_created / stage changes / deal_won events, deal revenue."""
    if not rows:
        return 0
    import csv

    from nurture.crm.deal_file import import_deals
    path = demo_dir / "crm" / f"deals-{now:%Y%m%dT%H%M}.csv"
    path.parent.mkdir(exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = import_deals(store, path, currency=spec.policies.currency, now=now)
    if result.errors:  # the demo's own export: a bug, said plainly
        _fail(f"{path}: {result.errors[0]}")
    return len(rows)


def run_demo(project: Path, *, seed: int, run_ticks: Callable[[datetime], list[dict]], console: Console,
             contacts: int = CONTACTS, days: int = DAYS, resolution: timedelta = RESOLUTION,
             loaded: Optional[Callable[[ProjectSpec], None]] = None) -> None:
    """The demo (module docstring). `run_ticks(now)`: the Prefect ticks at the end; `loaded`:
    told the project once it is loaded (the CLI hands it to the flows: no second load)."""
    missing = [j for j in JOURNEYS if not (project / "journeys" / f"{j}.yaml").is_file()]
    if missing:
        _fail(f"{project} lacks journeys/{missing[0]}.yaml: run the demo from the Nurture checkout (or pass --project)")
    spec = load_project(project)
    if spec.errors:
        _fail("the project has errors:\n" + "\n".join(str(e) for e in spec.errors))
    if loaded is not None:
        loaded(spec)
    demo_dir = project / ".nurture" / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    url = f"sqlite:///{demo_dir / 'nurture.db'}"
    os.environ["NURTURE_DATA_DIR"] = str(demo_dir)
    os.environ["NURTURE_DATABASE_URL"] = url
    started = time.monotonic()
    store = open_store(url)
    migrate(store.engine)  # the file was just wiped: a store opened before in this process must not skip this
    throwaway(store)  # wiped by the next run too: its commits are not synced to disk
    end = START + timedelta(days=days)
    console.print(f"[bold]Nurture demo[/bold] (seed {seed}): a synthetic shop with a B2B arm, "
                  f"{START:%Y-%m-%d} to {end:%Y-%m-%d}, the six journeys of {project / 'journeys'}\n")
    company = generate(store, seed=seed, start=START, days=days, contacts=contacts)
    spend = _import_spend(store, spec, demo_dir, seed, end)
    b2b = sum(p.b2b for p in company.people)
    zones = len({p.tz for p in company.people})
    german = sum(p.locale == "de" for p in company.people)
    signups = sum(p.signup_at is not None for p in company.people)
    upcoming = Counter(record["event"] for at, _, record in company.events if at > START)
    console.print(f"  {len(company.people):,} contacts: {len(company.people) - b2b:,} shoppers, {b2b:,} B2B leads; "
                  f"{zones} time zones; {german:,} write German; {signups:,} will sign up (double opt-in)")
    console.print("  consent: most granted, some pending / revoked / none, a few bounced addresses; "
                  "a purchase history with lapsed customers")
    console.print("  the month ahead: " + ", ".join(f"{n:,} {name}" for name, n in upcoming.most_common(8)))
    console.print(f"  ad spend: {spend.imported:,} daily rows imported from {demo_dir / 'ad_spend.csv'} "
                  f"(nurture import spend), {money(spend.total)} in all; landing pages carry UTM parameters "
                  "and click ids, so every lead has a source")
    simulated_end = end - PREFECT_EVERY * PREFECT_TICKS
    console.print(f"\nSimulating {START:%d %b} to {simulated_end:%d %b %H:%M} UTC with the real tick at the moments "
                  f"something falls due (at most {resolution.total_seconds() / 60:.0f} min late), then "
                  + ("the last tick" if PREFECT_TICKS == 1 else f"the last {PREFECT_TICKS} ticks")
                  + " as Prefect flow runs…")
    world = _DemoWorld(company, store, spec, project, demo_dir, console)
    rt = Runtime(store, spec, env=dict(os.environ))
    try:
        simulate(rt, [j for j in JOURNEYS if j in spec.journeys], START, simulated_end, world=world,
                 resolution=resolution, timeline=False)
    finally:
        rt.close()
    world.flush_day()
    for i in range(1, PREFECT_TICKS + 1):
        now = simulated_end + PREFECT_EVERY * i
        world.before(None, now)
        results = run_ticks(now)
        sent = Counter()
        for result in results:
            for row in result["outcomes"]:
                if row["outcome"] == SENT:
                    sent[result["journey"]] += row["count"]
        world.sent_total.update(sent)
        world.reactions.update(react(company, store, now))
        console.print(f"  {now:%a %d %b %H:%M} UTC (Prefect flow run tick-all): "
                      f"{sum(r['enrolled'] for r in results):>4} enrolled, {sum(sent.values()):>4} sent, "
                      f"{sum(r['converted'] for r in results):>4} converted")
    company.ingest_until(store, end)
    world.deals += _import_deals(store, spec, demo_dir, company.deals_until(end), end)
    synced = _sync(store, spec, project, demo_dir, end)
    sent_total, reactions = world.sent_total, world.reactions
    report = build_report(store, spec, end)
    html_path = demo_dir / "report.html"
    with number_style(spec.policies):
        graphs = journey_graphs(store, spec, [r.name for r in report.journeys])
        html_path.write_text(render_html(report, title=f"Nurture demo report (seed {seed})", graphs=graphs),
                             encoding="utf-8")
        _summary(console, report, sent_total, reactions, synced, demo_dir, project, url, time.monotonic() - started,
                 _deal_counts(store))
    store.dispose()


class _DemoWorld:
    """The company around the simulated journeys (nurture.simulate.World): its events ingested
    as the clock reaches them, CRM deals imported, scores recomputed every SCORE_EVERY, segments synced
    weekly; after each moment the world reacts to what was sent. One console line per day."""

    def __init__(self, company, store, spec, project: Path, demo_dir: Path, console: Console):
        self.company, self.store, self.spec = company, store, spec
        self.project, self.demo_dir, self.console = project, demo_dir, console
        self.scoring = spec.extra.get("scoring")
        self.next_score, self.next_sync = START, START + SYNC_EVERY
        self.deals = 0
        self.sent_total: Counter = Counter()
        self.reactions: Counter = Counter()
        self.day: Counter = Counter()
        self.day_of: datetime | None = None

    def upcoming(self):
        return self.company.announce()

    def before(self, rt, now: datetime) -> None:
        self.company.ingest_until(self.store, now)
        self.deals += _import_deals(self.store, self.spec, self.demo_dir, self.company.deals_until(now), now)
        if self.scoring is not None and now >= self.next_score:  # the `scoring` flow's work (hourly when deployed)
            score_contacts(self.store, self.scoring, now, self.spec.segments)
            self.next_score = now + SCORE_EVERY
        if now >= self.next_sync:
            _sync(self.store, self.spec, self.project, self.demo_dir, now)
            self.next_sync += SYNC_EVERY

    def after(self, rt, now: datetime, reports) -> None:
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.day_of is not None and day != self.day_of:
            self.flush_day()
        self.day_of = day
        for report in reports:
            self.day["enrolled"] += report.stages["enrolled"]
            self.day["converted"] += report.stages["converted"]
            self.day["ticks"] += 1
            for row in report.table():
                if row["outcome"] == SENT:
                    self.day["sent"] += row["count"]
                    self.sent_total[report.journey] += row["count"]
        self.reactions.update(react(self.company, self.store, now))

    def flush_day(self) -> None:
        if self.day_of is None:
            return
        d = self.day
        self.console.print(f"  {self.day_of:%a %d %b} (UTC): {d['enrolled']:>4} enrolled, {d['sent']:>4} sent, "
                           f"{d['converted']:>4} converted  ({d['ticks']} journey ticks)")
        self.day, self.day_of = Counter(), None


def _deal_counts(store) -> dict[str, tuple[int, float]]:
    """outcome (open / won / lost) → (deals, amount) of the CRM deals the demo imported."""
    from sqlalchemy import func, select

    from nurture.store.tables import deal_t
    with store.reading() as conn:
        return {outcome: (n, float(amount or 0.0)) for outcome, n, amount in conn.execute(
            select(deal_t.c.outcome, func.count(), func.sum(deal_t.c.amount)).group_by(deal_t.c.outcome))}


def _summary(console: Console, report, sent_total: Counter, reactions: Counter, synced: list, demo_dir: Path,
             project: Path, url: str, seconds: float, deals: dict[str, tuple[int, float]]) -> None:
    console.print("\n[bold]What the month earned[/bold] — what each journey *caused*: messaged group against its "
                  "10% holdout, 95% CI; attributed = every converter's revenue, beside it, not proof:")
    console.print(f"  {'journey':<20}{'entered':>8}{'sent':>7}{'conv.':>6}  {'lift (points)':<20}"
                  f"{'incremental revenue':>21}  {'ROI (incr.) [95% CI]':<25}{'attributed':>11}{'cost':>11}",
                  markup=False)
    weak = []
    for r in report.journeys:
        l = r.lift
        lift = (f"{l.difference * 100:+.1f} [{l.low * 100:+.1f}, {l.high * 100:+.1f}]"
                if l is not None and l.low is not None else "no holdout")
        inc = r.incremental_revenue
        roi = r.incremental_roi
        roi_text = multiple(roi.value) + (f" [{multiple(roi.low)}, {multiple(roi.high)}]"
                                          if roi.value is not None and roi.low is not None else "")
        console.print(f"  {r.name:<20}{r.entered:>8}{sum(r.sent.values()):>7}{r.credited:>6}  {lift:<20}"
                      f"{money(inc.value):>21}  {roi_text:<25}{money(r.attributed_revenue):>11}"
                      f"{money(r.cost):>11}", markup=False)
        if r.has_value and inc.low is not None and inc.low <= 0:
            weak.append(r.name)
    if weak:
        console.print(f"  Honest reading: the 95% interval of the incremental revenue of {', '.join(weak)} includes "
                      "zero — the holdout may have bought as much as the messaged group, so what they caused is not "
                      "proven yet, whatever their attributed revenue says. Keep the holdout running (or rethink the "
                      "journey) before crediting them.", markup=False)
    for r in report.journeys:
        for split in r.splits:
            arms = ", ".join(f"{a.name} {pct(a.rate)} of {a.recipients}" for a in split.arms)
            won = f"; {views.decision_text(split).replace('**', '')}" if split.decision is not None else ""
            console.print(f"  A/B {r.name}.{split.step}: {arms}{won}", markup=False)
    paid = [s for s in report.sources if s.spend]
    if paid:
        console.print("  paid lead sources (first touch; revenue attributed, not caused): " + "; ".join(
            f"{s.source}/{s.medium} {s.leads} leads, spend {money(s.spend)}, CAC {money(s.cac)}, ROI {multiple(s.roi)}"
            for s in paid) + (f"; blended CAC {money(report.sources_total.blended_cac)}"
                              if report.sources_total is not None else ""), markup=False)
    objectives = [(r.name, o) for r in report.journeys for o in r.objectives] + \
        [("project", o) for o in report.objectives]
    if objectives:
        off = [f"{where}: {o.name or o.metric.replace('_', ' ')} (forecast {views.unit_value(o.forecast, o.unit)} "
               f"of {views.unit_value(o.target, o.unit)} by {o.deadline})" for where, o in objectives if o.on_track is False]
        console.print(f"  objectives: {sum(o.on_track is True for _, o in objectives)} of {len(objectives)} on track"
                      + (" — off track: " + "; ".join(off) if off else ""), markup=False)
    if deals:
        won, lost, open_ = (deals.get(k, (0, 0.0)) for k in ("won", "lost", "open"))
        # every won deal, not the journey's: b2b_nurture is credited only with the deals won after
        # one of its messages (its own row says how much)
        b2b = next((r for r in report.journeys if r.name == "b2b_nurture"), None)
        credited = (f"; b2b_nurture's attributed revenue: {money(b2b.attributed_revenue)} from "
                    f"{b2b.attributed_conversions} deal(s) won after its messages" if b2b is not None else "")
        console.print(f"  B2B deals (imported from the CRM's export, nurture import deals): {won[0]} won "
                      f"({money(won[1])}, all won deals{credited}), {lost[0]} lost, {open_[0]} open "
                      f"({money(open_[1])} pipeline)", markup=False)
    h = report.handovers
    console.print(f"  sales handovers: {h.total} MQLs, {h.contacted_within_sla} contacted within the SLA, "
                  f"{h.contacted_late} late, {h.overdue} overdue")
    console.print(f"  the world answered: {reactions['open']:,} opens, {reactions['click']:,} clicks, "
                  f"{reactions['purchase']:,} purchases after a message, {reactions['unsubscribe']} unsubscribes, "
                  f"{reactions['bounce']} bounces")
    outbox = demo_dir / "outbox"
    emails = sum(1 for _ in (outbox / "email").rglob("*.eml")) if (outbox / "email").is_dir() else 0
    sms = sum(1 for _ in open(outbox / "sms.jsonl", encoding="utf-8")) if (outbox / "sms.jsonl").is_file() else 0
    console.print(f"\n[bold]Where to look[/bold] (finished in {seconds:.0f} s):")
    console.print(f"  report      {demo_dir / 'report.html'}  (one file, opens offline)")
    console.print(f"  outbox      {outbox / 'email'}/<journey>/*.eml ({emails:,} e-mails), {outbox / 'sms.jsonl'} ({sms} SMS)")
    if synced:
        console.print(f"  audiences   {demo_dir / 'audiences'}/ (hashed CSV files, synced weekly; the last sync: "
                      + ", ".join(f"{t.segment} {t.added + t.updated}+/{t.removed}-" for t in synced) + ")")
    console.print(f"  handovers   {demo_dir / 'handover' / 'handovers.jsonl'}")
    # the report as of the demo's end: a report up to today would add months of fixed costs
    console.print(f"  more        NURTURE_DATABASE_URL={url} nurture --project {project} report "
                  f"--now {report.generated_at.isoformat().replace('+00:00', 'Z')}  "
                  "(or: messages --json, preview welcome --contact …)", markup=False)

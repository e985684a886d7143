"""Instant triggers: an event that arrives through `nurture web` is acted on within a second,
not at the next 5-minute tick. After an ingest commits, the endpoint hands the inserted events'
names to `InstantTriggers.notify` and answers at once (the HTTP answer never waits for a send).
One background thread per web process coalesces the names it was given (every `coalesce`
seconds) and, for each valid journey whose trigger is one of those events, runs the very stages
of a tick — `run_tick`, which iterates `STAGES` — for that journey at the app's clock. The
guards (consent, suppression, reachability, quiet hours, caps) and the at-most-once rule hold
by construction: it is a tick like any other, safe beside the scheduled ticks and the other web
processes exactly as two ticking processes are. Given the web process's `LiveProject`, the
worker follows the project's files before each run (a fingerprint check: loaded again only when
they changed), so an edited journey runs its new version here too and a deleted one stops; and
should its version still be older than the live one (a tick recorded the edit first), the tick
skips the journey (nurture.runtime.versions.superseded), moving nobody back. A journey whose
first step is a wait simply enrolls. Errors are logged, never raised into the web process. What
ran is visible in the message log (every message, as from a tick), in one `nurture.instant` log
line per run that did something, in `counts` (runs and messages by outcome, per journey, for
this process), and in the artifact of the journey's next tick: each run that did something
leaves a row in `instant_run`, which the tick's report takes (`take_instant_runs`: summed, then
removed).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional

from sqlalchemy import select

from nurture.runtime.context import Runtime
from nurture.runtime.sql import chunks
from nurture.runtime.tick import run_tick
from nurture.spec.live_project import LiveProject
from nurture.store.tables import event_t, instant_run_t

log = logging.getLogger("nurture.instant")


def record_instant_run(store: Any, journey: str, ran_at: datetime, counts: dict) -> None:
    """Leave what an instant run did for the journey's next tick to report; never raises (a
    lost count must not disturb the web process: the message log still has every message)."""
    try:
        with store.engine.begin() as conn:
            conn.execute(instant_run_t.insert().values(journey=journey, ran_at=ran_at, counts=dict(counts)))
    except Exception:  # noqa: BLE001
        log.exception("instant run of %s: its counts could not be recorded", journey)


def take_instant_runs(store: Any, journey: str) -> dict:
    """What instant runs of `journey` did since the last call: {"runs", "first", "last",
    "enrolled", <outcome>: n}; the rows are removed in the same statement (DELETE … RETURNING),
    so two ticks never report a run twice. Empty when there was none."""
    with store.engine.begin() as conn:
        rows = conn.execute(instant_run_t.delete().where(instant_run_t.c.journey == journey)
                            .returning(instant_run_t.c.ran_at, instant_run_t.c.counts)).all()
    if not rows:
        return {}
    totals: Counter = Counter()
    for _, counts in rows:
        totals.update({k: int(v) for k, v in (counts or {}).items() if isinstance(v, (int, float))})
    times = sorted(r[0] for r in rows)
    return {"runs": len(rows), "first": times[0].isoformat(), "last": times[-1].isoformat(), **dict(sorted(totals.items()))}


def instant_journeys(rt: Runtime, event_names: Iterable[str]) -> list[str]:
    """The journeys an instant run is due for: event-triggered on one of `event_names`, and
    free of errors (a broken journey does not tick, here as in the flow)."""
    names = set(event_names)
    return [name for name, spec in sorted(rt.project.journeys.items())
            if spec.trigger.event in names and not rt.project.errors_of(name)]


class InstantTriggers:
    """The background worker of one web process (`start` / `notify` / `stop`)."""

    def __init__(self, rt: Runtime, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 coalesce: float = 0.1, live: Optional[LiveProject] = None):
        self.rt = rt  # its own Runtime: its channels are used by this thread only
        self.live = live  # the project's files, followed before each run (None: rt's project as it is)
        self.clock = clock
        self.coalesce = coalesce
        self.runs: Counter = Counter()  # journey → instant runs
        self.failures: Counter = Counter()  # journey → runs that raised
        self.superseded: Counter = Counter()  # journey → runs skipped: a newer version is live
        self.outcomes: Counter = Counter()  # (journey, message status) → count
        self._pending: set[str] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "InstantTriggers":
        if not self.running:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="nurture-instant", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the run under way (events already handed over are left to the next tick)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self.rt.close()

    def notify(self, event_names: Iterable[str]) -> None:
        """Events with these names were just committed. Cheap and non-blocking; a no-op when the
        worker is not running (the next tick enrolls them as always)."""
        names = {name for name in event_names if name}
        if not names or not self.running:
            return
        with self._wake:
            self._pending |= names
            self._wake.notify()

    def notify_events(self, event_ids: Iterable[str]) -> None:
        """`notify` by the `event_id`s an ingest stored (`TrackResult.inserted_ids`): their
        names are read back, so every ingest endpoint can hand over what it inserted as is."""
        ids = [str(i) for i in event_ids]
        if not ids or not self.running:
            return
        names: set[str] = set()
        with self.rt.store.engine.connect() as conn:
            for part in chunks(ids):
                query = select(event_t.c.name).where(event_t.c.event_id.in_(part)).distinct()
                names.update(conn.execute(query).scalars())
            conn.rollback()
        self.notify(names)

    def counts(self) -> dict:
        """This process's instant runs so far, per journey (for operators and tests)."""
        journeys = sorted(set(self.runs) | set(self.failures) | set(self.superseded))
        return {j: {"runs": self.runs[j], "failed": self.failures[j],
                    **({"superseded": self.superseded[j]} if self.superseded[j] else {}),
                    **{status: n for (journey, status), n in sorted(self.outcomes.items()) if journey == j}}
                for j in journeys}

    def _take(self) -> Optional[set[str]]:
        with self._wake:
            while not self._pending and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
        # Coalesce: a burst of events becomes one run per journey, not one per event.
        with self._wake:
            self._wake.wait_for(lambda: self._stopping, timeout=self.coalesce)
            names, self._pending = self._pending, set()
        return None if self._stopping else names

    def _loop(self) -> None:
        while True:
            names = self._take()
            if names is None:
                return
            try:
                self.follow_files()
                journeys = instant_journeys(self.rt, names)
            except Exception:  # noqa: BLE001 — the worker outlives any error
                log.exception("instant triggers: could not read the journeys for %s", sorted(names))
                continue
            for journey in journeys:
                self.run_one(journey)

    def follow_files(self) -> None:
        """Go on with the project as its files are now, when they changed since the last run."""
        if self.live is not None:
            spec = self.live.refresh()
            if spec is not self.rt.project:
                self.rt.use_project(spec)

    def run_one(self, journey: str) -> None:
        """One tick of `journey` now; an error is logged and counted, never raised."""
        try:
            report = run_tick(self.rt, journey, self.clock())
        except Exception:  # noqa: BLE001 — a broken journey must not stop the others, nor the web
            self.failures[journey] += 1
            log.exception("instant run of %s failed; the next tick retries it", journey)
            return
        if report.skipped:
            self.superseded[journey] += 1
            log.warning("instant run of %s skipped: %s (its events are left to the next tick)", journey, report.skipped)
            return
        self.runs[journey] += 1
        totals = report.totals()
        totals.pop("queued", None)  # each queued message is counted again by its delivery
        for status, n in totals.items():
            self.outcomes[(journey, status)] += n
        if report.stages.get("enrolled") or totals:
            record_instant_run(self.rt.store, journey, self.clock(),
                               {"enrolled": report.stages.get("enrolled", 0), **totals})
            log.info("instant run of %s at %s: enrolled %d, %s", journey, report.now,
                     report.stages.get("enrolled", 0),
                     ", ".join(f"{status} {n}" for status, n in sorted(totals.items())) or "no messages")

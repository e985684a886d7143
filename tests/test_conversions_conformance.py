"""Conformance suite: every conversions destination, one specification (the audiences' suite's
twin). Each case runs the real conversions engine against a local fake server on 127.0.0.1
that speaks the platform's documented protocol and checks what it receives (the CSV
destination's "server" is its folder of files). A new conversions destination gets the whole
suite by being added to CASES.

What every destination must do: send each due event exactly once per platform (only contacts
whose latest `ads` consent is granted; never an erased or suppressed one; never an event older
than the platform takes), normalize and hash identifiers the platform's way, authenticate every
request, stay within the platform's batch limit, back off on 429 and 5xx without really
sleeping, fail rejected events on their own, leave failed events for the next run, and survive
a crash between a request and its acknowledgement without any conversion counting twice.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from sqlalchemy import select

from integrations.http_retry import RetryPolicy
from nurture.consent_ledger import record_consent, suppress
from nurture.conversions.event_fields import conversion_id
from nurture.conversions.send import default_factory, send_conversions
from nurture.conversions.validation import lookup_destination
from nurture.privacy.tombstones import ERASED_REASON
from nurture.registry import IntegrationContext
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import contact_t, conversion_delivery_t, conversion_run_t, event_t
from tests.conftest import utc, write_project
from tests.fakes.google import FakeGoogle
from tests.fakes.http_server import Reply
from tests.fakes.linkedin import FakeLinkedIn
from tests.fakes.meta import FakeMeta

NOW = utc(2026, 11, 21, 1, 0)
TOKEN = "s3cret-conversions-token-never-logged"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- the cases


class CsvFolder:
    """The CSV destination's counterpart of a fake server: reads its files back."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[str] = []
        self.rejected: set[str] = set()

    def files(self) -> list[Path]:
        return sorted(self.root.rglob("*.csv"))

    @property
    def received_events(self) -> list[tuple[str, dict]]:
        out = []
        for path in self.files():
            with open(path, encoding="utf-8") as fh:
                out += [(path.parent.name, row) for row in csv.DictReader(fh)]
        return out

    def conversions(self, name: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for folder, row in self.received_events:
            if folder == name:
                out.setdefault(row["event_id"], row)
        return out


@dataclass
class Case:
    name: str
    target: dict[str, str]
    key: str  # which target key names the container on the fake
    id_field: str  # where the fake finds the de-duplication id
    make_server: Optional[Callable[[], Any]]
    env: Callable[[Any], dict[str, str]]
    limit: int  # the platform's documented events per request
    max_age: Optional[timedelta]
    throttle: Optional[Callable[[], Reply]] = None
    first_wait: Optional[float] = None  # the wait the throttle answer asks for (None: our backoff)
    http: bool = True
    extra: dict = field(default_factory=dict)


CASES = [
    Case("meta", {"dataset_id": "1234567890"}, "dataset_id", "event_id", lambda: FakeMeta(TOKEN),
         lambda s: {"NURTURE_META_BASE_URL": s.url, "NURTURE_META_ACCESS_TOKEN": TOKEN},
         limit=1000, max_age=timedelta(days=7), throttle=FakeMeta.throttled, first_wait=1.0),
    Case("google", {"operating_account": "1234567890", "conversion_action": "987654321"}, "conversion_action",
         "transactionId", lambda: FakeGoogle(TOKEN),
         lambda s: {"NURTURE_GOOGLE_BASE_URL": s.url, "NURTURE_GOOGLE_ACCESS_TOKEN": TOKEN},
         limit=2000, max_age=timedelta(days=90), throttle=FakeGoogle.exhausted, first_wait=1.0),
    Case("linkedin", {"conversion_rule": "urn:lla:llaPartnerConversion:123"}, "conversion_rule", "eventId",
         lambda: FakeLinkedIn(TOKEN),
         lambda s: {"NURTURE_LINKEDIN_BASE_URL": s.url, "NURTURE_LINKEDIN_ACCESS_TOKEN": TOKEN},
         limit=5000, max_age=timedelta(days=90), throttle=FakeLinkedIn.too_many, first_wait=3.0),
    Case("csv", {"name": "won_deals"}, "name", "event_id", None, lambda folder: {}, limit=10_000, max_age=None,
         http=False),
]


# ---------------------------------------------------------------- the harness

def conversions_yaml(case: Case, event: str = "purchase", extra: str = "") -> str:
    keys = ", ".join(f'{k}: "{v}"' for k, v in case.target.items())
    return textwrap.dedent(f"""
        conversions:
          - event: {event}
            destinations:
              - {{destination: {case.name}, {keys}{extra}}}
        """)


class Harness:
    """One destination case, a project whose purchases go to it, a SQLite store."""

    def __init__(self, case: Case, tmp_path: Path, template: Path):
        self.case = case
        self.data_dir = tmp_path / ".nurture"
        self.server = case.make_server().start() if case.make_server else CsvFolder(self.data_dir / "conversions")
        if case.http:
            self.server.clock = NOW
        self.root = write_project(tmp_path / "project", {})
        self.declare()
        db = tmp_path / "nurture.db"
        shutil.copyfile(template, db)
        self.store = open_store(f"sqlite:///{db}", auto_migrate=False)
        self.env = {**case.env(self.server), "NURTURE_SYNC_MAX_ATTEMPTS": "3"}
        self.context = IntegrationContext(self.root, self.data_dir, self.env)
        self.waits: list[float] = []
        self.max_batch: Optional[int] = None
        self.wrap: Optional[Callable[[Any], Any]] = None
        self.events = 0

    def declare(self, extra: str = "") -> None:
        (self.root / "journeys" / "conversions.yaml").write_text(conversions_yaml(self.case, extra=extra))
        self.project = load_project(self.root)
        assert not self.project.errors, [str(e) for e in self.project.errors]

    def factory(self, platform: str, context: IntegrationContext) -> Any:
        dest = default_factory(platform, context)
        if hasattr(dest, "client"):
            dest.client.policy = RetryPolicy(max_attempts=3, base_delay=1.0, sleep=self.waits.append)
        if self.max_batch:
            dest.max_batch = self.max_batch
        return self.wrap(dest) if self.wrap else dest

    def run(self, now: datetime = NOW):
        # The platform's clock is the real time the engine judges ages by: the fake's, when it has one.
        wall = getattr(self.server, "clock", None)
        reports = send_conversions(self.store, self.project, now, self.context, factory=self.factory, wall=wall)
        assert len(reports) == 1
        return reports[0]

    # -- data
    def contact(self, email: Optional[str], *, ads: Optional[str] = "granted", phone: Optional[str] = None,
                first_name: Optional[str] = None, last_name: Optional[str] = None,
                country: Optional[str] = None) -> int:
        at = NOW - timedelta(days=30)
        with self.store.engine.begin() as conn:
            cid = conn.execute(contact_t.insert().values(
                email=email, phone=phone, first_name=first_name, last_name=last_name, country=country,
                lifecycle_stage="customer", score=0.0, attributes={}, created_at=at,
                updated_at=at)).inserted_primary_key[0]
            if ads:
                record_consent(conn, cid, "ads", ads, source="test", at=at)
        return cid

    def purchase(self, cid: int, *, at: Optional[datetime] = None, value: Any = 49.9, **props: Any) -> str:
        """A purchase event of the contact; the de-duplication id the platform should receive."""
        self.events += 1
        event_id = f"order-{self.events:05d}"
        with self.store.engine.begin() as conn:
            conn.execute(event_t.insert().values(
                event_id=event_id, contact_id=cid, name="purchase", properties={"value": value, **props},
                occurred_at=at or NOW - timedelta(hours=2), received_at=at or NOW - timedelta(hours=2)))
        return conversion_id(event_id)

    def buyers(self, n: int, *, prefix: str = "b") -> list[str]:
        """n consenting contacts with one purchase each; their conversion ids, in order."""
        return [self.purchase(self.contact(f"{prefix}{i:03d}@example.com")) for i in range(n)]

    # -- what the platform got
    def received(self) -> list[str]:
        """Every de-duplication id the platform received, duplicates included, in order."""
        key = self.case.target[self.case.key]
        return [e[self.case.id_field] for where, e in self.server.received_events if where == key]

    def held(self) -> set[str]:
        return set(self.server.conversions(self.case.target[self.case.key]))

    def requests(self) -> int:
        return len(self.server.requests) if self.case.http else len(self.server.files())

    def statuses(self) -> dict[str, int]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(conversion_delivery_t.c.status)).scalars().all()
            conn.rollback()
        return {s: rows.count(s) for s in sorted(set(rows))}

    def close(self) -> None:
        if self.case.http:
            self.server.stop()
        self.store.dispose()


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def h(request, tmp_path, sqlite_template):
    harness = Harness(request.param, tmp_path, sqlite_template)
    yield harness
    harness.close()
    assert harness.server.problems == [], "the platform saw protocol violations"


def http_only(h: Harness) -> None:
    if not h.case.http:
        pytest.skip(f"{h.case.name} makes no HTTP requests")


DOWN = Reply(503, {"error": {"code": 503, "message": "backend unavailable", "status": "UNAVAILABLE"}})


# ---------------------------------------------------------------- the specification


def test_a_run_sends_every_due_event_of_a_consenting_contact_once_and_records_it(h):
    ids = h.buyers(3)
    h.purchase(h.contact("no-consent@example.com", ads=None))
    h.purchase(h.contact("revoked@example.com", ads="revoked"))
    report = h.run()
    assert h.held() == set(ids) and sorted(h.received()) == sorted(ids)
    assert (report.status, report.due, report.sent, report.skipped, report.failed) == ("ok", 5, 3, 2, 0)
    assert report.skipped_reasons == {"no_ads_consent": 2}
    assert report.requests == 1
    assert h.statuses() == {"sent": 3, "skipped": 2}
    with h.store.engine.connect() as conn:
        run = conn.execute(select(conversion_run_t)).one()
        acked = conn.execute(select(conversion_delivery_t.c.request_id, conversion_delivery_t.c.sent_at,
                                    conversion_delivery_t.c.attempts)
                             .where(conversion_delivery_t.c.status == "sent")).all()
    assert (run.status, run.sent, run.skipped, run.target, run.conversion) == ("ok", 3, 2, report.target, "purchase")
    assert run.skipped_reasons == {"no_ads_consent": 2} and run.finished_at is not None
    assert all(rid and at and tries == 1 for rid, at, tries in acked)


def test_each_event_reaches_the_platform_exactly_once_across_runs(h):
    first = h.buyers(4)
    h.run()
    before = h.requests()
    again = h.run()
    assert (again.due, again.sent, again.requests, h.requests() - before) == (0, 0, 0, 0)
    later = h.purchase(h.contact("new@example.com"), at=NOW + timedelta(hours=1))
    third = h.run(NOW + timedelta(hours=2))
    assert (third.due, third.sent, third.requests) == (1, 1, 1)
    assert sorted(h.received()) == sorted(first + [later])  # nothing was sent twice


def test_batches_stay_within_the_platforms_limit_and_split_the_work(h):
    assert lookup_destination(h.case.name).max_batch <= h.case.limit
    h.max_batch = 40
    ids = h.buyers(100)
    report = h.run()
    assert report.sent == 100 and h.held() == set(ids)
    assert report.requests == h.requests() == 3  # 40 + 40 + 20


NORMALIZATION = [
    # raw contact fields; what Meta (and the CSV) hash; what Google hashes; the plain e-mail LinkedIn hashes
    dict(email="  John.Doe+Promo@GMail.com ", phone="030 1234567", country="de", first_name="José",
         last_name="Müller-Lüdenscheidt",
         meta=["john.doe+promo@gmail.com", "49301234567", "josé", "müllerlüdenscheidt", "de"],
         google={"emailAddress": "johndoe@gmail.com", "phoneNumber": "+49301234567"},
         plain="john.doe+promo@gmail.com"),
    dict(email="ANNA.Smith@Example.ORG", phone="(415) 555-2671", country="US", first_name=" Anna ",
         last_name="O'Brien",
         meta=["anna.smith@example.org", "14155552671", "anna", "obrien", "us"],
         google={"emailAddress": "anna.smith@example.org", "phoneNumber": "+14155552671"},
         plain="anna.smith@example.org"),
]


def test_identifiers_are_normalized_the_platform_way_and_hashed(h):
    for v in NORMALIZATION:
        h.purchase(h.contact(v["email"], phone=v["phone"], country=v["country"], first_name=v["first_name"],
                             last_name=v["last_name"]))
    assert h.run().sent == 2
    events = [e for _, e in h.server.received_events]
    name = h.case.name
    if name == "meta":
        got = sorted([u["em"][0], u["ph"][0], u["fn"][0], u["ln"][0], u["country"][0]]
                     for u in (e["user_data"] for e in events))
        assert got == sorted([sha(x) for x in v["meta"]] for v in NORMALIZATION)
    elif name == "csv":
        got = sorted([e["email"], e["phone"], e["fn"], e["ln"], e["country"]] for e in events)
        assert got == sorted([sha(x) for x in v["meta"]] for v in NORMALIZATION)
        text = "".join(p.read_text() for p in h.server.files()).lower()
        assert "example.org" not in text and "gmail" not in text  # no plain address in any file
    elif name == "google":
        got = sorted(sorted((k, x) for i in e["userData"]["userIdentifiers"] for k, x in i.items()) for e in events)
        assert got == sorted(sorted((k, sha(x)) for k, x in v["google"].items()) for v in NORMALIZATION)
    elif name == "linkedin":
        got = sorted(i["idValue"] for e in events for i in e["user"]["userIds"] if i["idType"] == "SHA256_EMAIL")
        assert got == sorted(sha(v["plain"]) for v in NORMALIZATION)
    else:  # a new destination must say how it normalizes
        pytest.fail(f"add {name}'s normalization vectors to this test")


def test_every_request_is_authenticated_and_the_token_never_leaks(h):
    http_only(h)
    h.buyers(2)
    h.server.fail_next(1, Reply(400, {"error": {"message": f"bad token {TOKEN}", "code": 1}, "message": TOKEN}))
    report = h.run()
    assert report.failed == 2 and h.server.requests and h.server.problems == []  # the fake checks credentials
    second = h.run()
    assert second.sent == 2
    with h.store.engine.connect() as conn:
        stored = [str(r) for r in conn.execute(select(conversion_run_t))]
        stored += [str(r) for r in conn.execute(select(conversion_delivery_t))]
    assert TOKEN not in repr(report) and not any(TOKEN in s for s in stored)


def test_429_waits_as_the_platform_says_then_succeeds(h):
    http_only(h)
    ids = h.buyers(3)
    h.server.fail_next(1, h.case.throttle())
    report = h.run()
    assert report.status == "ok" and h.held() == set(ids)
    assert h.waits == [h.case.first_wait]


def test_5xx_is_retried_with_exponential_backoff(h):
    http_only(h)
    ids = h.buyers(3)
    h.server.fail_next(2, DOWN)
    report = h.run()
    assert report.status == "ok" and h.held() == set(ids)
    assert h.waits == [1.0, 2.0]


def test_a_batch_that_keeps_failing_is_failed_and_exactly_it_is_retried_next_run(h):
    http_only(h)
    h.max_batch = 2
    ids = h.buyers(6)
    original = h.server.dispatch
    calls = {"n": 0}

    def flaky(request):  # batch 1 goes through; every attempt at batch 2 fails; batch 3 goes through
        calls["n"] += 1
        if 1 < calls["n"] <= 4:
            h.server.requests.append(request)
            return DOWN
        return original(request)

    h.server.dispatch = flaky
    report = h.run()
    assert (report.status, report.sent, report.failed) == ("partial", 4, 2)
    assert "gave up after 3 attempts" in report.errors[0]["reason"]
    assert h.held() == set(ids[:2] + ids[4:])
    h.server.dispatch = original
    mark = len(h.received())
    second = h.run()
    assert (second.status, second.due, second.sent, second.failed) == ("ok", 2, 2, 0)
    assert sorted(h.received()[mark:]) == sorted(ids[2:4]) and h.held() == set(ids)


def test_a_rejected_event_fails_alone_and_is_retried_next_run(h):
    http_only(h)
    emails = [f"r{i}@example.com" for i in range(4)]
    ids = [h.purchase(h.contact(e)) for e in emails]
    h.server.rejected.add(sha(emails[1]))
    report = h.run()
    assert (report.status, report.sent, report.failed) == ("partial", 3, 1)
    assert h.held() == set(ids) - {ids[1]}
    h.server.rejected.clear()
    mark = len(h.received())
    second = h.run()
    assert (second.sent, second.requests) == (1, 1) and h.received()[mark:] == [ids[1]]


class Crash(BaseException):
    """A process dying: not an Exception, so nothing on the way catches it."""


def test_a_crash_after_the_platform_took_a_batch_resends_only_that_batch_and_nothing_counts_twice(h):
    h.max_batch = 2
    ids = h.buyers(6)
    calls = {"n": 0}

    def crash_after_second_batch(dest):
        real_send = dest.send

        def send(target, events, now):
            results = real_send(target, events, now)  # the platform has batch 2 …
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash()  # … and we die before recording it
            return results
        dest.send = send
        return dest

    h.wrap = crash_after_second_batch
    with pytest.raises(Crash):
        h.run()
    assert h.statuses() == {"pending": 4, "sent": 2}
    h.wrap = None
    report = h.run()
    assert (report.sent, report.failed) == (4, 0)
    received = h.received()
    assert h.held() == set(ids)  # every conversion counted once by the platform …
    assert [received.count(i) for i in ids] == [1, 1, 2, 2, 1, 1]  # … batch 2 re-sent with the same ids
    with h.store.engine.connect() as conn:
        runs = [r[0] for r in conn.execute(select(conversion_run_t.c.status).order_by(conversion_run_t.c.id))]
    assert runs == ["interrupted", "ok"] and h.statuses() == {"sent": 6}


def test_no_consent_erased_or_suppressed_contacts_are_skipped_at_send_time_not_failed(h):
    ok = h.purchase(h.contact("ok@example.com"))
    revoked = h.contact("changed-mind@example.com")
    h.purchase(revoked)
    erased = h.contact(None)  # what an erasure leaves: no address, an `erased` suppression
    h.purchase(erased)
    muted = h.contact("muted@example.com")
    h.purchase(muted)
    with h.store.engine.begin() as conn:  # after the events, before the run: send time decides
        record_consent(conn, revoked, "ads", "revoked", source="preference-center", at=NOW - timedelta(minutes=30))
        suppress(conn, reason=ERASED_REASON, at=NOW - timedelta(minutes=20), contact_id=erased, address=sha("x@y.z"))
        suppress(conn, reason="manual", at=NOW - timedelta(minutes=10), contact_id=muted, channel="ads")
    report = h.run()
    assert (report.status, report.sent, report.failed) == ("ok", 1, 0)
    assert report.skipped_reasons == {"no_ads_consent": 1, "erased": 1, "suppressed": 1}
    assert h.held() == {ok}


def test_an_event_without_an_identifier_the_platform_can_match_is_skipped(h):
    h.purchase(h.contact(None, phone=None))
    report = h.run()
    assert (report.sent, report.skipped, report.failed, report.skipped_reasons) == (0, 1, 0, {"no_identifier": 1})
    assert h.requests() == 0


def test_an_event_that_grew_too_old_for_the_platform_is_skipped_before_batching(h):
    http_only(h)
    ids = h.buyers(2)
    h.server.fail_next(3, DOWN)  # the first run fails for good …
    assert h.run().failed == 2
    later = NOW + h.case.max_age + timedelta(hours=1)
    h.server.clock = later
    fresh = h.purchase(h.contact("fresh@example.com"), at=later - timedelta(hours=1))
    mark = h.requests()
    report = h.run(later)  # … and by the retry the events are older than the platform takes
    assert (report.sent, report.skipped, report.failed) == (1, 2, 0)
    assert report.skipped_reasons == {"too_old": 2} and report.status == "ok"
    assert h.requests() - mark == 1 and h.held() == {fresh} and not set(ids) & set(h.received())


def test_a_run_dated_in_the_past_sends_nothing_the_platform_finds_too_old_by_its_real_clock(h):
    """A late or catch-up nightly run has a `now` in the past; the platform judges ages by the
    real time of the request, so the engine measures them against the later of the two."""
    http_only(h)
    h.server.clock = None  # the fake judges ages by the wall clock, as the platform does
    wall = datetime.now(timezone.utc)
    late = timedelta(days=3)
    fresh = h.purchase(h.contact("fresh@example.com"), at=wall - h.case.max_age + timedelta(days=1))
    stale = h.purchase(h.contact("stale@example.com"), at=wall - h.case.max_age - timedelta(days=1))
    report = h.run(wall - late)  # by that clock the stale event is two days inside the limit
    assert (report.status, report.sent, report.failed) == ("ok", 1, 0)
    assert h.held() == {fresh} and stale not in h.received()


def test_every_platform_request_takes_a_throttle_slot_first(h):
    from nurture.segments import throttle
    http_only(h)
    h.max_batch = 2
    h.buyers(5)
    h.server.fail_next(1, DOWN)
    slots: list[str] = []
    previous = throttle.install(slots.append)
    try:
        h.run()
    finally:
        throttle.install(previous)
    assert slots == [h.case.name] * len(h.server.requests)  # retries included

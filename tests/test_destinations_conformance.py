"""Conformance suite: every segment destination, one specification (like dlt's destination
tests). Each case runs the real sync engine against a local fake server on 127.0.0.1 that
speaks the provider's documented protocol and records and checks what it receives (the
CSV destination's "server" is its folder of files). A new destination gets the whole suite
by being added to CASES.

What every destination must do: add exactly the segment's eligible members (ad audiences:
latest `ads` consent granted), normalize identifiers the platform's way, authenticate every
request, stay within the provider's batch limit, back off on 429 and 5xx without really
sleeping, fail rejected records on their own, leave failed batches unacknowledged for the
next run, remove contacts who leave / revoke / get suppressed, and survive a crash.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from sqlalchemy import select, update

from integrations.http_retry import RetryPolicy
from nurture.consent_ledger import record_consent, suppress
from nurture.registry import IntegrationContext, lookup
from nurture.segments.sync import default_factory, sync_segments
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import contact_t, membership_t, sync_run_t
from tests.conftest import utc, write_project
from tests.fakes.google import FakeGoogle
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.http_server import Reply
from tests.fakes.linkedin import FakeLinkedIn
from tests.fakes.meta import FakeMeta
from tests.fakes.tiktok import FakeTikTok

NOW = utc(2026, 11, 21, 1, 0)
TOKEN = "s3cret-token-never-logged"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- the cases


class CsvFolder:
    """The CSV destination's counterpart of a fake server: replays its files in order."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[str] = []
        self.rejected: set[str] = set()

    def files(self) -> list[Path]:
        return sorted(self.root.rglob("*.csv"))

    def members(self, audience: str) -> set[str]:
        out: set[str] = set()
        for path in sorted((self.root / audience).glob("*.csv")):
            with open(path, encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            for row in rows:
                (out.add if path.stem.endswith("-add") else out.discard)(row["email"] or row["phone"])
        return out


@dataclass
class Case:
    name: str
    target: dict[str, str]
    members_key: str  # which target key names the audience/list on the fake
    make_server: Optional[Callable[[], Any]]
    env: Callable[[Any], dict[str, str]]
    identity: Callable[[str], str]  # contact e-mail (lowercase) -> what the provider holds
    throttle: Optional[Callable[[], Reply]] = None
    first_wait: Optional[float] = None  # the wait the throttle answer asks for (None: our backoff)
    requests_per_add_batch: int = 1
    needs_ads_consent: bool = True
    http: bool = True
    extra: dict = field(default_factory=dict)


CASES = [
    Case("hubspot", {"list_id": "45"}, "list_id", lambda: FakeHubSpot(TOKEN),
         lambda s: {"NURTURE_HUBSPOT_BASE_URL": s.url, "NURTURE_HUBSPOT_TOKEN": TOKEN},
         identity=lambda e: e, throttle=FakeHubSpot.rate_limited, first_wait=10.0,
         requests_per_add_batch=2, needs_ads_consent=False),
    Case("meta", {"audience_id": "23851234567890"}, "audience_id", lambda: FakeMeta(TOKEN),
         lambda s: {"NURTURE_META_BASE_URL": s.url, "NURTURE_META_ACCESS_TOKEN": TOKEN},
         identity=sha, throttle=FakeMeta.throttled, first_wait=1.0),
    Case("google", {"account_id": "1234567890", "audience_id": "987654"}, "audience_id", lambda: FakeGoogle(TOKEN),
         lambda s: {"NURTURE_GOOGLE_BASE_URL": s.url, "NURTURE_GOOGLE_ACCESS_TOKEN": TOKEN},
         identity=sha, throttle=FakeGoogle.exhausted, first_wait=1.0),
    Case("linkedin", {"dmp_segment_id": "555"}, "dmp_segment_id", lambda: FakeLinkedIn(TOKEN),
         lambda s: {"NURTURE_LINKEDIN_BASE_URL": s.url, "NURTURE_LINKEDIN_ACCESS_TOKEN": TOKEN},
         identity=sha, throttle=FakeLinkedIn.too_many, first_wait=3.0),
    # TikTok throttles with code 40100 in an HTTP 200 and says nothing of how long: our backoff
    Case("tiktok", {"advertiser_id": "7178918106775994370", "audience_id": "167290896"}, "audience_id",
         lambda: FakeTikTok(TOKEN),
         lambda s: {"NURTURE_TIKTOK_BASE_URL": s.url, "NURTURE_TIKTOK_ACCESS_TOKEN": TOKEN},
         identity=sha, throttle=FakeTikTok.throttled, first_wait=1.0),
    Case("csv", {"audience": "vip_fans"}, "audience", None, lambda folder: {"NURTURE_CSV_AUDIENCE_DIR": str(folder.root)},
         identity=sha, http=False),
]


# ---------------------------------------------------------------- the harness

class Harness:
    """One destination case, a project with one segment `vip` syncing to it, a SQLite store."""

    def __init__(self, case: Case, tmp_path: Path, template: Path):
        self.case = case
        self.server = case.make_server().start() if case.make_server else CsvFolder(tmp_path / "audiences")
        keys = ", ".join(f'{k}: "{v}"' for k, v in case.target.items())
        root = write_project(tmp_path / "project", {}, segments=f"""
            segments:
              - name: vip
                description: Customers flagged VIP
                when: {{attribute: {{vip: true}}}}
                destinations:
                  - {{destination: {case.name}, {keys}}}
            """)
        self.project = load_project(root)
        assert not self.project.errors, [str(e) for e in self.project.errors]
        db = tmp_path / "nurture.db"
        shutil.copyfile(template, db)  # migrating a fresh file per test would dominate the suite
        self.store = open_store(f"sqlite:///{db}", auto_migrate=False)
        self.env = {**case.env(self.server), "NURTURE_SYNC_MAX_ATTEMPTS": "3"}
        self.context = IntegrationContext(root, tmp_path / ".nurture", self.env)
        self.waits: list[float] = []
        self.max_batch: Optional[int] = None
        self.wrap: Optional[Callable[[Any], Any]] = None

    def factory(self, name: str, context: IntegrationContext) -> Any:
        dest = default_factory(name, context)
        if hasattr(dest, "client"):
            dest.client.policy = RetryPolicy(max_attempts=int(self.env["NURTURE_SYNC_MAX_ATTEMPTS"]),
                                             base_delay=1.0, sleep=self.waits.append)
        if self.max_batch:
            dest.max_batch = self.max_batch
        return self.wrap(dest) if self.wrap else dest

    def sync(self, now: datetime = NOW):
        reports = sync_segments(self.store, self.project, now, self.context, factory=self.factory)
        assert len(reports) == 1
        return reports[0]

    def members(self) -> set[str]:
        return self.server.members(self.case.target[self.case.members_key])

    def expect(self, *emails: str) -> set[str]:
        return {self.case.identity(e) for e in emails}

    def sent(self, since: int = 0) -> list[tuple[str, str]]:
        out = []
        for request in self.server.requests[since:]:
            out.extend(self.server.sent(request))
        return out

    def contact(self, email: str, *, vip: bool = True, ads: Optional[str] = "granted", phone: Optional[str] = None,
                first_name: Optional[str] = None, last_name: Optional[str] = None, country: Optional[str] = None) -> int:
        at = NOW - timedelta(days=30)
        with self.store.engine.begin() as conn:
            cid = conn.execute(contact_t.insert().values(
                email=email, phone=phone, first_name=first_name, last_name=last_name, country=country,
                lifecycle_stage="customer", score=0.0, attributes={"vip": vip}, created_at=at,
                updated_at=at)).inserted_primary_key[0]
            if ads:
                record_consent(conn, cid, "ads", ads, source="test", at=at)
        return cid

    def acknowledged(self) -> list[int]:
        with self.store.engine.connect() as conn:
            rows = [r[0] for r in conn.execute(select(membership_t.c.contact_id).order_by(membership_t.c.contact_id))]
            conn.rollback()
        return rows

    def close(self) -> None:
        if self.case.http:
            self.server.stop()
        self.store.dispose()


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def h(request, tmp_path, sqlite_template):
    harness = Harness(request.param, tmp_path, sqlite_template)
    yield harness
    harness.close()
    assert harness.server.problems == [], "the provider saw protocol violations"


def http_only(h: Harness) -> None:
    if not h.case.http:
        pytest.skip(f"{h.case.name} makes no HTTP requests")


def people(h: Harness, n: int, *, prefix: str = "p") -> list[str]:
    """n VIP contacts with ads consent granted, inserted in one transaction."""
    emails = [f"{prefix}{i:03d}@example.com" for i in range(n)]
    at = NOW - timedelta(days=30)
    with h.store.engine.begin() as conn:
        for e in emails:
            cid = conn.execute(contact_t.insert().values(
                email=e, lifecycle_stage="customer", score=0.0, attributes={"vip": True}, created_at=at,
                updated_at=at)).inserted_primary_key[0]
            record_consent(conn, cid, "ads", "granted", source="test", at=at)
    return emails


# ---------------------------------------------------------------- the specification


def test_first_sync_adds_exactly_the_eligible_members(h):
    people(h, 3)
    h.contact("no-consent@example.com", ads=None)
    h.contact("revoked@example.com", ads="revoked")
    h.contact("not-vip@example.com", vip=False)
    report = h.sync()
    expected = ["p000@example.com", "p001@example.com", "p002@example.com"]
    if not h.case.needs_ads_consent:  # a CRM list is not an ad audience
        expected += ["no-consent@example.com", "revoked@example.com"]
    assert h.members() == h.expect(*expected)
    assert (report.status, report.added, report.removed, report.failed, report.members) == \
        ("ok", len(expected), 0, 0, len(expected))
    assert len(h.acknowledged()) == len(expected)
    with h.store.engine.connect() as conn:
        run = conn.execute(select(sync_run_t)).one()
    assert (run.status, run.added, run.target) == ("ok", len(expected), report.target)
    assert run.duration_ms >= 0 and run.finished_at is not None


def test_a_second_run_without_changes_sends_nothing(h):
    people(h, 4)
    h.sync()
    before = len(h.server.requests) if h.case.http else len(h.server.files())
    report = h.sync()
    after = len(h.server.requests) if h.case.http else len(h.server.files())
    assert (report.added, report.removed, report.requests, after - before) == (0, 0, 0, 0)


def test_every_request_is_authenticated_and_the_token_never_leaks(h):
    http_only(h)
    people(h, 2)
    h.server.fail_next(1, Reply(400, {"error": {"message": "bad", "code": 100}, "status": "error"}))
    report = h.sync()
    h.sync()
    assert h.server.requests and h.server.problems == []  # the fake checks the credentials on every call
    with h.store.engine.connect() as conn:
        stored = [str(r) for r in conn.execute(select(sync_run_t))]
    assert report.failed >= 1
    assert TOKEN not in repr(report) and not any(TOKEN in s for s in stored)


def test_batches_stay_within_the_limit_and_split_the_work(h):
    h.max_batch = 40
    cls = lookup(h.case.name)
    limits = {"hubspot": 100, "meta": 10_000, "google": 10_000, "linkedin": 5_000, "tiktok": 1_000, "csv": 10_000}
    assert cls.max_batch <= limits[h.case.name]
    emails = people(h, 100)
    report = h.sync()
    assert h.members() == h.expect(*emails)
    assert report.requests == 3 * h.case.requests_per_add_batch  # 40 + 40 + 20
    if h.case.http:
        sizes = [len(h.server.sent(r)) for r in h.server.requests if h.server.sent(r)]
        assert max(sizes) <= 40


NORMALIZATION = [
    # (raw contact fields, what Meta hashes, Google, LinkedIn/HubSpot e-mail)
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
    dict(email="x.y@googlemail.com", phone="+44 20 7946 0958", country=None, first_name="Zoë", last_name="Ng",
         meta=["x.y@googlemail.com", "442079460958", "zoë", "ng", ""],
         google={"emailAddress": "xy@googlemail.com", "phoneNumber": "+442079460958"},
         plain="x.y@googlemail.com"),
]


def test_identifiers_are_normalized_the_platform_way_before_hashing(h):
    for v in NORMALIZATION:
        h.contact(v["email"], phone=v["phone"], country=v["country"], first_name=v["first_name"],
                  last_name=v["last_name"])
    assert h.sync().added == 3
    name = h.case.name
    if name == "hubspot":
        inputs = [i for r in h.server.requests if r.path.endswith("/batch/upsert") for i in r.json()["inputs"]]
        assert sorted(i["id"] for i in inputs) == sorted(v["plain"] for v in NORMALIZATION)
        assert {i["properties"].get("phone") for i in inputs} == {"+49301234567", "+14155552671", "+442079460958"}
    elif name in ("meta", "csv"):
        rows = []
        if name == "meta":
            import json
            for r in h.server.requests:
                payload = json.loads(r.form()["payload"])
                assert payload["schema"] == ["EMAIL", "PHONE", "FN", "LN", "COUNTRY"]
                rows += payload["data"]
        else:
            for path in h.server.files():
                with open(path, encoding="utf-8") as fh:
                    rows += [list(r.values()) for r in csv.DictReader(fh)]
        expected = [[sha(x) if x else "" for x in v["meta"]] for v in NORMALIZATION]
        assert sorted(rows) == sorted(expected)
    elif name == "google":
        members = [m for r in h.server.requests for m in r.json()["audienceMembers"]]
        got = sorted(sorted((k, val) for i in m["userData"]["userIdentifiers"] for k, val in i.items()) for m in members)
        expected = sorted(sorted((k, sha(x)) for k, x in v["google"].items()) for v in NORMALIZATION)
        assert got == expected
    elif name == "linkedin":
        assert sorted(ident for _, ident in h.sent()) == sorted(sha(v["plain"]) for v in NORMALIZATION)
    elif name == "tiktok":  # e-mail trimmed and lowercased, phone E.164 with `+`
        rows = [[e.get("id", "") for e in row] for r in h.server.requests for row in r.json()["batch_data"]]
        assert all(r.json()["id_schema"] == ["EMAIL_SHA256", "PHONE_SHA256"] for r in h.server.requests)
        assert sorted(rows) == sorted([sha(v["plain"]), sha(v["google"]["phoneNumber"])] for v in NORMALIZATION)
    else:  # a new destination must say how it normalizes
        pytest.fail(f"add {name}'s normalization vectors to this test")


def test_429_waits_as_the_provider_says_then_succeeds(h):
    http_only(h)
    emails = people(h, 3)
    h.server.fail_next(1, h.case.throttle())
    report = h.sync()
    assert report.status == "ok" and h.members() == h.expect(*emails)
    assert h.waits == [h.case.first_wait]


def test_5xx_is_retried_with_exponential_backoff(h):
    http_only(h)
    emails = people(h, 3)
    h.server.fail_next(2, Reply(503, {"error": {"code": 503, "message": "backend unavailable", "status": "UNAVAILABLE"}}))
    report = h.sync()
    assert report.status == "ok" and h.members() == h.expect(*emails)
    assert h.waits == [1.0, 2.0]


def test_a_batch_that_keeps_failing_stays_unacknowledged_and_exactly_it_is_retried_next_run(h):
    http_only(h)
    h.max_batch = 2
    emails = people(h, 6)
    # batch 1 goes through; every attempt at batch 2 fails; batch 3 goes through
    ok_requests = h.case.requests_per_add_batch
    original = h.server.dispatch
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if ok_requests < calls["n"] <= ok_requests + 3:  # 3 attempts = NURTURE_SYNC_MAX_ATTEMPTS
            h.server.requests.append(request)
            return Reply(503, {"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}})
        return original(request)

    h.server.dispatch = flaky
    report = h.sync()
    assert (report.status, report.added, report.failed) == ("partial", 4, 2)
    assert h.members() == h.expect(*emails[:2], *emails[4:])
    assert "gave up after 3 attempts" in report.errors[0]["reason"]
    h.server.dispatch = original
    mark = len(h.server.requests)
    second = h.sync()
    assert (second.status, second.added, second.failed) == ("ok", 2, 0)
    assert {ident for action, ident in h.sent(mark) if action == "add"} == h.expect(*emails[2:4])
    assert h.members() == h.expect(*emails)


@pytest.mark.parametrize("reply", [
    Reply(400, {"error": {"code": [100], "details": ["not an object"], "message": ["x"]}, "code": [40001]}),
    Reply(400, ["an", "error", "list"]),
    Reply(200, {"results": "text", "errors": [{"context": "x"}], "elements": {"0": "x"},
                "recordIdsMissing": "6", "invalid_entry_samples": ["x"], "code": [0]}),
], ids=["error_fields_of_odd_types", "error_list", "answer_fields_of_odd_types"])
def test_an_answer_of_any_shape_is_a_result_per_member_never_an_exception(h, reply):
    """An answer is untrusted: a code that is a list made Meta's classify fail (`unhashable
    type`), error details that are strings Google's, a list where an object belongs HubSpot's
    upsert: the whole target failed with a Python exception as its reason, and the summary said
    0 records failed. Whatever the provider answers, each member gets a result (acknowledged
    or failed), and what failed is retried by the next run."""
    http_only(h)
    emails = people(h, 2)
    h.server.fail_next(1, reply)
    report = h.sync()
    assert report.status in ("ok", "partial", "failed")
    assert report.added + report.failed == 2
    assert not any("Error in " in str(e.get("reason")) for e in report.errors), report.errors
    second = h.sync()
    assert second.added + second.failed + report.added == 2  # the failed ones again, no other
    assert h.server.problems == [] and len(emails) == 2


def test_a_rejected_record_fails_alone_and_is_retried_next_run(h):
    http_only(h)
    emails = people(h, 4)
    h.server.rejected.add(h.case.identity(emails[1]))
    report = h.sync()
    assert (report.status, report.added, report.failed) == ("partial", 3, 1)
    assert h.members() == h.expect(emails[0], *emails[2:])
    h.server.rejected.clear()
    mark = len(h.server.requests)
    assert h.sync().added == 1
    assert {i for a, i in h.sent(mark) if a == "add"} == h.expect(emails[1])
    assert h.members() == h.expect(*emails)


def test_leaving_revoking_or_being_suppressed_removes_the_contact_next_run(h):
    emails = people(h, 5)
    h.sync()
    ids = dict(zip(emails, h.acknowledged()))
    later = NOW + timedelta(days=1)
    with h.store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == ids[emails[0]])
                     .values(attributes={"vip": False}, updated_at=later))
        record_consent(conn, ids[emails[1]], "ads", "revoked", source="preference-center", at=later)
        suppress(conn, reason="manual", at=later, contact_id=ids[emails[2]])
    report = h.sync(now=later + timedelta(hours=1))
    gone = [emails[0], emails[2]] + ([emails[1]] if h.case.needs_ads_consent else [])
    assert report.removed == len(gone) and report.failed == 0
    assert h.members() == h.expect(*[e for e in emails if e not in gone])
    assert len(h.acknowledged()) == 5 - len(gone)


def test_a_changed_email_replaces_the_old_identifier(h):
    emails = people(h, 2)
    h.sync()
    cid = h.acknowledged()[0]
    later = NOW + timedelta(days=1)
    with h.store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == cid).values(email="new@example.com", updated_at=later))
    report = h.sync(now=later)
    assert (report.updated, report.added, report.removed) == (1, 0, 0)
    assert h.members() == h.expect("new@example.com", emails[1])


class Crash(BaseException):
    """A process dying: not an Exception, so nothing on the way catches it."""


def test_a_crash_after_the_provider_took_a_batch_loses_and_doubles_nothing(h):
    h.max_batch = 2
    emails = people(h, 6)
    calls = {"n": 0}

    def crash_after_second_batch(dest):
        real_add = dest.add

        def add(target, members, batch):
            results = real_add(target, members, batch)  # the provider has batch 2 …
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash()  # … and we die before acknowledging it
            return results
        dest.add = add
        return dest

    h.wrap = crash_after_second_batch
    with pytest.raises(Crash):
        h.sync()
    assert len(h.acknowledged()) == 2  # batch 1 only
    h.wrap = None
    report = h.sync()
    assert report.added == 4 and report.failed == 0
    assert h.members() == h.expect(*emails)
    assert len(h.acknowledged()) == len(set(h.acknowledged())) == 6
    with h.store.engine.connect() as conn:
        statuses = [r[0] for r in conn.execute(select(sync_run_t.c.status).order_by(sync_run_t.c.id))]
    assert statuses == ["interrupted", "ok"]


def test_every_provider_request_takes_a_throttle_slot_first(h):
    from nurture.segments import throttle
    http_only(h)
    h.max_batch = 2
    people(h, 5)
    h.server.fail_next(1, Reply(503, {"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}}))
    slots: list[str] = []
    previous = throttle.install(slots.append)
    try:
        h.sync()
    finally:
        throttle.install(previous)
    assert slots == [h.case.name] * len(h.server.requests)  # retries included

"""Specification of the sync against ad platforms over time, on both stores, with the local fake
Meta and Google servers: audiences no longer in segments.yaml are emptied, two runs of one target
never interleave, an erasure or a revocation is honoured whatever the logical clock and even
mid-run, a hash two members share stays while one of them still needs it, and the run report
counts what happened."""
from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text, update

from integrations.http_retry import RetryPolicy
from nurture.cli.sync_verbs import sync_problem
from nurture.consent_ledger import record_consent
from nurture.privacy.erase import erase_emails
from nurture.registry import IntegrationContext, SyncMember
from nurture.segments.sync import default_factory, detached_targets, push_removals, sync_segments, sync_target, targets
from nurture.segments.target_lock import TargetBusy, _digest, target_lock
from nurture.spec.project import load_project
from nurture.store.tables import contact_t, membership_t, sync_run_t
from tests.conftest import utc, write_project
from tests.fakes.google import FakeGoogle
from tests.fakes.http_server import Reply
from tests.fakes.meta import FakeMeta

NOW = utc(2026, 11, 21, 1, 0)
TOKEN = "tok-sync"

VIP_TO = """
segments:
  - name: vip
    when: {{attribute: {{vip: true}}}}
    destinations:
{dests}
"""
META_111 = VIP_TO.format(dests='      - {destination: meta, audience_id: "111"}')
META_222 = VIP_TO.format(dests='      - {destination: meta, audience_id: "222"}')


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def make(name, context):
    destination = default_factory(name, context)
    destination.client.policy = RetryPolicy(max_attempts=2, base_delay=0.0, sleep=lambda s: None)
    return destination


def project(root, segments: str):
    write_project(root, {}, segments=segments)
    spec = load_project(root)
    assert not spec.errors, [str(e) for e in spec.errors]
    return spec


def add_contact(store, email, *, attributes=None, ads="granted"):
    at = NOW - timedelta(days=30)
    with store.engine.begin() as conn:
        cid = conn.execute(contact_t.insert().values(
            email=email, lifecycle_stage="customer", score=0.0, attributes=attributes or {"vip": True},
            created_at=at, updated_at=at)).inserted_primary_key[0]
        if ads:
            record_consent(conn, cid, "ads", ads, source="test", at=at)
    return cid


def revoke(store, cid, at):
    with store.engine.begin() as conn:
        record_consent(conn, cid, "ads", "revoked", source="web", at=at)


def held(store):
    with store.engine.connect() as conn:
        rows = conn.execute(select(membership_t.c.segment, membership_t.c.target, membership_t.c.contact_id)
                            .order_by(membership_t.c.id)).all()
        conn.rollback()
    return [tuple(r) for r in rows]


@pytest.fixture
def meta(tmp_path):
    server = FakeMeta(TOKEN).start()
    root = tmp_path / "p"
    context = IntegrationContext(root, root / ".nurture",
                                 {"NURTURE_META_BASE_URL": server.url, "NURTURE_META_ACCESS_TOKEN": TOKEN})
    yield server, root, context
    server.stop()


# ---------------------------------------------------------------- detached targets


def test_an_audience_whose_id_was_corrected_is_emptied_and_a_revoker_leaves_it(store, meta):
    server, root, context = meta
    old = project(root, META_111)
    ann = add_contact(store, "ann@example.com")
    add_contact(store, "bob@example.com")
    sync_segments(store, old, NOW, context, factory=make)
    assert server.members("111") == {sha("ann@example.com"), sha("bob@example.com")}

    new = project(root, META_222)
    revoke(store, ann, NOW + timedelta(hours=1))
    reports = sync_segments(store, new, NOW + timedelta(days=1), context, factory=make)
    by_target = {r.target: r for r in reports}
    assert (by_target["meta:222"].added, by_target["meta:222"].detached) == (1, False)
    detached = by_target["meta:111"]
    assert (detached.removed, detached.members, detached.detached) == (2, 0, True)
    assert server.members("111") == set() and server.members("222") == {sha("bob@example.com")}
    assert held(store) == [("vip", "meta:222", 2)]
    # the detached target is gone from later runs
    assert [r.target for r in sync_segments(store, new, NOW + timedelta(days=2), context, factory=make)] == ["meta:222"]


def test_a_deleted_segment_s_audience_is_emptied_and_its_rows_forgotten(store, meta):
    server, root, context = meta
    add_contact(store, "ann@example.com")
    sync_segments(store, project(root, META_111), NOW, context, factory=make)
    empty = project(root, "segments: []\n")
    assert [(t.segment, t.key, t.detached) for t in detached_targets(store, empty)] == [("vip", "meta:111", True)]
    (report,) = sync_segments(store, empty, NOW + timedelta(days=1), context, factory=make)
    assert (report.status, report.removed, report.members) == ("ok", 1, 0)
    assert server.members("111") == set() and held(store) == []
    with store.engine.connect() as conn:
        runs = conn.execute(select(sync_run_t.c.target, sync_run_t.c.status, sync_run_t.c.removed)
                            .order_by(sync_run_t.c.id)).all()
        conn.rollback()
    assert [tuple(r) for r in runs][-1] == ("meta:111", "ok", 1)
    assert sync_segments(store, empty, NOW + timedelta(days=2), context, factory=make) == []


def test_a_renamed_segment_on_the_same_audience_sends_no_removal_for_members_it_still_holds(store, meta):
    server, root, context = meta
    add_contact(store, "ann@example.com")
    sync_segments(store, project(root, META_111), NOW, context, factory=make)
    renamed = project(root, META_111.replace("name: vip", "name: vips"))
    before = len(server.requests)
    reports = sync_segments(store, renamed, NOW + timedelta(days=1), context, factory=make)
    assert [(r.segment, r.added, r.removed, r.detached) for r in reports] == [("vips", 1, 0, False),
                                                                               ("vip", 0, 1, True)]
    assert [a for r in server.requests[before:] for a, _ in server.sent(r)] == ["add"]
    assert server.members("111") == {sha("ann@example.com")} and held(store) == [("vips", "meta:111", 1)]


def test_a_pending_erasure_in_a_no_longer_configured_audience_is_finished_by_the_nightly_sync(store, meta):
    server, root, context = meta
    add_contact(store, "ann@example.com")
    sync_segments(store, project(root, META_111), NOW, context, factory=make)
    new = project(root, META_222)
    server.fail_next(10, Reply(503, {"error": {"message": "down", "code": 2, "is_transient": True}}))
    (result,) = erase_emails(store, new, ["ann@example.com"], context=context, actor="test",
                             now=NOW + timedelta(hours=2), factory=make)
    server.faults.clear()
    assert result.destinations.get("meta:111") == "pending", result.as_dict()
    sync_segments(store, new, NOW + timedelta(days=1), context, factory=make)
    assert server.members("111") == set() and held(store) == []


def test_a_detached_target_whose_audience_cannot_be_told_fails_with_its_reason(store, meta):
    server, root, context = meta
    with store.engine.begin() as conn:
        conn.execute(membership_t.insert().values(segment="old", target="nosuchdest:9", contact_id=1,
                                                  contact_version=NOW, fingerprint="f", payload={}, acked_at=NOW))
    (report,) = sync_segments(store, project(root, "segments: []\n"), NOW, context, factory=make)
    assert (report.target, report.status, report.detached) == ("nosuchdest:9", "failed", True)
    assert "nosuchdest" in report.errors[0]["reason"] and "by hand" in report.errors[0]["reason"]


# ---------------------------------------------------------------- one run per target


def test_a_second_run_of_a_target_waits_for_the_first_and_a_revoked_contacts_new_hash_leaves(store, meta):
    """Ann changed her e-mail; run A plans "remove old, add new". Ann revokes, and run B of the
    same target starts meanwhile: B waits for A's lock (so it diffs against what A acknowledged),
    and A checks ann again before its addition — her new hash is never sent."""
    server, root, context = meta
    spec = project(root, META_111)
    ann = add_contact(store, "ann@example.com")
    sync_segments(store, spec, NOW, context, factory=make)
    t1 = NOW + timedelta(days=1)
    with store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == ann).values(email="ann@new.example", updated_at=t1))
    (ref,) = targets(spec)
    b_diffed, b = threading.Event(), {}
    dest_a = make("meta", context)
    real_remove_a = dest_a.remove

    def remove_a(target, members, batch):
        revoke(store, ann, t1 + timedelta(minutes=1))

        def run_b():
            dest_b = make("meta", context)
            real_remove_b = dest_b.remove

            def remove_b(target, members, batch):
                b_diffed.set()
                return real_remove_b(target, members, batch)
            dest_b.remove = remove_b
            b["report"] = sync_target(store, spec, ref, dest_b, t1 + timedelta(minutes=2))
            dest_b.close()
        b["thread"] = threading.Thread(target=run_b)
        b["thread"].start()
        assert not b_diffed.wait(1.0), "run B went ahead while run A held the target"
        return real_remove_a(target, members, batch)

    dest_a.remove = remove_a
    a = sync_target(store, spec, ref, dest_a, t1)
    dest_a.close()
    b["thread"].join(30)
    assert (a.removed, a.added, a.updated, a.failed) == (1, 0, 0, 0)
    assert (b["report"].status, b["report"].removed, b["report"].requests) == ("ok", 0, 0)
    assert sha("ann@new.example") not in {who for r in server.requests for _, who in server.sent(r)}
    assert server.members("111") == set() and held(store) == []


def test_a_stale_removal_forgets_only_the_row_it_removed(store, meta):
    """A removal planned against an acknowledged row that has been rewritten since (another run
    re-added the contact with new identifiers) leaves the new row alone."""
    server, root, context = meta
    spec = project(root, META_111)
    ann = add_contact(store, "ann@example.com")
    sync_segments(store, spec, NOW, context, factory=make)
    (ref,) = targets(spec)
    with store.engine.connect() as conn:
        old = conn.execute(select(membership_t.c.fingerprint, membership_t.c.payload)).one()
        conn.rollback()
    with store.engine.begin() as conn:
        conn.execute(update(membership_t).values(fingerprint="rewritten"))
    destination = make("meta", context)
    removed: set[int] = set()
    push_removals(store, destination, ref, [SyncMember(ann, payload=dict(old.payload))], 1, removed, Counter(), (),
                  {ann: old.fingerprint})
    destination.close()
    assert removed == {ann} and held(store) == [("vip", "meta:111", ann)]


def test_a_run_that_cannot_get_its_target_is_a_failed_target_that_changes_nothing(store, meta):
    server, root, context = meta
    spec = project(root, META_111)
    add_contact(store, "ann@example.com")
    (ref,) = targets(spec)
    import nurture.segments.sync as engine
    wait, engine.SYNC_LOCK_WAIT = engine.SYNC_LOCK_WAIT, 0.3
    try:
        with target_lock(store, "meta:111", wait=1):  # another run holds the target
            report = sync_target(store, spec, ref, make("meta", context), NOW)
            with pytest.raises(TargetBusy):
                with target_lock(store, "meta:111", wait=0.3):
                    pass
    finally:
        engine.SYNC_LOCK_WAIT = wait
    assert (report.status, report.added) == ("failed", 0)
    assert "another sync of meta:111" in report.errors[0]["reason"]
    assert server.members("111") == set() and held(store) == []


def test_an_erasure_while_the_sync_uploads_is_not_undone_by_that_sync(store, meta):
    server, root, context = meta
    spec = project(root, META_111)
    add_contact(store, "ann@example.com")
    (ref,) = targets(spec)
    destination = make("meta", context)
    real_add = destination.add
    answer = {}

    def add(target, members, batch):  # the erasure lands between the last check and the upload
        (answer["r"],) = erase_emails(store, spec, ["ann@example.com"], context=context, actor="test",
                                      now=NOW + timedelta(minutes=1), factory=make)
        return real_add(target, members, batch)
    destination.add = add
    report = sync_target(store, spec, ref, destination, NOW)
    destination.close()
    assert answer["r"].outcome == "erased"
    assert (report.added, report.members) == (0, 0)
    assert server.members("111") == set() and held(store) == []


def test_a_contact_erased_or_revoked_after_the_diff_is_not_sent_by_a_later_batch(store, meta):
    server, root, context = meta
    spec = project(root, META_111)
    add_contact(store, "ann@example.com")
    bob = add_contact(store, "bob@example.com")
    add_contact(store, "cy@example.com")
    (ref,) = targets(spec)
    destination = make("meta", context)
    destination.max_batch = 1
    real_add = destination.add

    def add(target, members, batch):
        if batch.seq == 1:  # while the first batch is under way, bob revokes and cy is erased
            revoke(store, bob, NOW - timedelta(minutes=1))
            erase_emails(store, spec, ["cy@example.com"], context=context, actor="test", now=NOW, factory=make)
        return real_add(target, members, batch)
    destination.add = add
    report = sync_target(store, spec, ref, destination, NOW)
    destination.close()
    assert [who for r in server.requests for _, who in server.sent(r)] == [sha("ann@example.com")]
    assert (report.added, report.failed, report.members) == (1, 0, 1)


# ---------------------------------------------------------------- the lock's session lost (PostgreSQL)


def lock_session(store, key):
    """A connection of another session, and the `pg_locks` halves of `key`'s advisory lock."""
    other = create_engine(store.engine.url.render_as_string(hide_password=False))
    unsigned = int.from_bytes(_digest(key)[:8], "big")
    return other, {"hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF}


def drop_lock_session(other, halves):
    """End the session that holds the target's lock, as a server restart, a proxy or
    `idle_session_timeout` would (waiting until it is gone)."""
    with other.connect() as conn:
        ended = conn.execute(text(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND classid::bigint = :hi AND objid::bigint = :lo "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"), halves).scalar_one()
        conn.commit()
    assert ended == 1


def lock_is_free(other, key):
    lock_id = int.from_bytes(_digest(key)[:8], "big", signed=True)
    with other.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar_one()
        if got:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
        conn.commit()
    return got


def runs(store):
    with store.engine.connect() as conn:
        rows = conn.execute(select(sync_run_t.c.status, sync_run_t.c.added).order_by(sync_run_t.c.id)).all()
        conn.rollback()
    return [tuple(r) for r in rows]


def _three_to_add_under_a_held_lock(store, meta):
    """Three contacts for one Meta audience, and a lock session holding the target's lock."""
    server, root, context = meta
    spec = project(root, META_111)
    for name in ("ann", "bob", "cy"):
        add_contact(store, f"{name}@example.com")
    (ref,) = targets(spec)
    other, halves = lock_session(store, ref.key)
    return server, spec, ref, other, halves, context


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_run_whose_lock_session_is_dropped_takes_the_free_lock_again_and_finishes_ok(store, meta):
    """The lock's session ends while a batch is at the provider: before the next batch the run
    takes the (free) lock again on a new connection, holds it to its end, and its report and
    sync_run row are the honest `ok` of a finished run — not a failure blamed on the destination."""
    server, spec, ref, other, halves, context = _three_to_add_under_a_held_lock(store, meta)
    destination = make("meta", context)
    destination.max_batch = 1
    real_add = destination.add
    free_while_running = []

    def add(target, members, batch):
        if batch.seq == 1:
            drop_lock_session(other, halves)
        else:
            free_while_running.append(lock_is_free(other, ref.key))
        return real_add(target, members, batch)
    destination.add = add
    try:
        report = sync_target(store, spec, ref, destination, NOW)
        free_after = lock_is_free(other, ref.key)
    finally:
        destination.close()
        other.dispose()
    assert free_while_running == [False, False]  # the run held the target again for batches 2 and 3
    assert (report.status, report.added, report.failed, report.errors) == ("ok", 3, 0, [])
    assert runs(store) == [("ok", 3)]
    assert len(server.members("111")) == 3 and len(held(store)) == 3
    assert free_after


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_run_that_lost_its_lock_to_another_run_stops_interrupted_with_what_it_acknowledged(store, meta):
    """The lock's session ends and another run takes the target at once: the run sends no
    further batch, records the batch the provider confirmed, and ends `interrupted` with the
    reason; the next run diffs against that and adds the rest."""
    server, spec, ref, other, halves, context = _three_to_add_under_a_held_lock(store, meta)
    lock_id = int.from_bytes(_digest(ref.key)[:8], "big", signed=True)
    destination = make("meta", context)
    destination.max_batch = 1
    real_add = destination.add
    rival = other.connect()

    def add(target, members, batch):
        if batch.seq == 1:  # the other run takes the target as soon as the lock's session is gone
            drop_lock_session(other, halves)
            assert rival.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar_one()
            rival.commit()
        return real_add(target, members, batch)
    destination.add = add
    try:
        report = sync_target(store, spec, ref, destination, NOW)
    finally:
        destination.close()
        rival.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})  # the other run finishes
        rival.commit()
        rival.close()
    try:
        assert (report.status, report.added, report.failed) == ("interrupted", 1, 0)
        assert "another run holds it now" in report.errors[0]["reason"]
        # `nurture sync` exits non-zero for it: a script alerting on the exit code hears of it
        assert "1 target(s) stopped before the end" in sync_problem([report.row()])
        assert runs(store) == [("interrupted", 1)]
        assert len(server.requests) == 1 and len(server.members("111")) == 1 and len(held(store)) == 1
        assert lock_is_free(other, ref.key)
        (next_run,) = sync_segments(store, spec, NOW + timedelta(hours=1), context, factory=make)
    finally:
        other.dispose()
    assert (next_run.status, next_run.added) == ("ok", 2)
    assert len(server.members("111")) == 3 and len(held(store)) == 3


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_an_erasure_whose_lock_session_is_dropped_during_the_removal_still_reports_the_removal(store, meta):
    server, root, context = meta
    spec = project(root, META_111)
    add_contact(store, "ann@example.com")
    sync_segments(store, spec, NOW, context, factory=make)
    (ref,) = targets(spec)
    other, halves = lock_session(store, ref.key)

    def dropping(name, ctx):
        destination = make(name, ctx)
        real_remove = destination.remove

        def remove(target, members, batch):
            drop_lock_session(other, halves)
            return real_remove(target, members, batch)
        destination.remove = remove
        return destination
    try:
        (result,) = erase_emails(store, spec, ["ann@example.com"], context=context, actor="test",
                                 now=NOW + timedelta(hours=1), factory=dropping)
        assert lock_is_free(other, ref.key)
    finally:
        other.dispose()
    assert result.outcome == "erased" and result.destinations == {ref.key: "removed"}
    assert server.members("111") == set() and held(store) == []


# ---------------------------------------------------------------- the logical clock


def test_a_late_scheduled_run_does_not_re_add_a_contact_who_already_revoked(store, meta):
    server, root, context = meta
    spec = project(root, META_111)
    ann = add_contact(store, "ann@example.com")
    sync_segments(store, spec, NOW, context, factory=make)
    revoke(store, ann, NOW + timedelta(hours=8))
    sync_segments(store, spec, NOW + timedelta(hours=11), context, factory=make)
    assert server.members("111") == set()
    # the 02:00 run of that night, delayed, runs with its scheduled start
    report, = sync_segments(store, spec, NOW + timedelta(hours=1), context, factory=make)
    assert report.added == 0 and server.members("111") == set()


# ---------------------------------------------------------------- shared entries


SHARED = """
segments:
  - name: recent_buyers
    when: {attribute: {recent: true}}
    destinations:
      - {destination: meta, audience_id: "555"}
  - name: big_spenders
    when: {attribute: {ltv: {gte: 500}}}
    destinations:
      - {destination: meta, audience_id: "555"}
"""


def test_a_contact_leaving_one_of_two_segments_feeding_one_audience_stays_in_it(store, meta):
    server, root, context = meta
    spec = project(root, SHARED)
    ann = add_contact(store, "ann@example.com", attributes={"recent": True, "ltv": 900})
    sync_segments(store, spec, NOW, context, factory=make)
    assert server.members("555") == {sha("ann@example.com")}
    with store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == ann).values(
            attributes={"recent": False, "ltv": 900}, updated_at=NOW + timedelta(hours=1)))
    reports = sync_segments(store, spec, NOW + timedelta(days=1), context, factory=make)
    assert [(r.segment, r.removed) for r in reports] == [("recent_buyers", 1), ("big_spenders", 0)]
    assert server.members("555") == {sha("ann@example.com")}
    assert held(store) == [("big_spenders", "meta:555", ann)]
    revoke(store, ann, NOW + timedelta(days=1, hours=1))  # out of both: now the entry goes
    sync_segments(store, spec, NOW + timedelta(days=2), context, factory=make)
    assert server.members("555") == set() and held(store) == []


def test_removing_one_contact_keeps_another_whose_identifiers_normalize_the_same(store, tmp_path):
    google = FakeGoogle(TOKEN).start()
    try:
        root = tmp_path / "p"
        context = IntegrationContext(root, root / ".nurture", {"NURTURE_GOOGLE_BASE_URL": google.url,
                                                               "NURTURE_GOOGLE_ACCESS_TOKEN": TOKEN})
        spec = project(root, VIP_TO.format(
            dests='      - {destination: google, account_id: "1234567890", audience_id: "987654"}'))
        first = add_contact(store, "a.b@gmail.com")
        second = add_contact(store, "ab+shop@gmail.com")
        sync_segments(store, spec, NOW, context, factory=make)
        assert google.members("987654") == {sha("ab@gmail.com")}
        revoke(store, first, NOW + timedelta(hours=1))
        (report,) = sync_segments(store, spec, NOW + timedelta(days=1), context, factory=make)
        assert (report.removed, report.members) == (1, 1)
        assert google.members("987654") == {sha("ab@gmail.com")}
        revoke(store, second, NOW + timedelta(days=1, hours=1))
        sync_segments(store, spec, NOW + timedelta(days=2), context, factory=make)
        assert google.members("987654") == set() and held(store) == []
    finally:
        google.stop()


# ---------------------------------------------------------------- the report


def test_a_changed_e_mail_whose_new_hash_is_refused_counts_as_removed_and_failed(store, meta):
    server, root, context = meta
    spec = project(root, META_111)
    ann = add_contact(store, "ann@example.com")
    sync_segments(store, spec, NOW, context, factory=make)
    with store.engine.begin() as conn:
        conn.execute(update(contact_t).where(contact_t.c.id == ann).values(
            email="ann@new.example", updated_at=NOW + timedelta(hours=1)))
    server.rejected.add(sha("ann@new.example"))
    (report,) = sync_segments(store, spec, NOW + timedelta(days=1), context, factory=make)
    assert server.members("111") == set()
    assert (report.removed, report.updated, report.added, report.failed, report.members) == (1, 0, 0, 1, 0)


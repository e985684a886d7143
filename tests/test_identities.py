"""Identities (nurture.identities): a contact known by several identifiers; an anonymous contact
merged into the known one moves its events, enrollments, touches, messages and consents and
is recorded; `import contacts` matches external_id → e-mail → phone; `consent grant|revoke`
by --phone / --external-id; `messages --json` names a contact without e-mail by phone or id."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

import nurture.ingest as ingest
from nurture.identities import MERGED, Who, merge_contacts, resolve
from nurture.ingest import import_contacts, track_file, track_records
from nurture.messages import message_log
from nurture.store.tables import consent_t, contact_t, enrollment_t, event_t, identity_t, merge_t, message_t, touch_t
from tests.conftest import utc, write_project
from tests.engine_fixtures import add_contact, add_event, set_consent

NOW = utc(2026, 3, 2, 12, 0)


def _enroll(store, contact_id, journey, entered_at) -> int:
    with store.engine.begin() as conn:
        return conn.execute(enrollment_t.insert().values(
            contact_id=contact_id, journey=journey, version="v1", step_id="s1", next_due_at=entered_at,
            status="active", holdout=False, entered_at=entered_at, revenue=0.0, defer_count=0,
            state={})).inserted_primary_key[0]


def _touch(store, contact_id, touch, source, at):
    with store.engine.begin() as conn:
        conn.execute(touch_t.insert().values(contact_id=contact_id, touch=touch, source=source, occurred_at=at))


def _message(store, contact_id, enrollment_id=None, address="+4930123456", channel="sms") -> int:
    with store.engine.begin() as conn:
        return conn.execute(message_t.insert().values(
            enrollment_id=enrollment_id, contact_id=contact_id, journey="j", step_id="s1", attempt_key="send",
            channel=channel, purpose="marketing", template="hello", address=address, status="sent", due_at=NOW,
            attempts=1, created_at=NOW)).inserted_primary_key[0]


def _rows(store, table, *where):
    with store.engine.connect() as conn:
        return list(conn.execute(select(table).where(*where).order_by(*table.primary_key.columns)))


def test_a_merge_moves_everything_and_is_recorded(store):
    anon = add_contact(store, None, attributes={"seen": "ad", "plan": "free"})
    known = add_contact(store, "ann@example.com", attributes={"plan": "pro"})
    add_event(store, anon, "page_visit", NOW - dt.timedelta(days=3))
    add_event(store, known, "signup", NOW - dt.timedelta(days=1))
    older = _enroll(store, anon, "welcome", NOW - dt.timedelta(days=3))
    younger = _enroll(store, known, "welcome", NOW - dt.timedelta(days=1))
    only_anon = _enroll(store, anon, "browse", NOW - dt.timedelta(days=2))
    _message(store, anon, only_anon)
    set_consent(store, anon, "email", "granted")
    _touch(store, anon, "first", "google", NOW - dt.timedelta(days=3))
    _touch(store, anon, "last", "google", NOW - dt.timedelta(days=3))
    _touch(store, known, "first", "newsletter", NOW - dt.timedelta(days=1))
    _touch(store, known, "last", "newsletter", NOW - dt.timedelta(days=1))
    with store.engine.begin() as conn:
        counts = merge_contacts(conn, anon, known, reason="identify", now=NOW)
    assert counts["events"] == 1 and counts["enrollments"] == 2 and counts["enrollments_exited"] == 1
    assert counts["messages"] == 1 and counts["consents"] == 1
    assert {e.contact_id for e in _rows(store, event_t)} == {known}
    by_id = {e.id: e for e in _rows(store, enrollment_t)}
    assert {e.contact_id for e in by_id.values()} == {known}
    assert by_id[older].status == "active"  # the older enrollment of the journey is kept
    assert (by_id[younger].status, by_id[younger].exit_reason, by_id[younger].step_id) == ("exited", MERGED, None)
    assert by_id[only_anon].status == "active"
    assert [m.contact_id for m in _rows(store, message_t)] == [known]
    assert {c.contact_id for c in _rows(store, consent_t)} == {known}
    touches = {t.touch: (t.contact_id, t.source) for t in _rows(store, touch_t)}
    assert touches == {"first": (known, "google"), "last": (known, "newsletter")}  # earliest first, latest last
    [merge] = _rows(store, merge_t)
    assert (merge.from_contact_id, merge.into_contact_id, merge.reason, merge.counts["events"]) == (
        anon, known, "identify", 1)
    rows = {c.id: c for c in _rows(store, contact_t)}
    assert rows[known].attributes == {"seen": "ad", "plan": "pro"}  # the known contact's values win
    assert rows[anon].attributes == {} and rows[anon].email is None


def test_resolve_creates_anonymous_contacts_and_merges_them_once(store):
    with store.engine.begin() as conn:
        visitor, merged = resolve(conn, Who(anonymous_id="a-1"), NOW)
        assert merged is None
        again, _ = resolve(conn, Who(anonymous_id="a-1"), NOW)
        assert again == visitor
        # the visitor identifies, no contact known yet: its own contact becomes the known one
        same, merged = resolve(conn, Who(anonymous_id="a-1", external_id="u-1", email="ann@example.com"), NOW)
        assert (same, merged) == (visitor, None)
        other, _ = resolve(conn, Who(anonymous_id="a-2"), NOW)
        into, merged = resolve(conn, Who(anonymous_id="a-2", email="ann@example.com"), NOW)
        assert (into, merged) == (visitor, other)
        assert resolve(conn, Who(anonymous_id="a-2", email="ann@example.com"), NOW) == (visitor, None)
        row = conn.execute(select(contact_t).where(contact_t.c.id == visitor)).one()
    assert (row.email, row.external_id) == ("ann@example.com", "u-1")
    assert len(_rows(store, merge_t)) == 1


def test_import_matches_external_id_then_email_then_phone(store, tmp_path):
    by_id = add_contact(store, "old@example.com", external_id="crm-1")
    by_email = add_contact(store, "bo@example.com")
    by_phone = add_contact(store, None, phone="+4930123456")
    path = tmp_path / "contacts.csv"
    path.write_text("external_id,email,phone,first_name\n"
                    "crm-1,new@example.com,,Ann\n"         # external_id wins: the e-mail of crm-1 changes
                    "crm-2,bo@example.com,,Bo\n"           # no crm-2: matched by e-mail, gets the id
                    ",,+49 30 123456,Cy\n"                 # phone only: matched by phone
                    "crm-3,,+4930999999,Di\n"              # nothing known: created without e-mail
                    ",,,Ed\n")                             # no identifier at all: refused
    result = import_contacts(store, path, now=NOW)
    assert (result.created, result.updated) == (1, 3)
    assert [(e.line, e.field) for e in result.errors] == [(6, "email")]
    rows = {c.id: c for c in _rows(store, contact_t)}
    assert (rows[by_id].email, rows[by_id].first_name) == ("new@example.com", "Ann")
    assert (rows[by_email].external_id, rows[by_email].first_name) == ("crm-2", "Bo")
    assert rows[by_phone].first_name == "Cy"
    [created] = [c for c in rows.values() if c.external_id == "crm-3"]
    assert (created.email, created.phone, created.first_name) == (None, "+4930999999", "Di")


def test_import_refuses_an_email_held_by_another_contact_than_the_external_id(store, tmp_path):
    add_contact(store, "ann@example.com", external_id="crm-1")
    add_contact(store, "bo@example.com")
    path = tmp_path / "contacts.csv"
    path.write_text("external_id,email\ncrm-1,bo@example.com\ncrm-9,x@example.com\ncrm-8,x@example.com\n")
    result = import_contacts(store, path, now=NOW)
    assert [(e.line, e.field) for e in result.errors] == [(4, "email"), (2, "email")]
    assert result.created == 1 and result.updated == 0


def test_a_second_file_naming_an_email_under_another_external_id_is_refused_and_rewrites_nothing(store, tmp_path):
    """One file with `E1,ann@` and `E2,ann@` refuses line 3; two files must not differ — the
    second one rewrote the contact's external id (and a later userId E1 made a new contact)."""
    crm = tmp_path / "crm.csv"
    crm.write_text("external_id,email,first_name\nE1,ann@example.com,Ann\n")
    shop = tmp_path / "shop.csv"
    shop.write_text("external_id,email,first_name\nE2,ann@example.com,Annie\n")
    assert import_contacts(store, crm, now=NOW).errors == []
    second = import_contacts(store, shop, now=NOW)
    assert [str(e) for e in second.errors] == [
        "shop.csv:2: email: 'ann@example.com' belongs to a contact with another external_id ('E1')"]
    assert (second.created, second.updated) == (0, 0)
    assert [(c.external_id, c.email, c.first_name) for c in _rows(store, contact_t)] == [("E1", "ann@example.com", "Ann")]


@pytest.mark.parametrize("chunk", [1, 1_000_000], ids=["two-slices", "one-slice"])
def test_two_rows_of_one_phone_are_one_contact_and_a_rerun_changes_nothing(store, tmp_path, monkeypatch, chunk):
    """The phone-only row was matched against stored contacts only: in one slice it made a
    second contact, and a rerun then found the first by its phone and renamed it."""
    monkeypatch.setattr(ingest, "IMPORT_CHUNK", chunk)
    path = tmp_path / "phones.csv"
    path.write_text("email,phone,first_name,plan\nbob@example.com,+4915112345678,Bob,pro\n"
                    ",+49 151 12345678,Robert,\n")
    import_contacts(store, path, now=NOW)
    first = [(c.email, c.phone, c.first_name, c.attributes) for c in _rows(store, contact_t)]
    assert first == [("bob@example.com", "+4915112345678", "Robert", {"plan": "pro"})]
    again = import_contacts(store, path, now=NOW)
    assert again.created == 0 and again.errors == []
    assert [(c.email, c.phone, c.first_name, c.attributes) for c in _rows(store, contact_t)] == first


def test_a_phone_only_row_joins_the_lowest_id_that_gets_its_phone_as_a_rerun_would(store, tmp_path):
    """Two earlier rows give the phone to a new and to a known contact: the known one has the
    lower id, so it is the one a second run (matching the stored phone) would find."""
    known = add_contact(store, "hq@example.com")
    path = tmp_path / "phones.csv"
    path.write_text("email,phone,first_name\nnew@example.com,+4930123456,New\nhq@example.com,+4930123456,HQ\n"
                    ",+4930123456,Switchboard\n")
    result = import_contacts(store, path, now=NOW)
    assert (result.created, result.updated, result.errors) == (1, 1, [])
    first = {c.email: (c.id, c.first_name) for c in _rows(store, contact_t)}
    assert first == {"hq@example.com": (known, "Switchboard"), "new@example.com": (known + 1, "New")}
    import_contacts(store, path, now=NOW)
    assert {c.email: (c.id, c.first_name) for c in _rows(store, contact_t)} == first


def _known_by_two_addresses(store) -> int:
    """u1 is known by work@ and, as a second address, home@ — recorded by an older version or
    a trusted source: an identify over the public write key no longer records one."""
    with store.engine.begin() as conn:
        cid, _ = resolve(conn, Who(external_id="u1", email="work@example.com"), NOW)
        assert resolve(conn, Who(external_id="u1", email="home@example.com"), NOW) == (cid, None)
        conn.execute(identity_t.insert().values(contact_id=cid, kind="email", value="home@example.com",
                                                first_seen_at=NOW))
    return cid


def test_one_address_is_one_person_over_v1_and_events(make_runtime):
    """An address goes to one contact whichever path brings it — /v1/*, POST /events. An
    identify naming a known user with another address than its own records nothing for it
    (a stranger holding the public write key could claim anyone's address that way): home@
    is its own person, on both paths, and u1 keeps work@."""
    import base64
    from tests.test_web_site import running_site
    key, token = "wk_test_segment_write_key_1", "tok-0123456789abcdef-ingest"
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    rt = make_runtime({})
    with running_site(rt, NOW, NURTURE_WRITE_KEY=key, NURTURE_INGEST_TOKEN=token) as site:
        for email in ("work@example.com", "home@example.com"):
            assert site.http.post("/v1/identify", json={"userId": "u1", "traits": {"email": email}},
                                  headers=basic).status_code == 200
        assert site.http.post("/v1/track", json={"anonymousId": "new-browser", "event": "Viewed", "messageId": "v1-a",
                                                 "context": {"traits": {"email": "home@example.com"}}},
                              headers=basic).status_code == 200
        r = site.http.post("/events", json={"event_id": "ev-a", "email": "home@example.com", "event": "purchase",
                                            "timestamp": "2026-03-02T11:00:00Z"},
                           headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    owner = {e.event_id: e.contact_id for e in _rows(rt.store, event_t)}
    people = {c.email: c.id for c in _rows(rt.store, contact_t) if c.email}
    assert set(people) == {"work@example.com", "home@example.com"}
    assert owner == {"v1-a": people["home@example.com"], "ev-a": people["home@example.com"]}
    assert [(i.kind, i.contact_id) for i in _rows(rt.store, identity_t) if i.value == "home@example.com"] == \
        [("email", people["home@example.com"])]


def test_track_finds_a_contact_by_an_address_it_is_also_known_by(store, tmp_path):
    cid = _known_by_two_addresses(store)
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "e1", "email": "Home@Example.com", "event": "purchase", '
                      '"timestamp": "2026-03-02T11:00:00Z"}\n')
    assert track_file(store, events, now=NOW).inserted == 1
    assert [e.contact_id for e in _rows(store, event_t)] == [cid]
    assert [c.id for c in _rows(store, contact_t)] == [cid]


def test_an_import_matches_a_contact_by_an_address_it_is_also_known_by_and_keeps_its_email(store, tmp_path):
    """A second contact holding home@ in its column would take the person's /v1 traffic too."""
    cid = _known_by_two_addresses(store)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email,first_name\nhome@example.com,Ann\n")
    result = import_contacts(store, contacts, now=NOW)
    assert (result.created, result.updated, result.errors) == (0, 1, [])
    [contact] = _rows(store, contact_t)
    # the address it was matched by is one of its own already: its e-mail stays
    assert (contact.id, contact.email, contact.first_name) == (cid, "work@example.com", "Ann")


def test_an_address_an_erased_contact_was_known_by_finds_no_one_and_makes_no_one(store):
    """(Erasure removes a contact's identities; one left behind must still not lead to them.)"""
    from nurture.store.tables import identity_t, suppression_t
    gone = add_contact(store, None)
    with store.engine.begin() as conn:
        conn.execute(suppression_t.insert().values(contact_id=gone, address="hash", reason="erased", created_at=NOW))
        conn.execute(identity_t.insert().values(contact_id=gone, kind="email", value="old@example.com",
                                                first_seen_at=NOW))
    result = track_records(store, [(1, {"event_id": "e1", "email": "old@example.com", "event": "visit",
                                        "timestamp": "2026-03-02T11:00:00Z"})], now=NOW)
    assert (result.inserted, result.erased, [(e.line, e.field) for e in result.errors]) == (0, 1, [(1, "email")])
    assert _rows(store, event_t) == [] and [c.id for c in _rows(store, contact_t)] == [gone]


def test_messages_name_a_contact_by_email_else_phone_else_external_id(store):
    with_email = add_contact(store, "ann@example.com", phone="+4930111111")
    phone_only = add_contact(store, None, phone="+4930123456")
    id_only = add_contact(store, None, external_id="crm-7")
    for cid in (with_email, phone_only, id_only):
        _message(store, cid)
    assert [m["contact"] for m in message_log(store)] == ["ann@example.com", "+4930123456", "crm-7"]


def test_consent_cli_by_phone_and_external_id(tmp_path):
    from tests.test_cli import JOURNEY, nurture
    from nurture.store.db import open_store
    project = write_project(tmp_path / "shop", {"cart_nudge": JOURNEY})
    contacts = tmp_path / "c.csv"
    contacts.write_text("external_id,phone,first_name\n,+4930123456,Ann\ncrm-7,,Bo\n")
    nurture(project, "import", "contacts", str(contacts), check=True)
    out = nurture(project, "consent", "grant", "--phone", "+49 30 123456", "--channel", "sms", check=True)
    assert "+4930123456: sms/marketing consent granted" in out.stdout
    nurture(project, "consent", "revoke", "--external-id", "crm-7", "--channel", "email", check=True)
    unknown = nurture(project, "consent", "grant", "--external-id", "nobody", "--channel", "email")
    assert unknown.returncode == 1 and "no contact with external id nobody" in unknown.stderr
    both = nurture(project, "consent", "grant", "a@example.com", "--phone", "+4930123456", "--channel", "email")
    assert both.returncode == 1 and "exactly one of" in both.stderr
    s = open_store(f"sqlite:///{project / '.nurture' / 'cli.db'}")
    try:
        with s.engine.connect() as conn:
            rows = conn.execute(select(contact_t.c.phone, contact_t.c.external_id, consent_t.c.channel,
                                       consent_t.c.status).join_from(consent_t, contact_t,
                                                                     consent_t.c.contact_id == contact_t.c.id)
                                .where(consent_t.c.source == "cli").order_by(consent_t.c.id)).all()
    finally:
        s.dispose()
    assert [tuple(r) for r in rows] == [("+4930123456", None, "sms", "granted"), (None, "crm-7", "email", "revoked")]


def test_an_erased_contact_is_never_found_again_by_another_identifier(store):
    from nurture.store.tables import suppression_t
    gone = add_contact(store, None, external_id="crm-gone")
    with store.engine.begin() as conn:
        conn.execute(suppression_t.insert().values(contact_id=gone, address="hash", reason="erased", created_at=NOW))
        assert resolve(conn, Who(external_id="crm-gone", anonymous_id="a-9"), NOW) == (None, None)
    assert _rows(store, contact_t, contact_t.c.id != gone) == []


@pytest.mark.parametrize("reentry, barred", [("never", True), ("1d", True), ("2h", False), ("always", False)])
def test_a_merge_ends_the_visitors_enrollment_where_the_journeys_reentry_bars_the_known_person(
        make_runtime, store, reentry, barred):
    """Ann finished the journey; her anonymous browser entered it again 4h after she did. Merged,
    they are one person: `never` (or a re-entry window of 1d) ends the moved enrollment, so the
    journey's mail is not sent twice; after `2h` or with `always` she may be in it again."""
    from nurture.runtime import run_tick
    from tests.engine_fixtures import enrollments, journey_yaml, messages, subscriber
    t0 = utc(2026, 3, 2, 10, 0)
    steps = "- id: pause\n  wait: 2h\n- id: hello\n  send: {channel: email, template: hello, subject: Hi}"
    rt = make_runtime({"j": journey_yaml("j", steps, trigger="{event: viewed}", extra=f"reentry: {reentry}")},
                      policies="version: t\ntimezone: UTC\n")
    known = subscriber(store, "ann@example.com")
    add_event(store, known, "viewed", t0)
    run_tick(rt, "j", t0 + dt.timedelta(minutes=1))
    run_tick(rt, "j", t0 + dt.timedelta(hours=3))
    with store.engine.begin() as conn:
        anon, _ = resolve(conn, Who(anonymous_id="a-1"), t0 + dt.timedelta(hours=4))
    add_event(store, anon, "viewed", t0 + dt.timedelta(hours=4))
    run_tick(rt, "j", t0 + dt.timedelta(hours=4, minutes=1))
    with store.engine.begin() as conn:
        assert resolve(conn, Who(anonymous_id="a-1", email="ann@example.com"), t0 + dt.timedelta(hours=5)) == (
            known, anon)
    run_tick(rt, "j", t0 + dt.timedelta(hours=7))
    moved = enrollments(store)[-1]
    assert moved.contact_id == known
    if barred:
        assert (moved.status, moved.exit_reason) == ("exited", MERGED)
        assert [m.contact_id for m in messages(store, status="sent")] == [known]
        assert _rows(store, merge_t)[0].counts["enrollments_exited"] == 1
    else:
        assert moved.status == "completed"
        assert [m.contact_id for m in messages(store, status="sent")] == [known, known]


def test_a_phone_only_contact_from_identify_gets_its_sms(make_runtime, store):
    """End to end: identify (userId + phone, no e-mail), track → the journey's SMS is sent to the phone."""
    from nurture.runtime import run_tick
    from nurture.web.segment_api import apply_messages, read_message
    from tests.engine_fixtures import journey_yaml, messages
    at = utc(2026, 3, 4, 10, 0)
    rt = make_runtime({"j": journey_yaml("j", "- id: text\n  send: {channel: sms, template: hello}")})
    calls = [read_message({"userId": "crm-5", "traits": {"phone": "+49 30 1234567", "firstName": "Ann"}},
                          "identify", at),
             read_message({"userId": "crm-5", "event": "signup", "messageId": "p-1"}, "track", at)]
    with store.engine.begin() as conn:
        result = apply_messages(conn, list(enumerate(calls, 1)), at)
    assert result.inserted == 1
    [contact] = _rows(store, contact_t)
    assert (contact.email, contact.phone, contact.external_id) == (None, "+49301234567", "crm-5")
    set_consent(store, contact.id, "sms", "granted")
    run_tick(rt, "j", at + dt.timedelta(minutes=1))
    [sms] = messages(store, status="sent")
    assert (sms.contact_id, sms.channel, sms.address) == (contact.id, "sms", "+49301234567")
    assert [m["contact"] for m in message_log(store)] == ["+49301234567"]


def test_an_erasure_clears_the_external_id_and_every_identifier(store, tmp_path):
    from nurture.privacy.erase import erase_contacts
    from nurture.registry import IntegrationContext
    from nurture.spec.project import load_project
    from nurture.store.tables import identity_t
    with store.engine.begin() as conn:
        cid, _ = resolve(conn, Who(anonymous_id="a-7", external_id="u-7", email="eve@example.com"), NOW)
    assert _rows(store, identity_t, identity_t.c.contact_id == cid)  # known by several identifiers
    root = write_project(tmp_path / "p", {})
    [result] = erase_contacts(store, load_project(root), [("eve@example.com", cid)],
                              context=IntegrationContext(root, root / ".nurture", {}), actor="test", reason="request")
    assert _rows(store, identity_t, identity_t.c.contact_id == cid) == []
    (row,) = _rows(store, contact_t, contact_t.c.id == cid)
    assert (row.email, row.external_id) == (None, None) and result.removed["identities"] >= 2


def _treated_visitor_and_held_out_subscriber(store, journey):
    """An anonymous visitor whom the stable hash treats in `journey` (50% holdout) and a known
    subscriber whom it holds out."""
    from nurture.runtime.stable_random import in_holdout
    from tests.engine_fixtures import subscriber
    anon = add_contact(store, None)
    while in_holdout(journey, anon, 0.5):
        anon = add_contact(store, None)
    i = 0
    known = subscriber(store, "known0@example.com")
    while not in_holdout(journey, known, 0.5):
        i += 1
        known = subscriber(store, f"known{i}@example.com")
    return anon, known


def test_a_moved_enrollment_nothing_was_done_for_yet_takes_the_known_persons_holdout_group(make_runtime, store):
    """The holdout is stable per person and journey. The visitor entered as treated and was
    still waiting when it turned out to be a subscriber the hash holds out: the moved
    enrollment is held out (its send is a `holdout` row), and so is the person's next entry —
    never both groups of one journey."""
    from nurture.runtime import run_tick
    from tests.engine_fixtures import enrollments, journey_yaml, messages
    t0 = utc(2026, 11, 2, 10)
    rt = make_runtime({"welcome": journey_yaml("welcome", """
        - id: pause
          wait: 1h
        - id: hello
          send: {channel: email, template: hello, subject: Hi}
        """, trigger="{event: visit}", extra="holdout: 50%\nreentry: always")})
    anon, known = _treated_visitor_and_held_out_subscriber(store, "welcome")
    add_event(store, anon, "visit", t0)
    run_tick(rt, "welcome", t0 + dt.timedelta(minutes=1))  # the visitor enters (treated), waiting 1h
    with store.engine.begin() as conn:  # the visitor identifies as the known subscriber
        counts = merge_contacts(conn, anon, known, reason="identify", now=t0 + dt.timedelta(minutes=10))
    run_tick(rt, "welcome", t0 + dt.timedelta(hours=1, minutes=2))
    add_event(store, known, "visit", t0 + dt.timedelta(hours=2))  # the same person comes back
    run_tick(rt, "welcome", t0 + dt.timedelta(hours=2, minutes=1))
    run_tick(rt, "welcome", t0 + dt.timedelta(hours=3, minutes=2))

    assert [bool(e.holdout) for e in enrollments(store, journey="welcome", contact_id=known)] == [True, True]
    assert [(m.contact_id, m.status) for m in messages(store, journey="welcome")] == [(known, "holdout")] * 2
    assert counts.get("enrollments_regrouped") == 1


@pytest.mark.parametrize("first_step", ["send: {channel: email, template: hello, subject: Hi}",
                                        "handover: {sla: 24h}"])
def test_a_moved_enrollment_already_acted_on_keeps_its_holdout_group(make_runtime, store, first_step):
    """Once the visitor's enrollment has a message row (here: its send, skipped for want of an
    address) or a handover row, it went through the journey as treated: that history stays
    what it was, and the report counts it where it went."""
    from nurture.runtime import run_tick
    from tests.engine_fixtures import enrollments, journey_yaml
    t0 = utc(2026, 11, 2, 10)
    rt = make_runtime({"welcome": journey_yaml("welcome", f"""
        - id: first
          {first_step}
        - id: pause
          wait: 1d
        """, trigger="{event: visit}", extra="holdout: 50%\nreentry: always")})
    anon, known = _treated_visitor_and_held_out_subscriber(store, "welcome")
    add_event(store, anon, "visit", t0)
    run_tick(rt, "welcome", t0 + dt.timedelta(minutes=1))  # acted on at its first step, now waiting
    with store.engine.begin() as conn:
        counts = merge_contacts(conn, anon, known, reason="identify", now=t0 + dt.timedelta(minutes=10))
    [moved] = enrollments(store, journey="welcome", contact_id=known)
    assert (moved.status, moved.step_id, bool(moved.holdout), counts.get("enrollments_regrouped", 0)) == (
        "active", "pause", False, 0)


def test_every_verb_that_names_a_contact_finds_whom_the_import_of_the_same_address_made(tmp_path):
    """An address as an SMTP log or bounce shows it (`xn--` domain) and as macOS types it (a
    decomposed ä) is the contact the import stored — for `consent grant` and `preview --contact`
    as for `export-contact`."""
    from tests.test_cli import JOURNEY, nurture
    project = write_project(tmp_path / "shop", {"cart_nudge": JOURNEY})
    contacts = tmp_path / "c.csv"
    contacts.write_text("email,first_name\nuser@bücher.de,Uwe\nänn@example.com,Änn\n", encoding="utf-8")
    nurture(project, "import", "contacts", str(contacts), check=True)
    decomposed = "a\u0308nn@example.com"
    for address in ("user@xn--bcher-kva.de", decomposed):
        out = nurture(project, "consent", "grant", address, "--channel", "email", "--at", "2026-01-01T00:00:00Z")
        assert out.returncode == 0 and "consent granted" in out.stdout, out.stdout + out.stderr
    shown = nurture(project, "preview", "cart_nudge", "--step", "reminder", "--contact", "USER@xn--bcher-kva.de")
    assert shown.returncode == 0 and "Your cart, Uwe" in shown.stdout, shown.stdout + shown.stderr
    unknown = nurture(project, "consent", "grant", "nobody@example.com", "--channel", "email")
    assert unknown.returncode == 1 and "no contact with e-mail nobody@example.com" in unknown.stderr

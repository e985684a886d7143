"""Specification: date triggers (issue 15, item 6). `trigger: {date: birthday, offset: -3d, at:
"09:00", every: year}` enrolls a contact at the local moment computed from a date it holds (an
attribute or a contact date column), in its own time zone: every year (a birthday) or once (a
renewal date), each occurrence exactly once — whatever `reentry` says, on re-runs and with two
workers — and not when it is already past by more than the trigger's lookback.

Policies are the test defaults (time zone UTC). Journeys only wait, so the enrollments are
what is asserted: their trigger time (`entered_at`) and the wait's due time after it."""
from __future__ import annotations

import logging
from datetime import date, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nurture.date_occurrences import due_occurrence, month_days, parse_date_value
from nurture.identities import merge_contacts
from nurture.runtime import run_tick
from nurture.runtime.enroll_dates import enroll_on_dates
from nurture.runtime.sql import insert_ignore
from nurture.spec.models import Journey
from nurture.spec.project import load_project
from nurture.store.tables import enrollment_t
from tests.conftest import utc
from tests.engine_fixtures import add_contact, enrollments, journey_yaml

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
PAUSE = "- {id: pause, wait: 2d}"
BIRTHDAY = '{date: birthday, at: "09:00", every: year}'


def runtime(make_runtime, trigger: str, extra: str = ""):
    return make_runtime({"j": journey_yaml("j", PAUSE, trigger=trigger, extra=extra)})


def person(store, email: str, tz=None, **attributes) -> int:
    return add_contact(store, email, timezone=tz, attributes=attributes)


def entered(store) -> list[tuple[int, object]]:
    return [(e.contact_id, e.entered_at) for e in enrollments(store, journey="j")]


@SQLITE
def test_a_birthday_enrolls_at_0900_local_in_berlin_and_new_york_at_their_exact_utc_instants(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY)
    berlin = person(store, "b@example.com", "Europe/Berlin", birthday="1990-03-14")
    new_york = person(store, "n@example.com", "America/New_York", birthday="1990-03-14")
    run_tick(rt, "j", utc(2027, 3, 14, 7, 59))  # 08:59 in Berlin (CET)
    assert entered(store) == []
    run_tick(rt, "j", utc(2027, 3, 14, 8, 0))  # 09:00 CET
    assert entered(store) == [(berlin, utc(2027, 3, 14, 8, 0))]
    run_tick(rt, "j", utc(2027, 3, 14, 12, 59))  # 08:59 EDT (New York sprang forward that night)
    assert len(entered(store)) == 1
    run_tick(rt, "j", utc(2027, 3, 14, 13, 7))  # the first tick after 09:00 EDT
    assert entered(store) == [(berlin, utc(2027, 3, 14, 8, 0)), (new_york, utc(2027, 3, 14, 13, 0))]
    # the trigger time is the local moment, so the wait after it is exact
    assert [e.next_due_at for e in enrollments(store)] == [utc(2027, 3, 16, 8, 0), utc(2027, 3, 16, 13, 0)]
    assert [e.trigger_key for e in enrollments(store)] == ["2027", "2027"]


@SQLITE
def test_an_offset_of_minus_3d_enrolls_three_days_before_the_date(make_runtime, store):
    rt = runtime(make_runtime, '{date: birthday, offset: -3d, every: year}')  # at: 09:00 by default
    ann = person(store, "a@example.com", birthday="1990-03-14")
    run_tick(rt, "j", utc(2027, 3, 11, 8, 59))
    assert entered(store) == []
    run_tick(rt, "j", utc(2027, 3, 11, 9, 0))
    assert entered(store) == [(ann, utc(2027, 3, 11, 9, 0))]
    assert enrollments(store)[0].trigger_key == "2027"  # the occurrence of the 14th


@SQLITE
def test_a_date_without_every_fires_once_and_never_again(make_runtime, store):
    rt = runtime(make_runtime, '{date: renewal_date, offset: -7d, at: "10:00"}', extra="reentry: always")
    ann = person(store, "a@example.com", renewal_date="2027-06-30")
    run_tick(rt, "j", utc(2027, 6, 23, 10, 0))
    run_tick(rt, "j", utc(2027, 6, 30, 10, 0))  # the journey is over (2d wait), reentry always
    run_tick(rt, "j", utc(2028, 6, 23, 10, 0))  # a year later: the date does not come back
    assert entered(store) == [(ann, utc(2027, 6, 23, 10, 0))]
    assert enrollments(store)[0].trigger_key == "2027-06-30"


@SQLITE
def test_a_birthday_enrolls_again_next_year_even_with_reentry_never(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY, extra="reentry: never")
    ann = person(store, "a@example.com", birthday="1990-03-14")
    run_tick(rt, "j", utc(2027, 3, 14, 9, 0))
    run_tick(rt, "j", utc(2027, 3, 20, 9, 0))  # completes the 2027 entry
    run_tick(rt, "j", utc(2028, 3, 14, 9, 0))
    assert entered(store) == [(ann, utc(2027, 3, 14, 9, 0)), (ann, utc(2028, 3, 14, 9, 0))]
    assert [(e.trigger_key, e.status) for e in enrollments(store)] == [("2027", "completed"), ("2028", "active")]


@SQLITE
def test_an_occurrence_never_enrolls_twice_on_a_rerun_at_the_same_now(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY, extra="reentry: always")
    person(store, "a@example.com", birthday="1990-03-14")
    for now in (utc(2027, 3, 14, 9, 0), utc(2027, 3, 14, 9, 0), utc(2027, 3, 14, 9, 5)):
        run_tick(rt, "j", now)
    run_tick(rt, "j", utc(2027, 3, 14, 18, 0))
    assert run_tick(rt, "j", utc(2027, 3, 14, 18, 0)).stages["enrolled"] == 0
    assert len(enrollments(store)) == 1


@SQLITE
def test_feb_29_fires_on_feb_28_in_a_non_leap_year_and_on_feb_29_in_a_leap_year(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY)
    leap = person(store, "l@example.com", birthday="2000-02-29")
    run_tick(rt, "j", utc(2027, 2, 28, 9, 0))
    run_tick(rt, "j", utc(2027, 3, 5, 9, 0))
    run_tick(rt, "j", utc(2028, 2, 28, 9, 0))  # 2028 is a leap year: not yet
    assert entered(store) == [(leap, utc(2027, 2, 28, 9, 0))]
    run_tick(rt, "j", utc(2028, 2, 29, 9, 0))
    assert entered(store)[-1] == (leap, utc(2028, 2, 29, 9, 0))


@SQLITE
def test_a_time_in_the_spring_forward_gap_fires_at_the_same_wall_time_after_the_gap(make_runtime, store):
    # New York, 2027-03-14: clocks jump from 02:00 to 03:00; 02:30 does not exist that night
    rt = runtime(make_runtime, '{date: birthday, at: "02:30", every: year}')
    ann = person(store, "a@example.com", "America/New_York", birthday="1990-03-14")
    run_tick(rt, "j", utc(2027, 3, 14, 7, 29))
    assert entered(store) == []
    run_tick(rt, "j", utc(2027, 3, 14, 7, 30))  # 03:30 EDT
    assert entered(store) == [(ann, utc(2027, 3, 14, 7, 30))]


@SQLITE
def test_a_value_that_is_not_a_date_is_skipped_counted_once_and_the_tick_goes_on(make_runtime, store, caplog):
    rt = runtime(make_runtime, BIRTHDAY)
    person(store, "w@example.com", birthday="March 14")
    person(store, "n@example.com", birthday=19900314)
    person(store, "none@example.com")
    good = person(store, "g@example.com", birthday="1990-03-14T23:30:00+02:00")  # a datetime: its date
    with caplog.at_level(logging.WARNING, logger="nurture.runtime.enroll_dates"):
        report = run_tick(rt, "j", utc(2027, 3, 14, 9, 0))
    assert report.stages["enrolled"] == 1 and entered(store) == [(good, utc(2027, 3, 14, 9, 0))]
    warnings = [r.getMessage() for r in caplog.records if "not a date" in r.getMessage()]
    assert len(warnings) == 1 and "2 contact(s) have a birthday that is not a date" in warnings[0]
    assert enroll_on_dates(rt, rt.plan("j"), utc(2027, 3, 14, 9, 5)).not_a_date == 2


@SQLITE
def test_a_new_journey_does_not_congratulate_birthdays_past_its_lookback(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY)
    today = person(store, "t@example.com", birthday="1990-03-14")
    person(store, "y@example.com", birthday="1990-03-13")  # yesterday 09:00: 25 hours ago
    person(store, "m@example.com", birthday="1990-02-14")  # last month
    run_tick(rt, "j", utc(2027, 3, 14, 10, 0))
    assert entered(store) == [(today, utc(2027, 3, 14, 9, 0))]


@SQLITE
def test_a_longer_lookback_catches_up_on_the_days_it_covers(make_runtime, store):
    rt = runtime(make_runtime, '{date: birthday, every: year, lookback: 3d}')
    yesterday = person(store, "y@example.com", birthday="1990-03-13")
    person(store, "w@example.com", birthday="1990-03-01")
    run_tick(rt, "j", utc(2027, 3, 14, 10, 0))
    assert entered(store) == [(yesterday, utc(2027, 3, 13, 9, 0))]


@SQLITE
def test_the_anniversary_of_a_signup_reads_created_at_in_the_contacts_own_day(make_runtime, store):
    rt = runtime(make_runtime, '{date: created_at, every: year}')
    # 22:30 UTC on May 1 is May 2 in Tokyo: the anniversary is May 2, 09:00 JST = 00:00 UTC
    tokyo = add_contact(store, "t@example.com", timezone="Asia/Tokyo", at=utc(2025, 5, 1, 22, 30))
    run_tick(rt, "j", utc(2026, 5, 1, 23, 59))
    assert entered(store) == []
    run_tick(rt, "j", utc(2026, 5, 2, 0, 0))
    assert entered(store) == [(tokyo, utc(2026, 5, 2, 0, 0))]


@SQLITE
def test_where_limits_a_date_trigger_to_the_contacts_it_matches(make_runtime, store):
    rt = runtime(make_runtime, '{date: birthday, every: year, where: {attribute: {plan: pro}}}')
    pro = person(store, "p@example.com", birthday="1990-03-14", plan="pro")
    person(store, "f@example.com", birthday="1990-03-14", plan="free")
    run_tick(rt, "j", utc(2027, 3, 14, 9, 0))
    assert entered(store) == [(pro, utc(2027, 3, 14, 9, 0))]


def test_date_keys_are_left_out_of_the_dump_of_other_triggers_so_versions_do_not_change():
    spec = {"name": "j", "trigger": {"event": "signup"}, "steps": [{"id": "a", "wait": "1h"}]}
    assert set(Journey.model_validate(spec).model_dump(mode="json")["trigger"]) == {
        "event", "segment", "when", "where", "lookback"}


@pytest.mark.parametrize("trigger, expected", [
    ("{date: email, every: year}",
     "journeys/j.yaml:2:17: 'email' is a contact column that holds no date: name a date attribute "
     "(e.g. birthday) or one of the date columns created_at, updated_at"),
    ("{date: birthday, offset: 3x}",
     "journeys/j.yaml:2:35: '3x' is not an offset: write a signed duration, e.g. -3d (three days before "
     "the date), +1d (one day after) or -2h"),
    ("{date: birthday, every: month}",
     "journeys/j.yaml:2:34: 'month' is not allowed here: expected 'year'"),
    ('{date: birthday, at: "9am"}',
     "journeys/j.yaml:2:31: '9am' is not a time of day: write it as \"HH:MM\", e.g. \"08:00\""),
    ("{date: birthday, event: signup}",
     "journeys/j.yaml:2:10: a trigger has exactly one of: event, segment, when, date (found event, date)"),
    ('{event: signup, at: "09:00"}',
     "journeys/j.yaml:2:10: at belongs to a date trigger (trigger: {date: birthday, offset: -3d, "
     "at: \"09:00\", every: year})"),
    ("{date: birthday, where: {property: {cart_value: 1}}}",
     "journeys/j.yaml:2:10: a date trigger has no event: its 'where' can test the contact (attribute, "
     "segment, …), not an event 'property'"),
])
def test_a_bad_date_trigger_is_a_located_error(make_project, trigger, expected):
    spec = load_project(make_project({"j": journey_yaml("j", PAUSE, trigger=trigger)}))
    assert [str(e) for e in spec.errors] == [expected]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgresql_the_migrated_unique_key_drops_a_second_workers_insert_of_an_occurrence(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY)
    ann = person(store, "a@example.com", "Europe/Berlin", birthday="1990-03-14")
    run_tick(rt, "j", utc(2027, 3, 14, 8, 0))
    run_tick(rt, "j", utc(2027, 3, 14, 8, 0))
    [row] = enrollments(store)
    assert (row.contact_id, row.entered_at, row.trigger_key) == (ann, utc(2027, 3, 14, 8, 0), "2027")
    copy = {c.name: getattr(row, c.name) for c in enrollment_t.columns if c.name != "id"}
    with store.engine.begin() as conn:  # a second worker that read before the first one committed
        insert_ignore(conn, enrollment_t, [copy], ("journey", "contact_id", "trigger_key"))
    assert len(enrollments(store)) == 1
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(enrollment_t.insert().values(**copy))
    with store.engine.connect() as conn:  # other triggers' rows (no key) never clash
        conn.execute(enrollment_t.insert(), [{**copy, "trigger_key": None}, {**copy, "trigger_key": None}])
        assert conn.execute(select(enrollment_t.c.id).where(enrollment_t.c.trigger_key.is_(None))).all()
        conn.rollback()


NY, TOKYO = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")


@pytest.mark.parametrize("anchor, yearly, offset, at, tz, now, expected", [
    # a birthday on Jan 1, three days before: Dec 29 of the year before, the occurrence of 2027
    (date(1990, 1, 1), True, timedelta(days=-3), time(9), TOKYO, utc(2026, 12, 29, 0, 0),
     ("2027", utc(2026, 12, 29, 0, 0))),
    (date(1990, 1, 1), True, timedelta(days=-3), time(9), TOKYO, utc(2026, 12, 28, 23, 59), None),
    # the autumn night repeats 01:30 in New York: the first one (EDT)
    (date(1990, 11, 7), True, timedelta(0), time(1, 30), NY, utc(2027, 11, 7, 6, 0), ("2027", utc(2027, 11, 7, 5, 30))),
    # -2h on the wall clock
    (date(2027, 6, 30), False, timedelta(hours=-2), time(9), NY, utc(2027, 6, 30, 11, 0),
     ("2027-06-30", utc(2027, 6, 30, 11, 0))),
    # once: a year later is long past the lookback
    (date(2026, 6, 30), False, timedelta(0), time(9), NY, utc(2027, 6, 30, 13, 0), None),
])
def test_due_occurrence(anchor, yearly, offset, at, tz, now, expected):
    got = due_occurrence(anchor, yearly=yearly, offset=offset, at=at, tz=tz, now=now, lookback=timedelta(days=1))
    assert (None if got is None else (got.key, got.moment)) == expected


@pytest.mark.parametrize("value, expected", [
    ("1990-03-14", date(1990, 3, 14)), ("1990-03-14T23:30:00+02:00", date(1990, 3, 14)),
    ("1990-03-14 08:00", date(1990, 3, 14)), ("2023-02-30", None), ("March 14", None), (19900314, None),
    ("14/03/1990", None), ("", None),
])
def test_parse_date_value(value, expected):
    assert parse_date_value(value) == expected


def test_the_prefilter_window_holds_feb_29_with_a_non_leap_feb_28_and_nothing_for_a_whole_year():
    assert month_days(date(2027, 2, 27), date(2027, 3, 1)) == ["02-27", "02-28", "02-29", "03-01"]
    assert month_days(date(2028, 2, 28), date(2028, 2, 29)) == ["02-28", "02-29"]
    assert month_days(date(2027, 1, 1), date(2028, 1, 1)) is None


@SQLITE
def test_merging_two_contacts_congratulated_for_the_same_birthday_keeps_one_key(make_runtime, store):
    rt = runtime(make_runtime, BIRTHDAY)
    ann = person(store, "a@example.com", birthday="1990-03-14")
    twin = person(store, "a2@example.com", birthday="1990-03-14")
    run_tick(rt, "j", utc(2027, 3, 14, 9, 0))
    with store.engine.begin() as conn:
        merge_contacts(conn, twin, ann, reason="test", now=utc(2027, 3, 14, 10, 0))
    assert [(e.contact_id, e.trigger_key) for e in enrollments(store)] == [(ann, "2027"), (ann, None)]
    run_tick(rt, "j", utc(2027, 3, 14, 11, 0))
    assert len(enrollments(store)) == 2


def test_a_signup_day_is_not_its_own_anniversary_but_the_next_year_is(make_runtime, store):
    """`date: created_at, every: year` is the anniversary of a signup (docs/triggers.md): a contact
    who signs up at 09:30 must not enter the 09:00 anniversary journey that same day (entered
    "before it existed"); one who signed up a year earlier enters with key 2027."""
    rt = make_runtime({"j": journey_yaml("j", "- {id: pause, wait: 2d}",
                                         trigger='{date: created_at, at: "09:00", every: year}')})
    add_contact(store, "new@example.com", at=utc(2027, 3, 14, 9, 30))
    old = add_contact(store, "old@example.com", at=utc(2026, 3, 14, 8, 0))
    run_tick(rt, "j", utc(2027, 3, 14, 10, 0))
    assert [(e.contact_id, e.trigger_key) for e in enrollments(store, journey="j")] == [(old, "2027")]
    # an attribute's date still occurs in its own year (a renewal on that day)
    assert due_occurrence(date(2027, 3, 14), yearly=True, offset=timedelta(0), at=time(9), tz=ZoneInfo("UTC"),
                          now=utc(2027, 3, 14, 10, 0), lookback=timedelta(days=1)).key == "2027"

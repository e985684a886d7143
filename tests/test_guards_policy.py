"""Specification of the pure policy logic behind the send pipeline, table-driven: quiet hours in
the recipient's zone (daylight-saving days, half-hour and 45-minute zones), rolling frequency
caps, consent and suppression verdicts, reachability."""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nurture.send.guards.consent import consent_refusal
from nurture.send.guards.frequency_cap import Cap, cap_blocks_until
from nurture.send.guards.quiet_hours import QuietWindow, next_allowed_send, zone
from nurture.send.guards.reachability import unreachable_reason
from nurture.send.guards.suppression import suppression_reason
from tests.conftest import utc

NIGHT = QuietWindow.parse("21:00", "08:00")


def local(tz: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz))


QUIET_CASES = [
    # (name, due, zone, window, expected UTC)
    ("due_at_2130_in_kathmandu_waits_until_0800_local", local("Asia/Kathmandu", 2026, 3, 4, 21, 30), "Asia/Kathmandu",
     NIGHT, utc(2026, 3, 5, 2, 15)),
    ("due_at_2200_in_kolkata_waits_until_0800_local", local("Asia/Kolkata", 2026, 3, 4, 22, 0), "Asia/Kolkata",
     NIGHT, utc(2026, 3, 5, 2, 30)),
    ("due_at_0500_in_berlin_waits_until_0800_the_same_morning", local("Europe/Berlin", 2026, 3, 4, 5, 0),
     "Europe/Berlin", NIGHT, utc(2026, 3, 4, 7, 0)),
    ("berlin_night_into_spring_forward_ends_at_0800_cest", local("Europe/Berlin", 2026, 3, 28, 22, 0),
     "Europe/Berlin", NIGHT, utc(2026, 3, 29, 6, 0)),
    ("berlin_night_into_fall_back_ends_at_0800_cet", local("Europe/Berlin", 2026, 10, 24, 23, 0),
     "Europe/Berlin", NIGHT, utc(2026, 10, 25, 7, 0)),
    ("new_york_night_into_spring_forward_ends_at_0800_edt", local("America/New_York", 2026, 3, 7, 22, 0),
     "America/New_York", NIGHT, utc(2026, 3, 8, 12, 0)),
    ("new_york_night_into_fall_back_ends_at_0800_est", local("America/New_York", 2026, 10, 31, 23, 0),
     "America/New_York", NIGHT, utc(2026, 11, 1, 13, 0)),
    ("adelaide_summer_time_plus_1030", local("Australia/Adelaide", 2026, 3, 4, 23, 0), "Australia/Adelaide",
     NIGHT, utc(2026, 3, 4, 21, 30)),
    ("adelaide_winter_time_plus_0930", local("Australia/Adelaide", 2026, 7, 1, 23, 0), "Australia/Adelaide",
     NIGHT, utc(2026, 7, 1, 22, 30)),
    ("chatham_summer_time_plus_1345", local("Pacific/Chatham", 2026, 3, 4, 22, 0), "Pacific/Chatham",
     NIGHT, utc(2026, 3, 4, 18, 15)),
    ("starts_exactly_at_2100", local("Europe/Berlin", 2026, 3, 4, 21, 0), "Europe/Berlin",
     NIGHT, utc(2026, 3, 5, 7, 0)),
    ("a_window_end_in_the_spring_forward_gap_opens_after_the_gap", local("Europe/Berlin", 2026, 3, 29, 1, 0),
     "Europe/Berlin", QuietWindow.parse("22:00", "02:30"), utc(2026, 3, 29, 1, 30)),
    ("a_daytime_window", local("Europe/Berlin", 2026, 3, 4, 13, 0), "Europe/Berlin",
     QuietWindow.parse("12:00", "14:00"), utc(2026, 3, 4, 13, 0)),
    # When clocks go back, 02:00-03:00 comes twice in Berlin: 02:10 of the second pass (CET,
    # 01:10 UTC) is inside a window ending 02:30 too — it was sent, the end's first occurrence
    # (02:30 CEST, 00:30 UTC) being already past. It waits for 02:30 CET.
    ("the_repeated_hour_when_clocks_go_back_is_quiet_both_times", utc(2026, 10, 25, 1, 10), "Europe/Berlin",
     QuietWindow.parse("01:00", "02:30"), utc(2026, 10, 25, 1, 30)),
    ("its_first_pass_waits_for_the_first_end", utc(2026, 10, 25, 0, 10), "Europe/Berlin",
     QuietWindow.parse("01:00", "02:30"), utc(2026, 10, 25, 0, 30)),
    ("new_york_overnight_window_ending_in_the_repeated_hour", utc(2026, 11, 1, 6, 10), "America/New_York",
     QuietWindow.parse("22:00", "01:30"), utc(2026, 11, 1, 6, 30)),
    # The window is [start, end): due at the very instant of its first end (01:30 EDT), it has
    # ended — the repeated hour makes it quiet again only from 01:00 EST on.
    ("due_at_the_first_end_in_the_repeated_hour_goes_now", utc(2026, 11, 1, 5, 30), "America/New_York",
     QuietWindow.parse("22:00", "01:30"), utc(2026, 11, 1, 5, 30)),
]


@pytest.mark.parametrize("due, tz, window, expected", [c[1:] for c in QUIET_CASES], ids=[c[0] for c in QUIET_CASES])
def test_a_message_due_in_quiet_hours_waits_for_the_end_of_the_window(due, tz, window, expected):
    assert next_allowed_send(due.astimezone(ZoneInfo("UTC")), ZoneInfo(tz), window) == expected


@pytest.mark.parametrize("due, tz", [
    (local("Europe/Berlin", 2026, 3, 4, 8, 0), "Europe/Berlin"),  # the window has just ended
    (local("Europe/Berlin", 2026, 3, 4, 20, 59), "Europe/Berlin"),
    (local("Asia/Kathmandu", 2026, 3, 4, 12, 0), "Asia/Kathmandu"),
    (local("America/New_York", 2026, 3, 8, 9, 0), "America/New_York"),  # the spring-forward day
])
def test_a_message_due_outside_quiet_hours_goes_now(due, tz):
    due = due.astimezone(ZoneInfo("UTC"))
    assert next_allowed_send(due, ZoneInfo(tz), NIGHT) == due


def test_no_window_means_no_deferral():
    assert next_allowed_send(utc(2026, 3, 4, 23, 0), ZoneInfo("UTC"), None) == utc(2026, 3, 4, 23, 0)


@pytest.mark.parametrize("name, fallback, expected", [
    ("Asia/Kathmandu", "UTC", "Asia/Kathmandu"),
    (None, "Europe/Berlin", "Europe/Berlin"),  # no zone: the policy's
    ("Mars/Olympus", "Europe/Berlin", "Europe/Berlin"),  # a broken zone: the policy's
    # a folder of the zone database (IsADirectoryError) and a name too long for a file
    # (OSError) raised instead, and stopped the whole batch of a tick on every tick
    ("Europe", "Europe/Berlin", "Europe/Berlin"),
    ("x" * 300, "Europe/Berlin", "Europe/Berlin"),
    (None, None, "UTC"),
])
def test_the_contact_zone_falls_back_to_the_policy_zone(name, fallback, expected):
    assert zone(name, fallback) == ZoneInfo(expected)


# ---------------------------------------------------------------- frequency caps

NOW = utc(2026, 3, 4, 12, 0)
EMAIL_2_PER_DAY = Cap("email", 2, timedelta(days=1))
ANY_3_PER_WEEK = Cap("any", 3, timedelta(days=7))


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


CAP_CASES = [
    ("no_history_no_block", [], "email", [EMAIL_2_PER_DAY], None),
    ("one_below_the_cap", [("email", ago(2))], "email", [EMAIL_2_PER_DAY], None),
    ("at_the_cap_waits_until_the_oldest_leaves_the_window", [("email", ago(20)), ("email", ago(2))], "email",
     [EMAIL_2_PER_DAY], NOW + timedelta(hours=4)),
    ("messages_older_than_the_window_do_not_count", [("email", ago(30)), ("email", ago(2))], "email",
     [EMAIL_2_PER_DAY], None),
    ("other_channels_do_not_count_for_a_channel_cap", [("sms", ago(1)), ("sms", ago(2))], "email",
     [EMAIL_2_PER_DAY], None),
    ("every_channel_counts_for_the_overall_cap", [("sms", ago(100)), ("email", ago(50)), ("sms", ago(1))], "email",
     [EMAIL_2_PER_DAY, ANY_3_PER_WEEK], NOW + timedelta(days=7) - timedelta(hours=100)),
    ("the_latest_opening_of_all_caps_wins", [("email", ago(23)), ("email", ago(22)), ("email", ago(21))], "email",
     [EMAIL_2_PER_DAY, ANY_3_PER_WEEK], NOW + timedelta(days=7) - timedelta(hours=23)),
    ("a_cap_of_zero_blocks_and_is_looked_at_again_one_window_later", [], "sms", [Cap("sms", 0, timedelta(days=1))],
     NOW + timedelta(days=1)),
    # rolling: a message sent exactly one window ago has just left it (the time a deferral named)
    ("a_message_exactly_one_window_old_no_longer_counts", [("email", ago(24)), ("email", ago(2))], "email",
     [EMAIL_2_PER_DAY], None),
    # already over the cap (a cap tightened since): room opens when enough have left, not the oldest
    ("over_the_cap_waits_until_enough_have_left_not_just_the_oldest",
     [("email", ago(20)), ("email", ago(10)), ("email", ago(2))], "email",
     [EMAIL_2_PER_DAY], NOW + timedelta(hours=14)),
]


@pytest.mark.parametrize("history, channel, caps, expected", [c[1:] for c in CAP_CASES], ids=[c[0] for c in CAP_CASES])
def test_frequency_cap_over_a_rolling_window(history, channel, caps, expected):
    assert cap_blocks_until(history, channel, NOW, caps) == expected


# ---------------------------------------------------------------- consent, suppression, reachability

CONFIRMED = ("granted", utc(2026, 1, 1))
UNCONFIRMED = ("granted", None)


@pytest.mark.parametrize("state, purpose, double_opt_in, expected", [
    (CONFIRMED, "marketing", True, None),
    (UNCONFIRMED, "marketing", False, None),
    (UNCONFIRMED, "marketing", True, "not_double_opted_in"),
    (("pending", None), "marketing", False, "consent_pending"),
    (("revoked", None), "marketing", False, "consent_revoked"),
    (None, "marketing", False, "no_consent"),
    (None, "transactional", True, None),  # transactional needs no marketing consent
    (("pending", None), "transactional", True, None),
    (("revoked", None), "transactional", False, "consent_revoked"),
])
def test_consent_verdict(state, purpose, double_opt_in, expected):
    assert consent_refusal(state, purpose, double_opt_in) == expected


@pytest.mark.parametrize("entries, channel, purpose, expected", [
    ([], "email", "marketing", None),
    ([(None, "unsubscribed")], "email", "marketing", "unsubscribed"),
    ([(None, "unsubscribed")], "email", "transactional", None),  # an unsubscribe ends marketing only
    ([("email", "hard_bounce")], "email", "transactional", "hard_bounce"),
    ([("email", "complaint")], "email", "marketing", "complaint"),
    ([("sms", "sms_stop")], "email", "marketing", None),  # STOP on SMS does not stop e-mail
    ([("sms", "sms_stop")], "sms", "transactional", "sms_stop"),
    ([(None, "manual")], "sms", "marketing", "manual"),
])
def test_suppression_verdict(entries, channel, purpose, expected):
    assert suppression_reason(entries, channel, purpose) == expected


@pytest.mark.parametrize("channel, email, phone, expected", [
    ("email", "ann@example.com", None, None),
    ("email", None, "+4915112345678", "no_email"),
    ("email", "not-an-address", None, "invalid_email"),
    ("sms", "ann@example.com", None, "no_phone"),
    ("sms", None, "+4915112345678", None),
    ("sms", None, "015112345678", "invalid_phone"),
    ("email", "ann@localhost", None, "invalid_email"),  # no domain a mailbox provider delivers to
    ("sms", None, "+123456789012345", None),  # E.164's longest: 15 digits
    ("sms", None, "+1234567890123456", "invalid_phone"),
    ("whatsapp", None, "+123456789012345", None),
])
def test_reachability(channel, email, phone, expected):
    assert unreachable_reason(channel, email, phone) == expected


def test_wait_until_a_time_in_the_repeated_hour_takes_its_second_showing_that_night():
    """Berlin, 2026-10-25, clocks go back 03:00 CEST -> 02:00 CET: arriving at 02:45 CEST, the
    clock shows 02:30 again at 02:30 CET (01:30 UTC) — not a day later."""
    from datetime import time
    from zoneinfo import ZoneInfo

    from nurture.send.guards.quiet_hours import next_local_time
    berlin = ZoneInfo("Europe/Berlin")
    assert next_local_time(utc(2026, 10, 25, 0, 45), berlin, time(2, 30)) == utc(2026, 10, 25, 1, 30)
    assert next_local_time(utc(2026, 10, 25, 0, 15), berlin, time(2, 30)) == utc(2026, 10, 25, 0, 30)  # its first
    assert next_local_time(utc(2026, 10, 25, 1, 45), berlin, time(2, 30)) == utc(2026, 10, 26, 1, 30)  # both past
    assert next_local_time(utc(2026, 3, 29, 0, 45), berlin, time(2, 30)) == utc(2026, 3, 29, 1, 30)  # the gap: 03:30

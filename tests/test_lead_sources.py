"""Specification: lead sources (issue 12, item 3). Every tracked event's UTM parameters and click
ids are kept — from its properties, or from the page URL it was on (never the referrer) — and
each contact has a first and a last touch: the earliest and the latest event that carried any,
whatever order the events arrive in, re-sent events changing nothing. A click id without
utm_source implies its ad platform; an explicit utm_source/utm_medium wins. Contact imports set
the touch from their utm_* columns. An erasure deletes the touches; an export lists them.
On SQLite and PostgreSQL."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy import select

from nurture import sources
from nurture.ingest import import_contacts, track_file, track_records
from nurture.privacy.erase import erase_emails
from nurture.privacy.export import export_contact
from nurture.registry import IntegrationContext
from nurture.runtime import run_tick
from nurture.sources import Touch, extract_touch
from nurture.store.tables import contact_t, event_t, touch_t
from tests.conftest import utc
from tests.engine_fixtures import enrollments, journey_yaml
from tests.test_web_webhooks import INGEST, site, twilio  # noqa: F401  (the served web app)

NOW = utc(2026, 3, 4, 10, 0)


def touch_of(properties: Any) -> Optional[Touch]:
    return extract_touch(properties).touch


def event(event_id: str, at: str, email: str = "ann@example.com", name: str = "view_page", **properties: Any) -> dict:
    return {"event_id": event_id, "email": email, "event": name, "properties": properties, "timestamp": at}


def track(store, tmp_path: Path, events: list[dict], name: str = "events.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    return track_file(store, path, now=NOW)


def touches(store, email: str = "ann@example.com") -> dict[str, dict]:
    """The contact's touches by kind: {"first": {source, medium, …, event_id, occurred_at}, "last": …}."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(touch_t, event_t.c.event_id).join(contact_t, contact_t.c.id == touch_t.c.contact_id)
                            .outerjoin(event_t, event_t.c.id == touch_t.c.event_pk)
                            .where(contact_t.c.email == email)).all()
        conn.rollback()
    return {r.touch: {k: v for k, v in r._mapping.items() if k not in ("contact_id", "touch", "event_pk")}
            for r in rows}


def summary(store, email: str = "ann@example.com") -> dict[str, tuple]:
    """(source, medium, campaign, event_id) per touch kind."""
    return {kind: (t["source"], t["medium"], t["campaign"], t["event_id"]) for kind, t in touches(store, email).items()}


def stored_properties(store, event_id: str) -> dict:
    with store.engine.connect() as conn:
        value = conn.execute(select(event_t.c.properties).where(event_t.c.event_id == event_id)).scalar_one()
        conn.rollback()
    return value


# ---------------------------------------------------------------- reading a touch (pure)


def test_utm_properties_make_a_touch_with_source_and_medium_lowercased_and_the_rest_kept_as_sent():
    assert touch_of({"utm_source": " Google ", "utm_medium": "CPC", "utm_campaign": " Spring Sale ",
                     "utm_content": "Banner A", "utm_term": "Cold Brew"}) == \
        Touch(source="google", medium="cpc", campaign="Spring Sale", content="Banner A", term="Cold Brew")


def test_utms_are_read_from_the_page_url_among_other_parameters_with_escapes_decoded():
    found = extract_touch({"url": "https://shop.example/p/7?ref=abc&utm_source=News%20Letter&utm_medium=email"
                                  "&utm_campaign=Black+Friday%26More&page=2#top", "sku": "COF-1"})
    assert found.touch == Touch(source="news letter", medium="email", campaign="Black Friday&More")
    assert found.from_url == {"utm_source": "news letter", "utm_medium": "email", "utm_campaign": "Black Friday&More"}


@pytest.mark.parametrize("properties, source", [
    ({"page_url": "https://a.example/?utm_source=page_url"}, "page_url"),
    ({"landing_page": "/welcome?utm_source=landing"}, "landing"),  # a path is a URL too
    ({"page": "https://a.example/x?utm_source=page_string"}, "page_string"),
    ({"page": {"url": "https://a.example/x?utm_source=page_object", "title": "X"}}, "page_object"),
    ({"url": "https://a.example/no-query", "page_url": "https://a.example/?utm_source=second"}, "second"),
])
def test_the_first_url_property_holding_a_url_with_parameters_is_read(properties, source):
    assert touch_of(properties).source == source


def test_a_page_name_is_not_a_url_and_a_referrer_never_sets_the_source():
    assert touch_of({"page": "Pricing?utm_source=x"}) is None
    assert touch_of({"referrer": "https://news.example/?utm_source=news&gclid=abc"}) is None
    landing = touch_of({"referrer": "https://news.example/?utm_source=news",
                        "url": "https://shop.example/?utm_source=ads"})
    assert landing.source == "ads"


@pytest.mark.parametrize("click_id, source, medium", [
    ("gclid", "google", "cpc"), ("gbraid", "google", "cpc"), ("wbraid", "google", "cpc"),
    ("msclkid", "bing", "cpc"), ("fbclid", "facebook", "paid_social"), ("ttclid", "tiktok", "paid_social"),
    ("li_fat_id", "linkedin", "paid_social"),
])
def test_a_click_id_without_utm_source_implies_its_platform_and_is_kept(click_id, source, medium):
    assert touch_of({click_id: "Cj0KCQ-abc_123"}) == Touch(source=source, medium=medium, click_id_type=click_id,
                                                          click_id="Cj0KCQ-abc_123")
    from_url = touch_of({"url": f"https://shop.example/?{click_id}=Cj0KCQ-abc_123"})
    assert (from_url.source, from_url.medium, from_url.click_id) == (source, medium, "Cj0KCQ-abc_123")


def test_an_explicit_utm_source_and_medium_win_over_the_click_id():
    assert touch_of({"gclid": "g1", "utm_source": "Newsletter"}) == \
        Touch(source="newsletter", medium=None, click_id_type="gclid", click_id="g1")  # no cpc for a newsletter
    assert touch_of({"gclid": "g1", "utm_source": "google"}).medium == "cpc"  # the platform's own: implied
    assert touch_of({"fbclid": "f1", "utm_medium": "social"}) == \
        Touch(source="facebook", medium="social", click_id_type="fbclid", click_id="f1")
    assert touch_of({"fbclid": "f1", "gclid": "g1"}).click_id_type == "gclid"  # the table's order decides


def test_a_property_wins_over_the_url_parameter_of_the_same_name_and_the_url_fills_the_rest():
    found = extract_touch({"utm_source": "partner", "url": "https://a.example/?utm_source=google&utm_campaign=spring"})
    assert found.touch == Touch(source="partner", campaign="spring")
    assert found.from_url == {"utm_campaign": "spring"}


@pytest.mark.parametrize("properties", [
    {}, {"sku": "COF-1", "cart_value": 37.8}, {"url": "https://shop.example/p/7?ref=x"}, {"campaign": "spring"},
    {"utm_source": ""}, {"utm_source": "   "},
])
def test_an_event_with_neither_utm_parameter_nor_click_id_is_not_a_touch(properties):
    assert extract_touch(properties) == sources.NO_TOUCH


@pytest.mark.parametrize("properties, expected", [
    ({"utm_source": 42, "utm_medium": ["cpc"], "utm_campaign": {"a": 1}, "gclid": True}, None),
    ({"url": 17, "page": ["https://a.example/?utm_source=x"]}, None),
    ({"url": "http://[::1?utm_source=x"}, None),  # not a URL after all
    ({"url": "https://a.example/?utm_source=a%00b%0D%0ASet-Cookie:x"}, Touch(source="a b set-cookie:x")),
    ({"utm_source": "s" * 5000}, Touch(source="s" * sources.MAX_VALUE_LENGTH)),
    ({"gclid": "g" * (sources.MAX_CLICK_ID_LENGTH + 1)}, None),  # a cut click id matches nothing: ignored
    ({"gclid": "two words", "utm_source": "x"}, Touch(source="x")),
])
def test_hostile_values_are_ignored_or_cleaned_never_an_error(properties, expected):
    assert touch_of(properties) == expected


# ---------------------------------------------------------------- first and last touch (store)


def test_first_and_last_touch_follow_the_event_times_across_out_of_order_files(store, tmp_path):
    track(store, tmp_path, [
        event("e3", "2026-03-03T09:00:00Z", utm_source="newsletter", utm_medium="email", utm_campaign="march"),
        event("e0", "2026-03-03T08:00:00Z", cart_value=10),  # no touch: changes nothing
        event("e2", "2026-03-02T09:00:00Z", url="https://shop.example/?gclid=G2&utm_campaign=brand"),
    ], "monday.jsonl")
    assert summary(store) == {"first": ("google", "cpc", "brand", "e2"), "last": ("newsletter", "email", "march", "e3")}

    track(store, tmp_path, [
        event("e4", "2026-03-04T09:00:00Z", fbclid="F4"),  # later: the new last
        event("e1", "2026-03-01T09:00:00Z", utm_source="partner"),  # earlier: the new first
        event("e25", "2026-03-02T12:00:00Z", utm_source="in_between"),  # neither
    ], "late.jsonl")
    assert summary(store) == {"first": ("partner", None, None, "e1"), "last": ("facebook", "paid_social", None, "e4")}
    last = touches(store)["last"]
    assert (last["click_id_type"], last["click_id"], last["occurred_at"]) == ("fbclid", "F4", utc(2026, 3, 4, 9))


def test_events_at_the_same_moment_the_first_in_the_file_is_first_and_the_last_is_last(store, tmp_path):
    at = "2026-03-02T09:00:00Z"
    track(store, tmp_path, [event("a", at, utm_source="one"), event("b", at, utm_source="two"),
                            event("c", at, utm_source="three")])
    assert summary(store) == {"first": ("one", None, None, "a"), "last": ("three", None, None, "c")}
    track(store, tmp_path, [event("d", at, utm_source="four")], "again.jsonl")  # same moment, later call
    assert summary(store) == {"first": ("one", None, None, "a"), "last": ("four", None, None, "d")}


def test_a_re_sent_event_stores_nothing_and_changes_no_touch(store, tmp_path):
    track(store, tmp_path, [event("e1", "2026-03-02T09:00:00Z", utm_source="first_seen"),
                            event("e2", "2026-03-03T09:00:00Z", utm_source="last_seen")])
    before = touches(store)
    result = track(store, tmp_path, [
        event("e1", "2026-01-01T00:00:00Z", utm_source="rewritten_earlier"),  # same event_id: a duplicate
        event("e2", "2026-12-31T00:00:00Z", utm_source="rewritten_later"),
        event("e2", "2026-12-31T00:00:00Z", utm_source="twice_in_one_file"),
    ], "resent.jsonl")
    assert (result.inserted, result.duplicates) == (0, 3)
    assert touches(store) == before


def test_each_contact_gets_its_own_first_and_last_touch_in_one_batch(store, tmp_path):
    events = []
    for i in range(30):  # 3 contacts, their events interleaved and shuffled in time
        events.append(event(f"e{i}", (datetime(2026, 3, 1, 12) + timedelta(hours=(i * 7) % 30)).isoformat() + "Z",
                            email=f"c{i % 3}@example.com", utm_source=f"s{i}"))
    track(store, tmp_path, events)
    for c in range(3):
        mine = [e for e in events if e["email"] == f"c{c}@example.com"]
        earliest = min(mine, key=lambda e: e["timestamp"])
        latest = max(mine, key=lambda e: e["timestamp"])
        got = summary(store, f"c{c}@example.com")
        assert (got["first"][3], got["last"][3]) == (earliest["event_id"], latest["event_id"])


def test_url_parameters_are_added_to_the_stored_event_unless_it_carried_them(store, tmp_path):
    url = "https://shop.example/p?utm_source=Google&utm_campaign=other&gclid=G1&x=1"
    track(store, tmp_path, [event("e1", "2026-03-02T09:00:00Z", utm_campaign="Kept As Sent", url=url)])
    assert stored_properties(store, "e1") == {"utm_campaign": "Kept As Sent", "url": url,
                                              "utm_source": "google", "gclid": "G1"}  # the implied medium (cpc) was not sent: not added


def test_hostile_touch_values_are_refused_or_ignored_and_the_tick_still_runs(make_runtime, tmp_path):
    rt = make_runtime({"from_google": journey_yaml(
        "from_google", "- {id: pause, wait: 1d}",
        trigger="{event: view_page, where: {property: {utm_source: {eq: google}}}}")})
    result = track(rt.store, tmp_path, [
        event("good", "2026-03-04T09:00:00Z", url="https://shop.example/?utm_source=Google"),
        event("nul", "2026-03-04T09:01:00Z", email="bob@example.com", utm_source="a\u0000b"),  # refused by ingest
        event("odd", "2026-03-04T09:02:00Z", email="cy@example.com", utm_medium={"$gt": ""}, gclid=1e300,
              url="https://x.example/?utm_source=%ED%A0%80%00x&fbclid=" + "f" * 600),
    ])
    assert [(e.line, e.field) for e in result.errors] == [(2, "properties.utm_source")]
    assert result.inserted == 2
    odd = touches(rt.store, "cy@example.com")["first"]
    assert (odd["source"], odd["medium"], odd["click_id"]) == ("\ufffd\ufffd\ufffd x", None, None)
    assert stored_properties(rt.store, "odd")["utm_medium"] == {"$gt": ""}  # as sent: a property, not a touch
    run_tick(rt, "from_google", NOW)  # the UTM read from the URL is a property conditions can use
    with rt.store.engine.connect() as conn:
        ann = conn.execute(select(contact_t.c.id).where(contact_t.c.email == "ann@example.com")).scalar_one()
    assert [e.contact_id for e in enrollments(rt.store)] == [ann]


def test_post_events_sets_the_touches_like_track(site):
    auth = {"Authorization": f"Bearer {INGEST}"}
    body = {"events": [
        event("w2", "2026-03-02T11:00:00Z", email="a@example.com", page={"url": "https://s.example/?utm_source=ads"}),
        event("w1", "2026-03-01T11:00:00Z", email="a@example.com", msclkid="M1"),
    ]}
    response = site.http.post("/events", json=body, headers=auth)
    assert response.status_code == 200 and response.json()["inserted"] == 2
    assert summary(site.store, "a@example.com") == {"first": ("bing", "cpc", None, "w1"),
                                                    "last": ("ads", None, None, "w2")}
    site.http.post("/events", json=event("w1", "2026-01-01T00:00:00Z", email="a@example.com", utm_source="x"),
                   headers=auth)
    assert summary(site.store, "a@example.com")["first"] == ("bing", "cpc", None, "w1")


def test_track_records_counts_the_events_that_carried_a_touch(store):
    result = track_records(store, [(1, event("e1", "2026-03-02T09:00:00Z", gclid="G")),
                                   (2, event("e2", "2026-03-02T10:00:00Z"))], now=NOW)
    assert (result.inserted, result.touches) == (2, 1)


# ---------------------------------------------------------------- contact imports


def test_import_contacts_utm_columns_set_the_touch_and_stay_attributes(store, tmp_path):
    track(store, tmp_path, [event("e1", "2026-03-01T09:00:00Z", utm_source="webinar")])
    path = tmp_path / "contacts.csv"
    path.write_text("email,utm_source,utm_medium,utm_campaign,gclid,lead_source\n"
                    "ann@example.com,Trade_Show,Offline,Expo 2026,,\n"
                    "bob@example.com,,,,G-B,\n"
                    "cy@example.com,,,,,Referral\n"
                    "dee@example.com,,,,,\n", encoding="utf-8")
    result = import_contacts(store, path, now=NOW)
    assert (result.created, result.updated, result.touches, result.errors) == (3, 1, 3, [])
    ann = touches(store)
    assert ann["first"]["source"] == "webinar"  # she had one: the import is only her last touch
    assert (ann["last"]["source"], ann["last"]["medium"], ann["last"]["campaign"], ann["last"]["occurred_at"],
            ann["last"]["event_id"]) == ("trade_show", "offline", "Expo 2026", NOW, None)
    assert summary(store, "bob@example.com") == {"first": ("google", "cpc", None, None),
                                                 "last": ("google", "cpc", None, None)}
    assert summary(store, "cy@example.com")["first"] == ("referral", None, None, None)  # lead_source: utm_source
    assert touches(store, "dee@example.com") == {}
    with store.engine.connect() as conn:
        attributes = conn.execute(select(contact_t.c.attributes).where(contact_t.c.email == "ann@example.com")).scalar()
    assert attributes == {"utm_source": "Trade_Show", "utm_medium": "Offline", "utm_campaign": "Expo 2026"}


def test_a_url_column_of_an_import_is_not_read_as_a_page_url(store, tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text(json.dumps({"email": "ann@example.com", "url": "https://a.example/?utm_source=x",
                                "utm_medium": 5}) + "\n", encoding="utf-8")
    assert import_contacts(store, path, now=NOW).touches == 0
    assert touches(store) == {}


# ---------------------------------------------------------------- privacy


def test_an_erasure_deletes_the_touches_and_counts_them_and_an_export_lists_them(make_runtime, tmp_path):
    rt = make_runtime({})
    track(rt.store, tmp_path, [
        event("e1", "2026-03-01T09:00:00Z", gclid="G-ann", utm_campaign="brand"),
        event("e2", "2026-03-02T09:00:00Z", utm_source="newsletter"),
        event("b1", "2026-03-02T09:00:00Z", email="bob@example.com", utm_source="partner"),
    ])
    doc = export_contact(rt.store, rt.project, "ann@example.com", now=NOW)
    assert [(t["touch"], t["source"], t["medium"], t["campaign"], t["click_id_type"], t["click_id"], t["occurred_at"])
            for t in doc["touches"]] == [
        ("first", "google", "cpc", "brand", "gclid", "G-ann", "2026-03-01T09:00:00+00:00"),
        ("last", "newsletter", None, None, None, None, "2026-03-02T09:00:00+00:00")]
    assert {t["event_pk"] for t in doc["touches"]} == {e["id"] for e in doc["events"]}
    json.dumps(doc)

    context = IntegrationContext(rt.project.root, rt.data_dir, dict(rt.env))
    [result] = erase_emails(rt.store, rt.project, ["ann@example.com"], context=context, actor="test", now=NOW)
    assert result.outcome == "erased" and result.removed["touches"] == 2
    with rt.store.engine.connect() as conn:
        left = conn.execute(select(touch_t.c.source)).scalars().all()
    assert left == ["partner", "partner"]  # Bob's first and last

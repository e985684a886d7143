"""Specification: conditions compile to SQL and are evaluated in the database for a whole batch
(one SELECT over all contacts), with known answers over a handful of contacts — on SQLite and
on PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.conditions import ConditionScope, compile_condition
from nurture.spec.models import Condition
from nurture.spec.segments import Segment
from nurture.store.tables import contact_t, enrollment_t, event_t
from tests.conftest import utc
from tests.engine_fixtures import add_contact, add_event, module_store, set_consent  # noqa: F401

NOW = utc(2026, 3, 10, 12, 0)


@pytest.fixture(scope="module")
def people(module_store):
    """Four contacts with attributes, events and consent histories; returns name → id."""
    store = module_store
    ann = add_contact(store, "ann@example.com", country="DE", score=80.0, lifecycle_stage="customer",
                      first_name="Ann", attributes={"plan": "pro", "seats": 12, "tags": "vip,beta", "active": True})
    bob = add_contact(store, "bob@example.com", country="US", score=20.0,
                      attributes={"plan": "basic", "seats": 3, "active": False})
    cy = add_contact(store, "cy@example.org", score=50.0, attributes={})
    dee = add_contact(store, "dee@example.com", country="FR", score=5.0,
                      attributes={"plan": "pro", "seats": 40, "tags": "beta"})
    add_event(store, ann, "purchase", NOW - timedelta(days=2), {"value": 120, "sku": "A-1"})
    add_event(store, ann, "purchase", NOW - timedelta(days=10), {"value": 30, "sku": "B-2"})
    add_event(store, ann, "purchase", NOW - timedelta(days=20), {"value": 10, "sku": "B-2"})
    add_event(store, bob, "page_view", NOW - timedelta(hours=1), {"path": "/pricing"})
    add_event(store, cy, "purchase", NOW + timedelta(days=1), {"value": 999})  # the future does not count yet
    # consent: the latest ledger row (by recorded_at) is the state
    set_consent(store, ann, "email", "granted", at=NOW - timedelta(days=30))
    set_consent(store, ann, "email", "revoked", at=NOW - timedelta(days=1))
    set_consent(store, bob, "email", "revoked", at=NOW - timedelta(days=30))
    set_consent(store, bob, "email", "granted", at=NOW - timedelta(days=1))
    set_consent(store, cy, "email", "pending", at=NOW - timedelta(days=1))
    set_consent(store, dee, "email", "granted", at=NOW + timedelta(days=1))  # recorded after now
    set_consent(store, dee, "sms", "granted", at=NOW - timedelta(days=3))
    return {"ann": ann, "bob": bob, "cy": cy, "dee": dee}


SEGMENTS = {
    "pro_accounts": Segment(name="pro_accounts", when=Condition.model_validate({"attribute": {"plan": "pro"}})),
    "big_pro": Segment(name="big_pro", when=Condition.model_validate(
        {"all": [{"segment": "pro_accounts"}, {"attribute": {"seats": {"gte": 20}}}]})),
}


def matching(store, people, condition: dict) -> set[str]:
    expr = compile_condition(Condition.model_validate(condition), ConditionScope(NOW, SEGMENTS))
    with store.engine.connect() as conn:
        ids = {r[0] for r in conn.execute(select(contact_t.c.id).where(expr))}
        conn.rollback()
    return {name for name, cid in people.items() if cid in ids}


CASES = [
    # attribute: contact columns
    ({"attribute": {"country": "DE"}}, {"ann"}),
    ({"attribute": {"country": {"ne": "DE"}}}, {"bob", "cy", "dee"}),  # NULL counts as "not DE"
    ({"attribute": {"country": {"in": ["DE", "FR"]}}}, {"ann", "dee"}),
    ({"attribute": {"country": ["US", "FR"]}}, {"bob", "dee"}),  # list shorthand means `in`
    ({"attribute": {"country": {"not_in": ["DE", "FR"]}}}, {"bob", "cy"}),
    ({"attribute": {"country": {"exists": False}}}, {"cy"}),
    ({"attribute": {"email": {"contains": "example.org"}}}, {"cy"}),
    ({"attribute": {"lifecycle_stage": "customer"}}, {"ann"}),
    # attribute: JSON attributes, typed by the comparison value
    ({"attribute": {"plan": "pro"}}, {"ann", "dee"}),
    ({"attribute": {"plan": {"eq": "pro"}}}, {"ann", "dee"}),
    ({"attribute": {"plan": {"ne": "pro"}}}, {"bob", "cy"}),
    ({"attribute": {"seats": {"gt": 12}}}, {"dee"}),
    ({"attribute": {"seats": {"gte": 12}}}, {"ann", "dee"}),
    ({"attribute": {"seats": {"lt": 12}}}, {"bob"}),
    ({"attribute": {"seats": {"lte": 12}}}, {"ann", "bob"}),
    ({"attribute": {"seats": {"gte": 3, "lt": 40}}}, {"ann", "bob"}),
    ({"attribute": {"plan": {"in": ["basic", "enterprise"]}}}, {"bob"}),
    ({"attribute": {"plan": {"not_in": ["basic"]}}}, {"ann", "cy", "dee"}),
    ({"attribute": {"active": {"ne": True}}}, {"bob", "cy", "dee"}),  # false or missing (win_back's `sunset`)
    ({"not": {"attribute": {"plan": {"ne": "pro"}}}}, {"ann", "dee"}),
    ({"not": {"attribute": {"plan": {"not_in": ["basic"]}}}}, {"bob"}),
    ({"attribute": {"tags": {"contains": "vip"}}}, {"ann"}),
    ({"attribute": {"tags": {"exists": True}}}, {"ann", "dee"}),
    ({"attribute": {"tags": {"exists": False}}}, {"bob", "cy"}),
    ({"attribute": {"active": True}}, {"ann"}),
    ({"attribute": {"active": False}}, {"bob"}),
    # score
    ({"score": {"gte": 50}}, {"ann", "cy"}),
    ({"score": {"lt": 20}}, {"dee"}),
    # event: performed ever, within a window, with where, and counted
    ({"event": "purchase"}, {"ann"}),
    ({"event": "purchase", "within": "3d"}, {"ann"}),
    ({"event": "purchase", "within": "1d"}, set()),
    ({"event": "page_view", "within": "2h"}, {"bob"}),
    ({"event": "purchase", "where": {"value": {"gte": 100}}}, {"ann"}),
    ({"event": "purchase", "where": {"sku": "C-3"}}, set()),
    ({"event": "purchase", "count": 3}, {"ann"}),
    ({"event": "purchase", "count": {"gte": 4}}, set()),
    ({"event": "purchase", "within": "15d", "count": {"eq": 2}}, {"ann"}),
    ({"event": "purchase", "where": {"sku": "B-2"}, "count": {"eq": 2}}, {"ann"}),
    ({"event": "purchase", "count": {"lt": 1}}, {"bob", "cy", "dee"}),
    # consent: the latest ledger row at `now` wins
    ({"consent": "email"}, {"bob"}),
    ({"consent": {"channel": "email", "status": "revoked"}}, {"ann"}),
    ({"consent": {"channel": "email", "status": "pending"}}, {"cy"}),
    ({"consent": {"channel": "sms"}}, {"dee"}),
    ({"consent": {"channel": "email", "purpose": "transactional"}}, set()),
    # segment (and a segment referring to a segment)
    ({"segment": "pro_accounts"}, {"ann", "dee"}),
    ({"segment": "big_pro"}, {"dee"}),
    # all / any / not, and several kinds in one mapping (all required)
    ({"all": [{"attribute": {"plan": "pro"}}, {"score": {"gte": 50}}]}, {"ann"}),
    ({"any": [{"attribute": {"country": "US"}}, {"score": {"lt": 10}}]}, {"bob", "dee"}),
    ({"not": {"segment": "pro_accounts"}}, {"bob", "cy"}),
    ({"not": {"any": [{"event": "purchase"}, {"event": "page_view"}]}}, {"cy", "dee"}),
    ({"attribute": {"plan": "pro"}, "score": {"lt": 50}}, {"dee"}),
]


@pytest.mark.parametrize("condition, expected", CASES, ids=[str(c) for c, _ in CASES])
def test_condition_selects_the_known_contacts_in_one_query(module_store, people, condition, expected):
    assert matching(module_store, people, condition) == expected


def test_property_condition_reads_the_trigger_event(module_store, people):
    store = module_store
    """`property` compares a property of the trigger event (here: every purchase event)."""
    cond = Condition.model_validate({"property": {"value": {"gte": 30}}})
    scope = ConditionScope(NOW, SEGMENTS, trigger_event=event_t)
    with store.engine.connect() as conn:
        values = sorted(r[0]["value"] for r in conn.execute(
            select(event_t.c.properties).where(event_t.c.name == "purchase", compile_condition(cond, scope))))
        conn.rollback()
    assert values == [30, 120, 999]


def test_event_since_enrollment_counts_only_events_after_entry_and_not_the_trigger(store):
    """In an enrollment, `since: enrollment` ignores older events and the trigger event itself."""
    ann, bob = add_contact(store, "ann@example.com"), add_contact(store, "bob@example.com")
    add_event(store, ann, "purchase", NOW - timedelta(days=10))  # before her entry: ignored
    add_event(store, ann, "purchase", NOW - timedelta(days=2))
    trigger = add_event(store, bob, "purchase", NOW - timedelta(hours=3), {"value": 5})
    with store.engine.begin() as conn:
        rows = [dict(contact_id=ann, journey="j", version="v", step_id="s", status="active",
                     entered_at=NOW - timedelta(days=5), trigger_event_pk=None, holdout=False, revenue=0.0, defer_count=0, state={}),
                dict(contact_id=bob, journey="j", version="v", step_id="s", status="active",
                     entered_at=NOW - timedelta(hours=3), trigger_event_pk=trigger, holdout=False,
                     revenue=0.0, defer_count=0, state={})]
        conn.execute(enrollment_t.insert(), rows)
    cond = Condition.model_validate({"event": "purchase", "since": "enrollment"})
    scope = ConditionScope(NOW, SEGMENTS, in_enrollment=True)
    with store.engine.connect() as conn:
        contacts = {r[0] for r in conn.execute(
            select(enrollment_t.c.contact_id)
            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
            .where(compile_condition(cond, scope)))}
        conn.rollback()
    # ann purchased 2 days ago (after her entry 5 days ago); bob's only purchase is his trigger
    assert contacts == {ann}
    add_event(store, bob, "purchase", NOW - timedelta(hours=1), {"value": 7})
    with store.engine.connect() as conn:
        contacts = {r[0] for r in conn.execute(
            select(enrollment_t.c.contact_id)
            .select_from(enrollment_t.join(contact_t, contact_t.c.id == enrollment_t.c.contact_id))
            .where(compile_condition(cond, scope)))}
        conn.rollback()
    assert contacts == {ann, bob}


def test_a_condition_compiles_to_one_sql_statement_without_python_callbacks(module_store, people):
    store = module_store
    expr = compile_condition(Condition.model_validate(
        {"all": [{"segment": "big_pro"}, {"event": "purchase", "count": 1}, {"consent": "email"}]}),
        ConditionScope(NOW, SEGMENTS))
    sql = str(select(contact_t.c.id).where(expr).compile(store.engine))
    assert sql.count("SELECT") >= 3 and "FROM contact" in sql


def test_a_stored_value_of_another_type_is_no_number_and_no_boolean_on_both_databases(store):
    """A stored value is whatever a contact sent. As a number PostgreSQL cast it (`abc`,
    `1e400` or a list made the query fail, and every tick of the journey with it); SQLite
    ordered every text above every number (`"5"` and `"abc"` passed `gte: 20`). Now a JSON
    number or text that reads as one is a number, true / false (or their text) a boolean, and
    anything else neither: the same contacts on both databases (store/json_values.py)."""
    values = {"int": 30, "real": 20.5, "text": "45.00", "small": "5", "padded": " 25 ", "word": "abc",
              "nan": "NaN", "inf": "Infinity", "huge": "1e400", "tiny": "1e-999", "long": "9" * 400,
              "list": [30], "object": {"n": 30}, "true": True, "false": False, "true_text": "true", "null": None}
    ids = {name: add_contact(store, f"{name}@example.com", attributes={"v": value}) for name, value in values.items()}
    ids["none"] = add_contact(store, "none@example.com", attributes={})  # without the attribute at all

    def match(condition):
        return matching(store, ids, {"attribute": {"v": condition}})

    assert match({"gte": 20}) == {"int", "real", "text", "padded"}
    assert match({"lt": 20}) == {"small", "tiny"}  # 1e-999 reads as 0
    assert match({"in": [30, 5]}) == {"int", "small"}
    assert match({"ne": 30}) == set(ids) - {"int"}  # no number counts as "not 30"
    assert match({"eq": True}) == {"true", "true_text"}
    assert match({"eq": False}) == {"false"}
    assert match({"exists": True}) == set(ids) - {"none", "null"}


def test_a_text_condition_compares_a_stored_number_or_boolean_by_its_text_on_both_databases(store):
    """`nurture import contacts` stores the cell 10115 as a number and true as a boolean
    (ingest._coerce); a marketer writes `zip: "10115"`. Compared with text, a stored string is
    itself, a number its digits as written, a boolean true / false, a list or an object its
    JSON text: the same contacts on SQLite (whose JSON_EXTRACT gave 10115 and 1, equal to no
    text) and PostgreSQL (whose ->> gives that text). In an event's properties (a `json`
    column on PostgreSQL, `jsonb` for attributes) as in attributes."""
    values = {"number": 10115, "text": "10115", "other": 80331, "real": 19.9, "true": True, "true_text": "true",
              "false": False, "list": ["10115"], "object": {"zip": "10115"}, "null": None}
    ids = {name: add_contact(store, f"{name}@example.com", attributes={"v": value}) for name, value in values.items()}
    ids["none"] = add_contact(store, "none@example.com", attributes={})
    for name, cid in ids.items():
        add_event(store, cid, "signup", NOW - timedelta(days=1), {"v": values[name]} if name in values else {})

    def match(comparison):
        by_attribute = matching(store, ids, {"attribute": {"v": comparison}})
        by_property = matching(store, ids, {"event": "signup", "where": {"v": comparison}})
        assert by_attribute == by_property, comparison
        return by_attribute

    assert match("10115") == {"number", "text"}
    assert match({"in": ["10115", "80331"]}) == {"number", "text", "other"}
    assert match({"in": ["10115", 80331]}) == {"number", "text", "other"}  # (a number in the list: by its text)
    assert match("19.9") == {"real"}
    assert match("true") == {"true", "true_text"}
    assert match({"in": ["false", "no"]}) == {"false"}
    assert match({"ne": "10115"}) == set(ids) - {"number", "text"}  # no text counts as different
    assert match({"not_in": ["10115", "true"]}) == set(ids) - {"number", "text", "true", "true_text"}
    assert match({"contains": "011"}) == {"number", "text", "list", "object"}  # (an element of a list, too)
    assert match({"contains": "ru"}) == {"true", "true_text"}
    assert match({"contains": "19.9"}) == {"real"}


def test_contains_ignores_case_and_reads_percent_and_underscore_as_themselves_on_both_databases(store):
    """`contains` was LIKE '%value%': case-insensitive on SQLite (for A–Z), case-sensitive on
    PostgreSQL, and `_` / `%` in the value were wildcards. Now it ignores case on both — letters
    beyond ASCII too — and every character of the value means itself."""
    names = {"acme_gmbh": "ACME GmbH", "acme_inc": "acme inc", "muller_caps": "MÜLLER AG", "muller": "Müller KG",
             "sale": "50%_OFF", "percent": "50 percent off", "underscore": "a_b", "axb": "aXb",
             "backslash": "C:\\Temp", "slash": "a/b"}
    ids = {name: add_contact(store, f"{name}@example.com", first_name=text, attributes={"company": text})
           for name, text in names.items()}

    def match(needle):
        by_attribute = matching(store, ids, {"attribute": {"company": {"contains": needle}}})
        by_column = matching(store, ids, {"attribute": {"first_name": {"contains": needle}}})
        assert by_attribute == by_column, needle
        return by_attribute

    assert match("acme") == {"acme_gmbh", "acme_inc"}
    assert match("ACME G") == {"acme_gmbh"}
    assert match("müller") == {"muller_caps", "muller"}
    assert match("MÜLL") == {"muller_caps", "muller"}
    assert match("ller") == {"muller_caps", "muller"}
    assert match("50%_off") == {"sale"}
    assert match("0%") == {"sale"}
    assert match("a_b") == {"underscore"}
    assert match("\\temp") == {"backslash"}
    assert match("a/b") == {"slash"}
    assert match("%") == {"sale"}

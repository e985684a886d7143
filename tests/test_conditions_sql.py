"""Specification: conditions compile to SQL and are evaluated in the database for a whole batch
(one SELECT over all contacts), with known answers over a handful of contacts — on SQLite and
on PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.conditions import ConditionScope, compile_condition
from nurture.conversions.event_fields import value_of
from nurture.runtime import run_tick
from nurture.spec.models import Condition
from nurture.spec.project import load_project
from nurture.spec.segments import Segment
from nurture.store.json_values import number_of_text
from nurture.store.tables import contact_t, enrollment_t, event_t
from tests.conftest import utc
from tests.engine_fixtures import (add_contact, add_event, journey_yaml, module_store, outcomes,  # noqa: F401
                                   set_consent, subscriber)

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


def matching(store, people, condition: dict | Condition) -> set[str]:
    condition = condition if isinstance(condition, Condition) else Condition.model_validate(condition)
    expr = compile_condition(condition, ConditionScope(NOW, SEGMENTS))
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
    assert match({"in": ["10115", 80331]}) == {"number", "text", "other"}  # (each value as its own kind)
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


# ---------------------------------------------------------------- the same answers on both databases


def test_score_compared_with_a_quoted_number_compares_the_number_on_both_databases(store):
    """`score: {gte: "50"}` passed validation (a bound may be text), then PostgreSQL refused
    `double precision >= character varying` on every tick while SQLite's column affinity read
    50. A contact column compares with values of its kind: text that reads as a number is that
    number, an ISO 8601 text a time."""
    ids = {"hot": add_contact(store, "hot@example.com", score=80.0, country="49"),
           "cold": add_contact(store, "cold@example.com", score=10.0)}

    def match(condition):
        return matching(store, ids, condition)

    assert match({"score": {"gte": "50"}}) == {"hot"}
    assert match({"score": "80"}) == {"hot"}
    assert match({"attribute": {"score": {"in": ["80", 10]}}}) == {"hot", "cold"}
    assert match({"score": {"not_in": ["80.0"]}}) == {"cold"}
    assert match({"attribute": {"created_at": {"gte": "2020-01-01"}}}) == {"hot", "cold"}
    assert match({"attribute": {"created_at": {"lt": "2020-01-01T00:00:00+02:00"}}}) == set()
    assert match({"attribute": {"country": 49}}) == {"hot"}  # (a number, compared with text, by its text)


def test_a_journey_version_recorded_with_a_value_validation_now_refuses_still_compiles(store):
    """A journey version recorded before validation refused `score: {gte: "abc"}` is read back
    (runtime.versions.load_recorded) and compiled: no number equals "abc", so it selects nobody
    (and `ne` everybody), on both databases, instead of failing."""
    from nurture.runtime.versions import load_recorded
    ids = {"ann": add_contact(store, "ann@example.com", score=80.0)}
    journey = load_recorded({"name": "j", "trigger": {"event": "signup"}, "steps": [
        {"id": "check", "branch": {"when": {"any": [{"score": {"gte": "abc"}}, {"attribute": {"created_at": 5}}]},
                                   "then": [{"id": "w", "wait": "1h"}]}}]})
    assert matching(store, ids, journey.steps[0].branch.when) == set()
    recorded_ne = Condition.model_validate({"score": {"ne": "abc"}}, context={"recorded": True})
    assert matching(store, ids, recorded_ne) == {"ann"}


def test_a_branch_comparing_score_with_a_quoted_number_takes_its_path_on_both_databases(make_runtime, store):
    steps = """
- id: check
  branch:
    when: {score: {gte: "50"}}
    then: [{id: hot_mail, send: {channel: email, template: hello, subject: Hot}}]
    else: [{id: cold_mail, send: {channel: email, template: other, subject: Cold}}]
"""
    rt = make_runtime({"j": journey_yaml("j", steps)})
    hot = subscriber(store, "hot@example.com", score=80.0)
    add_event(store, hot, "signup", NOW)
    run_tick(rt, "j", NOW + timedelta(minutes=1))  # (PostgreSQL: ProgrammingError, every tick)
    assert outcomes(store) == [("hot_mail", "sent", None)]


def test_validate_refuses_a_contact_column_compared_with_a_value_of_another_kind_at_that_value(make_project):
    journey = ("name: j\ntrigger: {event: signup}\nexit_when:\n  - attribute:\n      country: DE\n"
               "      created_at: {gte: yesterday}\n  - score: {in: [10, fifty]}\nsteps:\n  - id: a\n    branch:\n"
               "      when: {score: {contains: '5'}}\n      then: [{id: b, wait: 1h}]\n")
    errors = [str(e) for e in load_project(make_project({"j": journey})).errors]
    assert errors == [
        ("journeys/j.yaml:6:25: 'created_at' is a time, and 'yesterday' is no ISO 8601 date or time "
         "(write one in quotes, e.g. created_at: {gte: \"2026-01-31\"})"),
        "journeys/j.yaml:7:22: 'score' is a number, and 'fifty' does not read as one (write e.g. score: {gte: 50})",
        ("journeys/j.yaml:11:32: 'score' is a number, and 'contains' finds text "
         "(compare it with eq, ne, gt, gte, lt, lte, in or not_in)")]
    fine = ("name: j\ntrigger: {event: signup, where: {score: {gte: \"50\"},\n"
            "  attribute: {created_at: {lt: \"2026-01-31\"}}}}\nsteps:\n  - {id: a, wait: 1h}\n")
    assert load_project(make_project({"j": fine})).errors == []


def test_an_in_list_mixing_numbers_and_text_compares_each_value_as_its_own_kind_on_both_databases(store):
    """The list was typed by its first value: with the number first, "80331" was compared as
    text against a number on SQLite (never equal) and read as a number on PostgreSQL. Now each
    value compares as its own kind (README): 10115 as a number, "80331" as text."""
    values = {"num": 80331, "txt": "80331", "other": 12345, "num_text": "10115.0", "num_10115": 10115}
    ids = {name: add_contact(store, f"{name}@example.com", attributes={"zip": value}) for name, value in values.items()}

    def match(comparison):
        return matching(store, ids, {"attribute": {"zip": comparison}})

    assert match(["80331", 10115]) == {"num", "txt", "num_text", "num_10115"}
    assert match([10115, "80331"]) == {"num", "txt", "num_text", "num_10115"}
    assert match({"not_in": [10115, "80331"]}) == {"other"}
    assert match({"gte": 80000, "lt": "9"}) == {"num", "txt"}  # (each bound as its own kind)


@pytest.mark.parametrize("name", ['say "hi"', "straße", "x\\y", "tab\tx", "emoji😀", "a.b"])
def test_an_attribute_or_property_named_with_any_character_is_found_on_both_databases(store, name):
    """SQLAlchemy's SQLite path `$."name"` compared the name with the key as json.dumps wrote
    it: `stra\\u00dfe`, `say \\"hi\\"` — a name beyond ASCII, with a quote or a backslash was
    never found on SQLite (a German CSV header `Straße`)."""
    ann = add_contact(store, "ann@example.com", attributes={name: "yes", "n": 1})
    add_event(store, ann, "signup", NOW - timedelta(days=1), {name: 7})
    ids = {"ann": ann, "bob": add_contact(store, "bob@example.com", attributes={"n": 1})}
    assert matching(store, ids, {"attribute": {name: "yes"}}) == {"ann"}
    assert matching(store, ids, {"attribute": {name: {"exists": True}}}) == {"ann"}
    assert matching(store, ids, {"attribute": {name: {"contains": "YE"}}}) == {"ann"}
    assert matching(store, ids, {"event": "signup", "where": {name: {"gte": 7}}}) == {"ann"}
    assert matching(store, ids, {"event": "signup", "where": {name: "7"}}) == {"ann"}


def test_whole_numbers_compare_exactly_however_long_on_both_databases(store):
    """Imports store a 19-digit CRM id as a number (ingest._coerce). PostgreSQL compared it as
    double precision, where 1234567890123456788 "equals" 1234567890123456789; SQLite exactly."""
    ids = {"int": add_contact(store, "int@example.com", attributes={"crm_id": 1234567890123456789}),
           "text": add_contact(store, "text@example.com", attributes={"crm_id": "1234567890123456789"}),
           "real": add_contact(store, "real@example.com", attributes={"crm_id": 0.5})}

    def match(comparison):
        return matching(store, ids, {"attribute": {"crm_id": comparison}})

    assert match(1234567890123456789) == {"int", "text"}
    assert match(1234567890123456788) == set()
    assert match({"gt": 1234567890123456788}) == {"int", "text"}
    assert match({"lt": 1234567890123456790}) == {"int", "text", "real"}
    assert match({"in": [1234567890123456788, 1234567890123456790]}) == set()
    assert match(1.2345678901234568e18) == set()  # (a whole float is that integer: ...768)
    assert match({"gt": 0.4, "lt": 1}) == {"real"}
    assert match({"lt": 10 ** 30}) == {"int", "text", "real"}  # (beyond 64 bits: no failing bind)


def test_a_json_number_beyond_the_limits_reads_the_same_on_both_databases(store):
    """json_values' bounds — from 1e300 on no number, under 1e-300 zero — applied on
    PostgreSQL only: SQLite read a stored JSON 1e300 as 1e300 and 1e-310 as more than 0."""
    values = {"huge": 1e300, "minus_huge": -1e300, "tiny": 1e-310, "tiny_text": "1e-310", "big_int": 10 ** 400,
              "fine": 5e299}
    ids = {name: add_contact(store, f"{name}@example.com", attributes={"ltv": value}) for name, value in values.items()}

    def match(comparison):
        return matching(store, ids, {"attribute": {"ltv": comparison}})

    assert match({"gte": 1}) == {"fine"}
    assert match({"lte": -1}) == set()
    assert match({"gt": 0}) == {"fine"}
    assert match(0) == {"tiny", "tiny_text"}


@pytest.mark.parametrize("stored, needle, found", [
    ("İstanbul", "istanbul", True),       # Turkish dotted capital I: its lowercase is i
    ("İSTANBUL", "İstanbul", True),
    ("\u212aelvin Ltd", "kelvin", True),  # KELVIN SIGN: its lowercase is k
    ("Kelvin Ltd", "\u212aelvin", True),
    ("ΟΔΟΣ ΑΘΗΝΑΣ", "οδος", True),         # a final sigma ς is σ
    ("οδος", "ΟΔΟΣ", True),
    ("ΟΔΟΣ", "οδοσ", True),
    ("ıstanbul", "istanbul", False),      # the dotless ı is another letter
    ("STRASSE", "straße", False),         # letters are not expanded: ß is not ss
])
def test_contains_ignores_case_by_the_same_rule_on_both_databases(store, stored, needle, found):
    """`contains` lowercased on SQLite with LIKE (A–Z only) or str.lower (İ to two characters,
    Σ to ς at a word's end), on PostgreSQL with lower(): İstanbul and the Kelvin sign were found
    on PostgreSQL only, ΟΔΟΣ by οδος on SQLite only. One rule now (README): each letter's
    one-to-one lowercase, and ς as σ."""
    ids = {"ann": add_contact(store, "ann@example.com", first_name=stored, attributes={"city": stored})}
    assert matching(store, ids, {"attribute": {"city": {"contains": needle}}}) == ({"ann"} if found else set())
    assert matching(store, ids, {"attribute": {"first_name": {"contains": needle}}}) == ({"ann"} if found else set())


# fullwidth, Arabic-Indic and Devanagari digits, a no-break and an em space
@pytest.mark.parametrize("stored", ["４５", "٤٥", "४५", "\u00a045", "45\u2003"])
def test_text_with_digits_or_spaces_beyond_ascii_is_no_number_on_both_databases(store, stored):
    """Python's \\d, \\s and float() read any script's digits and spaces: "٤٥" was 45 on SQLite
    and no number on PostgreSQL (and in the report's revenue and the conversions' value)."""
    ids = {"ann": add_contact(store, "ann@example.com", attributes={"ltv": stored})}
    assert matching(store, ids, {"attribute": {"ltv": {"gte": 40}}}) == set()
    assert matching(store, ids, {"attribute": {"ltv": stored}}) == {"ann"}  # (as text: itself)
    assert number_of_text(stored) is None and value_of({"value": stored}) is None

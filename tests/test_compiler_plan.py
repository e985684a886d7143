"""Specification: the compiler turns a journey spec into an immutable plan — a content-hash
version and a step graph with stable ids — and a live edit moves in-flight contacts by the
documented rule (nurture/runtime/versions.py): continue at the same step id when it still
exists, keeping the scheduled time; otherwise go to the first following step of the old
version that still exists, arriving now; completed when none is left."""
from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.compiler import compile_journey
from nurture.runtime import run_tick
from nurture.spec.project import load_project
from tests.conftest import utc
from tests.engine_fixtures import add_event, enrollments, journey_yaml, messages, subscriber

STEPS = """
- id: wait_1h
  wait: 1h
- id: check
  branch:
    when: {attribute: {plan: pro}}
    then:
      - {id: pro_mail, send: {channel: email, template: hello, subject: Pro}}
    else:
      - {id: wait_basic, wait: 1d}
      - {id: basic_mail, send: {channel: email, template: other, subject: Basic}}
- id: ab
  split:
    - {name: a, weight: 50, steps: [{id: arm_a, wait: 1h}]}
    - {name: b, weight: 50}
- id: done
  update: {lifecycle_stage: nurtured}
"""


def plan_of(make_project, text: str, name: str = "j"):
    spec = load_project(make_project({name: text}))
    assert spec.errors == [], [str(e) for e in spec.errors]
    return compile_journey(spec.journeys[name])


def test_version_is_stable_across_loads(make_project):
    assert plan_of(make_project, journey_yaml("j", STEPS)).version == plan_of(make_project, journey_yaml("j", STEPS)).version


def test_version_ignores_comments_and_layout(make_project):
    reformatted = "# a comment\n" + journey_yaml("j", STEPS).replace("{id: pro_mail,", "{ id: pro_mail,")
    assert plan_of(make_project, reformatted).version == plan_of(make_project, journey_yaml("j", STEPS)).version


def test_version_changes_with_an_edit(make_project):
    edited = journey_yaml("j", STEPS.replace("wait: 1h", "wait: 2h", 1))
    assert plan_of(make_project, edited).version != plan_of(make_project, journey_yaml("j", STEPS)).version


def test_step_graph_links_every_step_to_its_successor(make_project):
    plan = plan_of(make_project, journey_yaml("j", STEPS))
    assert plan.first == "wait_1h"
    graph = {n.id: (n.kind, n.next, n.then_first, n.else_first) for n in plan.nodes.values()}
    assert graph == {
        "wait_1h": ("wait", "check", None, None),
        "check": ("branch", "ab", "pro_mail", "wait_basic"),
        "pro_mail": ("send", "ab", None, None),
        "wait_basic": ("wait", "basic_mail", None, None),
        "basic_mail": ("send", "ab", None, None),
        "ab": ("split", "done", None, None),
        "arm_a": ("wait", "done", None, None),
        "done": ("update", None, None, None),
    }
    assert plan.nodes["ab"].arms == (("a", 50.0, "arm_a"), ("b", 50.0, "done"))


def test_plan_order_is_topological(make_project):
    plan = plan_of(make_project, journey_yaml("j", STEPS))
    position = {step_id: i for i, step_id in enumerate(plan.order)}
    for node in plan.nodes.values():
        targets = [node.next, node.then_first, node.else_first, *(arm[2] for arm in node.arms)]
        assert all(position[t] > position[node.id] for t in targets if t is not None), node.id


def test_plan_is_immutable(make_project):
    plan = plan_of(make_project, journey_yaml("j", STEPS))
    with pytest.raises(Exception):
        plan.version = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.nodes["x"] = plan.nodes["done"]  # type: ignore[index]


# ---------------------------------------------------------------- live edits

V1 = """
- id: wait_1d
  wait: 1d
- id: reminder
  send: {channel: email, template: hello, subject: Reminder}
- id: wait_2d
  wait: 2d
- id: last_call
  send: {channel: email, template: other, subject: Last call}
"""
T0 = utc(2026, 3, 2, 10, 0)


def start_in_v1(make_runtime, store):
    rt = make_runtime({"j": journey_yaml("j", V1)})
    cid = subscriber(store, "ann@example.com")
    add_event(store, cid, "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=5))
    (e,) = enrollments(store)
    assert (e.step_id, e.next_due_at) == ("wait_1d", T0 + timedelta(days=1))
    return rt, e


def test_an_edit_pins_nothing_until_the_next_tick_and_keeps_the_step_and_its_time(make_runtime, store):
    _, before = start_in_v1(make_runtime, store)
    # the edit adds a step at the end; ann's step still exists
    rt2 = make_runtime({"j": journey_yaml("j", V1 + "- id: thanks\n  update: {lifecycle_stage: customer}\n")})
    assert rt2.plan("j").version != before.version
    report = run_tick(rt2, "j", T0 + timedelta(hours=2))
    (after,) = enrollments(store)
    assert report.stages["migrated"] == 1
    assert (after.step_id, after.next_due_at, after.version) == ("wait_1d", before.next_due_at, rt2.plan("j").version)


def test_a_contact_whose_step_was_removed_moves_to_the_next_surviving_step_arriving_now(make_runtime, store):
    start_in_v1(make_runtime, store)
    # wait_1d and reminder are removed; the first following step that survives is wait_2d
    v2 = V1.split("- id: wait_2d")[1]
    rt2 = make_runtime({"j": journey_yaml("j", "- id: wait_2d" + v2)})
    now = T0 + timedelta(hours=2)
    run_tick(rt2, "j", now)
    (after,) = enrollments(store)
    assert (after.step_id, after.status) == ("wait_2d", "active")
    assert after.next_due_at == now + timedelta(days=2)  # arrived now, waits its 2 days from now
    assert messages(store) == []  # the removed reminder is not sent


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_two_workers_migrating_at_once_move_a_contact_once_and_never_back(make_runtime, store, monkeypatch):
    """Worker A moves ann off her removed step; worker B, migrating the same tick, has begun
    before A committed. B must not move her again: by then she may have gone on (here A's next
    stage moved her to last_call), and putting her back on wait_2d would repeat the steps
    after it. B's read of the enrollments to move waits for A's lock and finds them migrated."""
    import threading
    import time

    import nurture.steps.transitions as transitions
    from nurture.runtime.versions import migrate_enrollments
    from nurture.store.tables import enrollment_t
    start_in_v1(make_runtime, store)
    v2 = journey_yaml("j", "- id: wait_2d" + V1.split("- id: wait_2d")[1])
    worker_a, worker_b = make_runtime({"j": v2}), make_runtime({"j": v2})
    now = T0 + timedelta(hours=2)
    real_move, a_moved, went_on = transitions.move, threading.Event(), threading.Event()

    def move(conn, rt, plan, rows, target, at):
        rows = list(rows)
        if rt is worker_b and rows:
            went_on.wait(10)  # (only a B that read rows to move gets here: the defect)
        moved = real_move(conn, rt, plan, rows, target, at)
        if rt is worker_a:
            a_moved.set()
            time.sleep(1.0)  # A commits a second later: B has begun and reached its read
        return moved
    monkeypatch.setattr(transitions, "move", move)
    counts: dict[str, int] = {}
    a = threading.Thread(target=lambda: counts.setdefault("a", migrate_enrollments(worker_a, worker_a.plan("j"), now)))
    b = threading.Thread(target=lambda: counts.setdefault("b", migrate_enrollments(worker_b, worker_b.plan("j"), now)))
    a.start()
    assert a_moved.wait(10)
    b.start()
    a.join(30)
    with store.engine.begin() as conn:  # A's next stage: ann goes on
        conn.execute(enrollment_t.update().values(step_id="last_call"))
    went_on.set()
    b.join(30)
    (after,) = enrollments(store)
    assert (after.step_id, after.version) == ("last_call", worker_a.plan("j").version)
    assert (counts["a"], counts["b"]) == (1, 0)


def test_a_contact_whose_step_and_all_later_steps_were_removed_has_completed(make_runtime, store):
    start_in_v1(make_runtime, store)
    rt2 = make_runtime({"j": journey_yaml("j", "- id: brand_new\n  wait: 1h\n")})
    run_tick(rt2, "j", T0 + timedelta(hours=2))
    (after,) = enrollments(store)
    assert (after.status, after.step_id, after.exit_reason) == ("completed", None, "step_removed")


def test_a_contact_continuing_after_an_edit_follows_the_new_version(make_runtime, store):
    start_in_v1(make_runtime, store)
    v2 = V1.replace("template: hello, subject: Reminder", "template: other, subject: New reminder")
    rt2 = make_runtime({"j": journey_yaml("j", v2)})
    run_tick(rt2, "j", T0 + timedelta(days=1, minutes=1))
    (m,) = messages(store)
    assert (m.step_id, m.template, m.subject, m.status) == ("reminder", "other", "New reminder", "sent")


def test_a_journey_with_a_channel_priority_list_can_be_edited_while_contacts_are_in_it(make_runtime, store):
    """`channels:` was recorded with the `channel` the model derives from it, which the language
    refuses beside `channels`: after any edit, reading the old version back failed every tick
    of the journey, its contacts stranded past their due time."""
    steps = ("- {id: hello, send: {channels: [email], template: hello, subject: Hi}}\n"
             "- {id: pause, wait: 1d}\n- {id: again, send: {channel: email, template: hello, subject: Again}}")
    rt = make_runtime({"j": journey_yaml("j", steps)})
    for i in range(2):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=5))
    rt2 = make_runtime({"j": journey_yaml("j", steps.replace("subject: Again", "subject: Again edited"))})
    report = run_tick(rt2, "j", T0 + timedelta(days=1, minutes=6))
    assert report.stages["migrated"] == 2
    assert sorted((m.step_id, m.subject, m.status) for m in messages(store)) == [
        ("again", "Again edited", "sent")] * 2 + [("hello", "Hi", "sent")] * 2


def test_a_process_with_the_journey_as_it_was_before_an_edit_skips_its_ticks_and_moves_nobody_back(
        make_runtime, store):
    """A long-lived process (`nurture web`, a warm runner) that read the file before the edit
    ticked its old version: its prepare moved every contact back onto it and its advance sent
    the step the marketer had removed. It now skips the journey's tick, saying why."""
    old_process, before = start_in_v1(make_runtime, store)
    without_reminder = V1.replace("- id: reminder\n  send: {channel: email, template: hello, subject: Reminder}\n", "")
    edited = make_runtime({"j": journey_yaml("j", without_reminder)})
    assert run_tick(edited, "j", T0 + timedelta(hours=2)).stages["migrated"] == 1

    due = T0 + timedelta(days=1, minutes=1)  # when the removed reminder fell due under v1
    report = run_tick(old_process, "j", due)
    (after,) = enrollments(store)
    assert (after.version, after.step_id) == (edited.plan("j").version, "wait_1d")
    assert messages(store) == []
    from nurture.runtime.versions import SUPERSEDED
    assert (report.skipped, report.ran) == (SUPERSEDED, ["prepare"])
    run_tick(edited, "j", due)  # the live version goes on: wait_1d → wait_2d, no reminder
    (after,) = enrollments(store)
    assert (after.step_id, after.version, messages(store)) == ("wait_2d", edited.plan("j").version, [])


def test_a_revert_to_the_earlier_text_is_live_again_and_then_the_edited_process_waits(make_runtime, store):
    """A revert is a new edit: the version recorded first is recorded as live again (not
    refused as older), contacts move back onto it, and the process holding the edit stops."""
    from sqlalchemy import select

    from nurture.store.tables import version_t
    first, before = start_in_v1(make_runtime, store)
    edited = make_runtime({"j": journey_yaml("j", V1.replace("subject: Reminder", "subject: New reminder"))})
    run_tick(edited, "j", T0 + timedelta(hours=2))
    reverted = make_runtime({"j": journey_yaml("j", V1)})  # the marketer undoes the edit
    assert reverted.plan("j").version == before.version

    due = T0 + timedelta(days=1, minutes=1)
    report = run_tick(reverted, "j", due)
    assert report.stages["migrated"] == 1
    assert [(m.step_id, m.subject) for m in messages(store)] == [("reminder", "Reminder")]
    with store.engine.connect() as conn:
        order = conn.execute(select(version_t.c.version).where(version_t.c.journey == "j")
                             .order_by(version_t.c.id)).scalars().all()
    assert order == [edited.plan("j").version, before.version]  # the revert is the live version
    stale = run_tick(edited, "j", due + timedelta(minutes=5))
    (after,) = enrollments(store)
    assert after.version == before.version  # not moved back onto the edit
    run_tick(first, "j", due + timedelta(minutes=5))  # its text is the live one again: it ticks
    assert "migrated" not in stale.stages and stale.ran == ["prepare"]


def test_a_changed_trigger_reads_its_events_from_the_start_within_lookback(make_runtime, store):
    """The cursor was kept per journey name: after the trigger changed from signup to
    register, a register event tracked before the edit enrolled only if its id happened to be
    above the last signup's. Now the new trigger's events within lookback enroll; a cursor
    that does not know its trigger yet (a database from before) keeps its place."""
    from sqlalchemy import update

    from nurture.store.tables import cursor_t
    steps = "- {id: hello, send: {channel: email, template: hello, subject: Hi}}"
    rt = make_runtime({"j": journey_yaml("j", steps, trigger="{event: signup, lookback: 2d}")})
    people = {name: subscriber(store, f"{name}@example.com") for name in ("c1", "c2", "c3", "c4")}
    add_event(store, people["c1"], "signup", T0)
    add_event(store, people["c2"], "register", T0 + timedelta(minutes=1))  # below the last signup's id
    add_event(store, people["c3"], "signup", T0 + timedelta(minutes=2))
    run_tick(rt, "j", T0 + timedelta(minutes=5))
    with store.engine.begin() as conn:  # as a database from before migration 0023 has it
        conn.execute(update(cursor_t).values(trigger_event=None))
    run_tick(rt, "j", T0 + timedelta(minutes=6))  # learns its trigger, keeps its place: nobody again
    assert sorted(m.address for m in messages(store)) == ["c1@example.com", "c3@example.com"]
    rt2 = make_runtime({"j": journey_yaml("j", steps, trigger="{event: register, lookback: 2d}")})
    add_event(store, people["c4"], "register", T0 + timedelta(hours=1))
    run_tick(rt2, "j", T0 + timedelta(hours=2))
    assert sorted(m.address for m in messages(store)) == [f"{n}@example.com" for n in ("c1", "c2", "c3", "c4")]
    run_tick(rt2, "j", T0 + timedelta(hours=3))  # and nothing twice
    assert len(messages(store)) == 4


RICH = journey_yaml("j", STEPS + """
- id: morning
  wait_until: {time: "09:30", weekdays: [mon, wed]}
- id: wait_buy
  wait_for:
    event: purchase
    within: 3d
    where: {value: {gte: 10}}
    then: [{id: bye, exit: bought}]
    timeout: [{id: nudge, send: {channel: sms, template: hello}}]
""", trigger="{event: signup, where: {property: {plan: {in: [pro, basic]}}}, lookback: 2h}", extra="""
reentry: 7d
exit_when:
  - {event: purchase, since: enrollment}
  - {not: {attribute: {country: {eq: null}}}}
goal: {event: purchase, within: 72h}
holdout: 10%
frequency_cap: [{channel: email, max: 1, per: 1d}]
fixed_costs: [{name: design, amount: 100, per: month}]
objectives:
  - {metric: conversions, target: "+20%", baseline: {from: 2026-09-01, to: 2026-09-30}, deadline: 2026-12-31}
""")


def test_a_recorded_version_loads_back_as_the_same_journey(make_runtime, store):
    from sqlalchemy import select

    from nurture.runtime.versions import load_recorded
    from nurture.store.tables import version_t
    rt = make_runtime({"j": RICH})
    run_tick(rt, "j", T0)
    with store.engine.connect() as conn:
        (spec,) = conn.execute(select(version_t.c.spec).where(version_t.c.journey == "j")).scalars().all()
    assert compile_journey(load_recorded(spec)).version == rt.plan("j").version


def test_a_version_recorded_as_a_full_json_dump_still_loads(make_project):
    """Databases written before the YAML-form record hold ISO 8601 durations and nulls."""
    from nurture.runtime.versions import load_recorded
    plan = plan_of(make_project, journey_yaml("j", STEPS, extra="reentry: 7d\ngoal: {event: purchase, within: 72h}"))
    legacy = plan.journey.model_dump(mode="json", by_alias=True)
    assert compile_journey(load_recorded(legacy)).version == plan.version


def test_a_process_that_checked_before_an_edit_was_recorded_does_not_record_its_older_version(
        make_runtime, store, monkeypatch):
    """Between a stale process's check in prepare and its record, the edited process recorded
    v2: the stale one re-recorded v1 as live (a revert nobody made), moved the contact back,
    and the process holding the marketer's edit was superseded from then on. record_version
    checks again in its writing transaction (recorders of a journey take turns)."""
    import nurture.runtime.tick as tick
    from sqlalchemy import select

    from nurture.runtime.versions import SUPERSEDED, record_version, superseded as real_superseded
    from nurture.store.tables import version_t
    _, before = start_in_v1(make_runtime, store)
    stale = make_runtime({"j": journey_yaml("j", V1)})
    edited = make_runtime({"j": journey_yaml("j", V1.replace("subject: Reminder", "subject: New reminder"))})
    now = T0 + timedelta(hours=2)

    def superseded(conn, rt, plan):
        answer = real_superseded(conn, rt, plan)
        if rt is stale:  # between its check and its record, the edited process records v2
            record_version(edited, edited.plan("j"), now)
        return answer
    monkeypatch.setattr(tick, "superseded", superseded)
    assert run_tick(stale, "j", now).skipped == SUPERSEDED
    monkeypatch.setattr(tick, "superseded", real_superseded)
    with store.reading() as conn:
        order = conn.execute(select(version_t.c.version).where(version_t.c.journey == "j")
                             .order_by(version_t.c.id)).scalars().all()
    assert order[-1] == edited.plan("j").version
    assert run_tick(edited, "j", now + timedelta(minutes=5)).skipped == ""
    (e,) = enrollments(store)
    assert e.version == edited.plan("j").version != before.version


def test_a_journey_with_a_channels_send_and_nulls_loads_back_and_can_be_edited_live(make_runtime, store):
    """A `channels:` send is recorded with the `channel` the model derives, so the record is read
    back through the legacy path — which dropped every null: `coupon: null` (clear an attribute)
    left an empty update, and every tick after an edit failed in prepare; the journey stopped."""
    steps = """
- id: hello
  send: {channels: [sms, email], template: hello, subject: Hello}
- id: clear
  update: {attributes: {coupon: null}}
- id: pause
  branch:
    when: {attribute: {country: {eq: null}}}
    then: [{id: wait_more, wait: 1d}]
- id: bye
  send: {channel: email, template: other, subject: Bye}
"""
    from datetime import timedelta

    from tests.engine_fixtures import add_event, enrollments, subscriber
    rt = make_runtime({"j": journey_yaml("j", steps)}, templates={"email/other.html": "<p>Bye</p>"})
    add_event(store, subscriber(store, "ann@example.com"), "signup", T0)
    run_tick(rt, "j", T0 + timedelta(minutes=1))
    assert [(e.status, e.step_id) for e in enrollments(store)] == [("active", "wait_more")]
    edited = make_runtime({"j": journey_yaml("j", steps.replace("subject: Bye", "subject: Goodbye"))},
                          templates={"email/other.html": "<p>Bye</p>"})
    run_tick(edited, "j", T0 + timedelta(days=1, minutes=5))
    assert [e.status for e in enrollments(store)] == ["completed"]

"""Large ticks deliver in several processes, pipelined with the advance stage: every message
still goes out exactly once and every outcome is recorded."""
from __future__ import annotations

from datetime import timedelta

from nurture.runtime import run_tick
from nurture.runtime import tick
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

T0 = utc(2026, 3, 4, 10, 0)


def test_a_pipelined_tick_with_two_delivery_processes_sends_each_message_once(make_runtime, store, monkeypatch):
    monkeypatch.setattr(tick, "LARGE_TICK", 1)  # 300 due count as large: really pipelined
    rt = make_runtime({"j": journey_yaml("j", "- id: hello\n  send: {channel: email, template: hello, subject: Hi}")})
    rt.batch_size = 40  # many small batches, so delivery really runs while advance still queues
    for i in range(300):
        add_event(store, subscriber(store, f"p{i}@example.com"), "signup", T0)
    report = run_tick(rt, "j", T0 + timedelta(minutes=1), workers=2)
    sent = [m for m in messages(store) if m.status == "sent"]
    assert len(sent) == 300 and len({m.contact_id for m in sent}) == 300
    files = list((rt.data_dir / "outbox" / "email" / "j").glob("*.eml"))
    assert len(files) == 300
    assert sum(n for (step, status, _), n in report.outcomes.items() if status == "sent") == 300
    assert run_tick(rt, "j", T0 + timedelta(minutes=2), workers=2).outcomes.get(("hello", "sent", None)) is None

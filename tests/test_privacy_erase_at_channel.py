"""An erasure committed while a tick's delivery of the same person is at the channel (the
message `sending`: claimed and committed, the channel not yet given it back). The tick records
the rendered subject afterwards, and the file channel writes the .eml then: the erasure waits
for that and removes both (docs/privacy.md, "A message at the channel")."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from integrations.file_channels import FileEmailChannel
from nurture.privacy import erase as erase_module
from nurture.privacy.erase import erase_emails
from nurture.registry import IntegrationContext
from nurture.runtime import run_tick
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

T0 = utc(2026, 11, 16, 10)
ALICE = "alice@example.com"
JOURNEY = journey_yaml("welcome", """
    - id: hello
      send: {channel: email, template: hello, subject: "Hi {{ contact.first_name }} Liddell"}
""")


def _naming_her(rt) -> list:
    return [p for p in (rt.data_dir / "outbox").rglob("*.eml")
            if ALICE in p.read_text(errors="replace") or "Alicia" in p.read_text(errors="replace")]


@pytest.fixture
def held_tick(make_runtime, monkeypatch):
    """A tick of `welcome` whose file channel holds Alice's message until `release` is set."""
    rt = make_runtime({"welcome": JOURNEY})
    alice = subscriber(rt.store, ALICE, first_name="Alicia")
    add_event(rt.store, alice, "signup", T0)
    at_channel, release = threading.Event(), threading.Event()
    original = FileEmailChannel.send_batch

    def held(self, batch):
        at_channel.set()
        assert release.wait(30)
        return original(self, batch)

    monkeypatch.setattr(FileEmailChannel, "send_batch", held)
    errors: list = []

    def tick():
        try:
            run_tick(rt, "welcome", T0 + timedelta(minutes=5))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=tick)
    thread.start()
    assert at_channel.wait(60), "the tick never reached the channel"
    yield rt, alice, release, errors
    release.set()
    thread.join(60)


def _erase(rt):
    ctx = IntegrationContext(rt.project.root, rt.data_dir, dict(rt.env))
    (result,) = erase_emails(rt.store, rt.project, [ALICE], context=ctx, actor="cli:tester",
                             now=T0 + timedelta(minutes=6))
    return result


def test_an_erasure_waits_for_the_message_at_the_channel_and_leaves_no_subject_or_file(held_tick, monkeypatch):
    rt, alice, release, errors = held_tick
    pauses = []
    real_pause = erase_module._pause

    def pause(seconds):  # the erasure is waiting for the channel: let the tick's channel go on
        pauses.append(seconds)
        release.set()
        real_pause(seconds)

    monkeypatch.setattr(erase_module, "_pause", pause)
    result = _erase(rt)
    assert pauses, "the erasure did not wait for the message at the channel"
    assert result.outcome == "erased" and result.pending == []
    (m,) = messages(rt.store, contact_id=alice)
    assert (m.status, m.address, m.subject) == ("sent", None, None)
    assert _naming_her(rt) == []
    assert not errors


def test_a_message_still_at_the_channel_is_pending_and_the_next_erasure_finishes_it(held_tick, monkeypatch):
    rt, alice, release, errors = held_tick
    monkeypatch.setattr(erase_module, "AT_CHANNEL_WAIT", 0.3)
    first = _erase(rt)
    assert first.outcome == "erased"
    assert first.pending == ["messages: still at a tick's channel; run the erasure again once the tick is done"]

    release.set()  # the tick goes on: it records the subject and writes the file
    for _ in range(600):
        (m,) = messages(rt.store, contact_id=alice)
        if m.status != "sending":
            break
        erase_module._pause(0.05)
    assert m.status == "sent"

    again = _erase(rt)
    assert again.outcome == "already_erased" and again.pending == []
    (m,) = messages(rt.store, contact_id=alice)
    assert (m.address, m.subject) == (None, None)
    assert _naming_her(rt) == []
    assert not errors

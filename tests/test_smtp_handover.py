"""What the channels hand over, and what they can say about it afterwards (issue 10, items 10
and 12), against real servers: aiosmtpd on 127.0.0.1 and the local Twilio fake.

Item 10: a worker SIGKILLed after the first message of a batch was accepted must not turn the
whole claimed batch into `delivery_unknown`. The SMTP channel journals each hand-over, so a
new channel (another process, after the crash) answers `was_delivered`: True for the accepted
message, None only for the one the server had when the worker died, False for the rest.

Item 12: a wrong password or an unreachable server is the channel's problem, not the
messages': every message not handed over is `unavailable` (re-queued without using up an
attempt), and nothing more of the batch is tried.
"""
from __future__ import annotations

import asyncio
import email
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Optional

import pytest
from aiosmtpd.smtp import AuthResult

from integrations.smtp import JOURNAL_DIR, HandoverJournal, SmtpChannel
from integrations.twilio import TwilioSettings, TwilioSmsChannel
from nurture.registry import IntegrationContext, OutgoingMessage
from tests.conftest import REPO
from tests.test_smtp_delivery import smtp_server  # noqa: F401  (fixture)
from tests.fakes.twilio import FakeTwilio

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
PASSWORD = "the-right-relay-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Relay:
    """aiosmtpd handler: accepts what it is given, refuses RCPT for the addresses in
    `replies`, checks AUTH against PASSWORD, and — with `kill_at` — SIGKILLs `victim` (the
    sending process) when that DATA (1-based) arrives, before answering it."""
    replies: dict[str, str] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)  # Message-IDs answered 250
    kill_at: Optional[int] = None
    victim: Optional[subprocess.Popen] = None
    datas: int = 0

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        return AuthResult(success=auth_data.password.decode() == PASSWORD, handled=False)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.replies:
            return self.replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.datas += 1
        if self.datas == self.kill_at:
            for _ in range(1000):  # the test sets `victim` right after starting it
                if self.victim is not None:
                    break
                await asyncio.sleep(0.01)
            os.kill(self.victim.pid, signal.SIGKILL)
            self.victim.wait(timeout=30)  # dead before any answer could reach it
            return "451 4.3.0 nobody is listening any more"
        self.accepted.append(email.message_from_bytes(envelope.original_content)["Message-ID"])
        return "250 2.0.0 Accepted"


@pytest.fixture
def relay(smtp_server):
    """A real SMTP server on 127.0.0.1 for a handler (test_smtp_delivery's fixture)."""
    return smtp_server


def _env(port: int, **extra: str) -> dict[str, str]:
    return {"NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_SMTP_PORT": str(port), "NURTURE_SMTP_SECURITY": "none",
            "NURTURE_FROM_EMAIL": "news@shop.example", **extra}


def _context(tmp_path: Path, env: dict[str, str]) -> IntegrationContext:
    return IntegrationContext(tmp_path, tmp_path / ".nurture", env)


def _id(pk: int) -> str:
    return f"<nurture.{pk}.promo@shop.example>"


def _mail(pk: int, to: Optional[str] = None) -> OutgoingMessage:
    return OutgoingMessage(message_pk=pk, rfc_message_id=_id(pk), contact_id=pk, channel="email", journey="promo",
                           step_id="hello", purpose="marketing", to=to or f"c{pk}@example.com", subject="Hi",
                           html="<p>Hi</p>", text="Hi")


def _answers(channel: SmtpChannel, pks) -> dict[int, Optional[bool]]:
    return {pk: channel.was_delivered(pk, _id(pk)) for pk in pks}


# ---------------------------------------------------------------- item 10: the hand-over journal

SENDER = """
import json, sys
from pathlib import Path
from integrations.smtp import SmtpChannel
from nurture.registry import IntegrationContext, OutgoingMessage
cfg = json.loads(sys.argv[1])
channel = SmtpChannel.from_env(IntegrationContext(Path(cfg["root"]), Path(cfg["data_dir"]), cfg["env"]))
batch = [OutgoingMessage(message_pk=pk, rfc_message_id=f"<nurture.{pk}.promo@shop.example>", contact_id=pk,
                         channel="email", journey="promo", step_id="hello", purpose="marketing",
                         to=f"c{pk}@example.com", subject="Hi", html="<p>Hi</p>", text="Hi") for pk in cfg["pks"]]
print(channel.send_batch(batch), flush=True)
"""


def test_after_a_sigkill_mid_batch_only_the_message_in_flight_is_in_doubt(tmp_path, relay):
    handler = Relay(kill_at=2)
    env = _env(relay(handler))
    pks = list(range(101, 107))
    cfg = {"root": str(tmp_path), "data_dir": str(tmp_path / ".nurture"), "env": env, "pks": pks}
    proc = subprocess.Popen([sys.executable, "-c", SENDER, json.dumps(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    handler.victim = proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    assert handler.accepted == [_id(101)] and out == ""  # send_batch never returned

    after = SmtpChannel.from_env(_context(tmp_path, env))  # the next tick, in another process
    assert _answers(after, pks) == {101: True, 102: None, 103: False, 104: False, 105: False, 106: False}
    assert after.was_delivered(999, _id(999)) is None  # never in a batch here: the journal cannot tell
    assert after.journal.in_doubt() == [_id(102)]

    # Had the *machine* died instead, the journal's last lines could be lost: lines written
    # before the last boot never say "not handed over".
    rebooted = SmtpChannel(after.settings, HandoverJournal(tmp_path / ".nurture" / JOURNAL_DIR, boot_id="rebooted"))
    assert _answers(rebooted, pks) == {101: True, 102: None, 103: None, 104: None, 105: None, 106: None}


def test_refused_and_later_accepted_messages_and_the_latest_line_wins(tmp_path, relay):
    handler = Relay(replies={"gone@example.com": "550 5.1.1 No such user",
                             "busy@example.com": "451 4.2.1 Mailbox busy"})
    env = _env(relay(handler))
    channel = SmtpChannel.from_env(_context(tmp_path, env))
    results = channel.send_batch([_mail(1, "gone@example.com"), _mail(2, "busy@example.com"), _mail(3)])
    assert [r.status for r in results] == ["failed", "retry", "sent"]
    assert _answers(channel, (1, 2, 3)) == {1: False, 2: False, 3: True}

    del handler.replies["busy@example.com"]  # the retry on a later tick goes through
    assert [r.status for r in channel.send_batch([_mail(2, "busy@example.com")])] == ["sent"]
    assert _answers(SmtpChannel.from_env(_context(tmp_path, env)), (1, 2, 3)) == {1: False, 2: True, 3: True}
    assert SmtpChannel(channel.settings).was_delivered(3, _id(3)) is None  # no journal: cannot tell


def test_the_index_is_read_once_and_then_only_what_was_appended(tmp_path, monkeypatch):
    folder = tmp_path / JOURNAL_DIR
    writer = HandoverJournal(folder)
    ids = [_id(pk) for pk in range(1, 5001)]
    batch = writer.begin(ids)
    for rfc in ids[:4000]:
        batch.mark("H", rfc)
        batch.mark("A", rfc)
    batch.close()

    reader = HandoverJournal(folder)
    reads: list[str] = []
    original = HandoverJournal._read
    monkeypatch.setattr(HandoverJournal, "_read", lambda self, name, this_boot: (reads.append(name),
                                                                                 original(self, name, this_boot))[1])
    answers = [reader.state(rfc) for rfc in ids]
    assert answers == ["A"] * 4000 + ["Q"] * 1000 and len(reads) == 1

    other = HandoverJournal(folder).begin([])  # another worker hands one more over meanwhile
    other.mark("H", ids[4500])
    other.close()
    assert reader.state(ids[4500]) == "H" and reader.state(ids[4501]) == "Q" and len(reads) == 2


def test_journal_files_older_than_a_week_are_deleted_when_a_batch_starts(tmp_path):
    folder = tmp_path / JOURNAL_DIR
    folder.mkdir()
    today = date.today()
    old = folder / f"{(today - timedelta(days=9)).isoformat()}_someboot.log"
    recent = folder / f"{(today - timedelta(days=3)).isoformat()}_someboot.log"
    unrelated = folder / "notes.txt"
    for path in (old, recent, unrelated):
        path.write_text("A <x>\n")
    HandoverJournal(folder).begin([_id(1)]).close()
    assert not old.exists() and recent.exists() and unrelated.exists()


def test_a_journal_that_cannot_be_written_hands_nothing_over(tmp_path, relay):
    handler = Relay()
    env = _env(relay(handler))
    (tmp_path / ".nurture").mkdir()
    (tmp_path / ".nurture" / JOURNAL_DIR).write_text("a file where the folder should be")
    channel = SmtpChannel.from_env(_context(tmp_path, env))
    results = channel.send_batch([_mail(1), _mail(2)])
    assert {(r.status, r.reason.split(":")[0]) for r in results} == {("unavailable", "smtp_journal_failed")}
    assert handler.accepted == [] and handler.datas == 0


# ---------------------------------------------------------------- item 12: the channel is unavailable


def test_a_wrong_password_makes_every_message_unavailable_and_hands_none_over(tmp_path, relay):
    handler = Relay()
    port = relay(handler, auth_required=True, auth_require_tls=False, authenticator=handler.authenticate)
    env = _env(port, NURTURE_SMTP_USERNAME="relay-user", NURTURE_SMTP_PASSWORD="wrong-" + PASSWORD)
    channel = SmtpChannel.from_env(_context(tmp_path, env))
    results = channel.send_batch([_mail(pk) for pk in (1, 2, 3)])
    assert [r.message_pk for r in results] == [1, 2, 3]
    assert {r.status for r in results} == {"unavailable"}
    assert all(r.reason.startswith("smtp_auth_failed: 535 5.7.8") and PASSWORD not in r.reason for r in results)
    assert handler.datas == 0 and _answers(channel, (1, 2, 3)) == {1: False, 2: False, 3: False}

    fixed = SmtpChannel.from_env(_context(tmp_path, {**env, "NURTURE_SMTP_PASSWORD": PASSWORD}))
    assert [r.status for r in fixed.send_batch([_mail(pk) for pk in (1, 2, 3)])] == ["sent"] * 3


def test_an_unreachable_server_makes_every_message_unavailable(tmp_path):
    channel = SmtpChannel.from_env(_context(tmp_path, _env(_free_port())))  # nothing listens there
    results = channel.send_batch([_mail(1), _mail(2)])
    assert [(r.message_pk, r.status, r.reason) for r in results] == [
        (1, "unavailable", "smtp_connect_failed: ConnectionRefusedError"),
        (2, "unavailable", "smtp_connect_failed: ConnectionRefusedError")]


def _sms(pk: int, to: str) -> OutgoingMessage:
    return OutgoingMessage(message_pk=pk, rfc_message_id=f"<{pk}@x>", contact_id=pk, channel="sms", journey="deal",
                           step_id="text", purpose="marketing", to=to, text="Hello")


def _twilio(fake: FakeTwilio, tmp_path: Path, sleeps: list, **extra: str) -> TwilioSmsChannel:
    env = {"NURTURE_TWILIO_ACCOUNT_SID": fake.account_sid, "NURTURE_TWILIO_AUTH_TOKEN": fake.auth_token,
           "NURTURE_TWILIO_FROM": "+15005550006", "NURTURE_TWILIO_BASE_URL": fake.base_url, **extra}
    return TwilioSmsChannel(TwilioSettings.from_env(IntegrationContext(tmp_path, tmp_path, env)), sleep=sleeps.append)


def test_twilio_refusing_the_credentials_makes_the_batch_unavailable_after_one_request(tmp_path):
    fake = FakeTwilio().start()
    calls: list[str] = []
    handle = fake.handle
    fake.handle = lambda path, *rest: (calls.append(path), handle(path, *rest))[1]
    try:
        channel = _twilio(fake, tmp_path, [], NURTURE_TWILIO_AUTH_TOKEN="not-the-token-1234")
        results = channel.send_batch([_sms(1, "+4915112345671"), _sms(2, "+4915112345672"),
                                      _sms(3, "+4915112345673")])
    finally:
        fake.stop()
    assert [(r.message_pk, r.status, r.reason) for r in results] == [
        (pk, "unavailable", "twilio_auth_failed: twilio_20003") for pk in (1, 2, 3)]
    assert len(calls) == 1  # the others were not tried: they would fail alike


def test_twilio_unreachable_makes_the_batch_unavailable(tmp_path):
    fake = FakeTwilio()
    fake.base_url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    sleeps: list[float] = []
    results = _twilio(fake, tmp_path, sleeps).send_batch([_sms(1, "+4915112345671"), _sms(2, "+4915112345672")])
    assert [(r.message_pk, r.status, r.reason) for r in results] == [
        (pk, "unavailable", "twilio_connect_failed: ConnectError") for pk in (1, 2)]
    assert sleeps == [0.5, 1.0, 2.0]  # the first message's backoff only

"""Secrets a provider quotes back are never recorded (issue 10, item 8).

Real parts only: an SMTP server (aiosmtpd) whose AUTH and RCPT replies quote the password, and
the local fake HTTP providers (HubSpot, Meta, Google, LinkedIn, Twilio) answering errors that
quote the token the request carried. Whatever an integration records — a DeliveryResult or
MemberResult reason, a `sync_run` row, the sync's CLI lines, the Prefect artifact — holds the
mask instead of the secret, and the secret nowhere, not even cut in half by a length limit.
"""
from __future__ import annotations

import base64
import json
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from integrations.google import GoogleDestination
from integrations.http_retry import RetryPolicy, scrubbed
from integrations.hubspot import HubSpotDestination
from integrations.linkedin import LinkedInDestination
from integrations.meta import MetaDestination
from integrations.smtp import SmtpChannel
from integrations.twilio import TwilioSettings, TwilioSmsChannel
from nurture.consent_ledger import record_consent
from nurture.redaction import MASK
from nurture.registry import IntegrationContext, OutgoingMessage, SyncBatch, SyncMember
from nurture.segments.sync import sync_segments
from nurture.spec.project import load_project
from nurture.store.db import open_store
from nurture.store.tables import contact_t, sync_run_t
from tests.conftest import utc, write_project
from tests.fakes.google import FakeGoogle
from tests.fakes.http_server import Reply
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.linkedin import FakeLinkedIn
from tests.fakes.meta import FakeMeta
from tests.fakes.twilio import FakeTwilio

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
NOW = utc(2026, 11, 21, 1, 0)
PASSWORD = "Relay-Pa55word-quoted-back"
TOKEN = "pat-na1-0f1e2d3c-quoted-back-token"
SEGMENTS = """
segments:
  - name: vip
    when: {attribute: {vip: true}}
    destinations:
      - {destination: hubspot, list_id: "45"}
"""


def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


# ---------------------------------------------------------------- SMTP


@dataclass
class QuotingRelay:
    """An aiosmtpd handler that quotes credentials back: AUTH is refused with `535 … <the
    password it received>`, and RCPT for `quote@…` is refused quoting the AUTH PLAIN blob."""
    received: list[bytes] = field(default_factory=list)
    accept_login: bool = False

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        password = auth_data.password.decode()
        if self.accept_login:
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad credentials for {password}")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("quote@"):
            blob = _b64(f"\0relay-user\0{PASSWORD}")
            return f"550 5.7.1 relaying denied for {blob} / {PASSWORD}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope.original_content)
        return "250 2.0.0 Accepted"


@pytest.fixture
def relay():
    controllers: list[Controller] = []

    def start(handler: QuotingRelay) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        controller = Controller(handler, hostname="127.0.0.1", port=port, auth_required=True,
                                auth_require_tls=False, authenticator=handler.authenticate)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def _smtp(tmp_path: Path, port: int) -> SmtpChannel:
    env = {"NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_SMTP_PORT": str(port), "NURTURE_SMTP_SECURITY": "none",
           "NURTURE_SMTP_USERNAME": "relay-user", "NURTURE_SMTP_PASSWORD": PASSWORD,
           "NURTURE_FROM_EMAIL": "news@shop.example"}
    return SmtpChannel.from_env(IntegrationContext(tmp_path, tmp_path / ".nurture", env))


def _mail(pk: int, to: str) -> OutgoingMessage:
    return OutgoingMessage(message_pk=pk, rfc_message_id=f"<nurture.{pk}.promo@shop.example>", contact_id=pk,
                           channel="email", journey="promo", step_id="hello", purpose="marketing", to=to,
                           subject="Hi", html="<p>Hi</p>", text="Hi")


def _no_secret(text: str, *secrets: str) -> None:
    assert text, "nothing recorded"
    for secret in secrets:
        for cut in (secret, secret[:12], secret[-12:]):  # not whole, and not half of it either
            assert cut not in text, text


def test_a_535_reply_quoting_the_password_is_recorded_masked(tmp_path, relay):
    channel = _smtp(tmp_path, relay(QuotingRelay()))
    results = channel.send_batch([_mail(1, "a@example.com"), _mail(2, "b@example.com")])
    assert [r.message_pk for r in results] == [1, 2]
    for result in results:
        assert result.reason == f"smtp_auth_failed: 535 5.7.8 bad credentials for {MASK}"
        _no_secret(result.reason, PASSWORD)
    assert PASSWORD not in repr(channel.settings)


def test_a_refusal_quoting_the_password_or_its_auth_plain_encoding_is_recorded_masked(tmp_path, relay):
    handler = QuotingRelay(accept_login=True)
    channel = _smtp(tmp_path, relay(handler))
    quoted, fine = channel.send_batch([_mail(1, "quote@example.com"), _mail(2, "fine@example.com")])
    assert (quoted.status, quoted.suppress) == ("failed", "hard_bounce")
    assert quoted.reason == f"smtp_rcpt_rejected: 550 5.7.1 relaying denied for {MASK} / {MASK}"
    _no_secret(quoted.reason, PASSWORD, _b64(f"\0relay-user\0{PASSWORD}"))
    assert fine.status == "sent" and len(handler.received) == 1


def test_a_long_reply_is_masked_before_it_is_cut_to_length(tmp_path):
    from integrations.smtp import _reply
    reason = _reply(535, "x" * 290 + PASSWORD, (PASSWORD,))
    assert PASSWORD[:5] not in reason and len(reason) <= 300


# ---------------------------------------------------------------- Twilio


def test_twilio_error_text_quoting_the_token_is_recorded_masked(tmp_path):
    fake = FakeTwilio(auth_token="twilio-token-quoted-back-0001", quote_credentials=True).start()
    try:
        env = {"NURTURE_TWILIO_ACCOUNT_SID": fake.account_sid, "NURTURE_TWILIO_AUTH_TOKEN": fake.auth_token,
               "NURTURE_TWILIO_FROM": "+15005550006", "NURTURE_TWILIO_BASE_URL": fake.base_url}
        channel = TwilioSmsChannel(TwilioSettings.from_env(IntegrationContext(tmp_path, tmp_path, env)),
                                   sleep=lambda s: None)
        fake.script["+4930123456789"] = [21211]
        [result] = channel.send_batch([OutgoingMessage(1, "<1@x>", 1, "sms", "deal", "text", "marketing",
                                                       to="+4930123456789", text="Hi")])
    finally:
        fake.stop()
    assert result.status == "failed" and result.reason.startswith("unreachable: twilio_21211: The 'To' number")
    assert MASK in result.reason
    _no_secret(result.reason, fake.auth_token, _b64(f"{fake.account_sid}:{fake.auth_token}"))


# ---------------------------------------------------------------- HTTP destinations

MEMBERS = [SyncMember(1, email="ann@example.com", phone="+4915112345678", country="DE"),
           SyncMember(2, email="bob@example.com")]
QUOTING_401 = {
    "hubspot": Reply(401, {"status": "error", "category": "INVALID_AUTHENTICATION",
                           "message": f"The access token {TOKEN} is expired"}),
    "meta": Reply(400, {"error": {"message": f"Invalid OAuth access token {TOKEN}", "type": "OAuthException",
                                  "code": 190}}),
    "google": Reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                    "message": f"Request had invalid authentication credentials: Bearer {TOKEN}"}}),
    "linkedin": Reply(401, {"status": 401, "serviceErrorCode": 65600, "code": "INVALID_ACCESS_TOKEN",
                            "message": f"Invalid access token {TOKEN}"}),
}
DESTINATIONS = {
    "hubspot": (FakeHubSpot, lambda url: HubSpotDestination(TOKEN, url, RetryPolicy(sleep=lambda s: None)),
                {"list_id": "45"}),
    "meta": (FakeMeta, lambda url: MetaDestination(TOKEN, url, policy=RetryPolicy(sleep=lambda s: None)),
             {"audience_id": "23851234567890"}),
    "google": (FakeGoogle, lambda url: GoogleDestination(TOKEN, url, RetryPolicy(sleep=lambda s: None)),
               {"account_id": "1234567890", "audience_id": "987654"}),
    "linkedin": (FakeLinkedIn, lambda url: LinkedInDestination(TOKEN, url, policy=RetryPolicy(sleep=lambda s: None)),
                 {"dmp_segment_id": "555"}),
}


@pytest.mark.parametrize("name", sorted(DESTINATIONS))
def test_an_error_body_quoting_the_token_never_reaches_a_member_result(name):
    fake_cls, make, target = DESTINATIONS[name]
    server = fake_cls(TOKEN).start()
    try:
        destination = make(server.url)
        server.fail_next(1, QUOTING_401[name])
        results = destination.add(target, MEMBERS, SyncBatch(1))
        destination.close()
    finally:
        server.stop()
    assert [r.ok for r in results] == [False, False]
    for result in results:
        assert MASK in result.reason, result.reason
        _no_secret(result.reason, TOKEN)


def test_a_json_escaped_token_is_masked_too():
    token = "ya29/a0AfH6SM-slashy"
    body = json.dumps({"error": {"message": f"bad token {token}"}}).replace("/", "\\/")  # PHP-style escaping
    response = httpx.Response(401, content=body.encode(), headers={"Content-Type": "application/json"},
                              request=httpx.Request("POST", "http://127.0.0.1/x"))
    clean = scrubbed(response, (token,))
    assert token not in json.dumps(clean.json()) and MASK in clean.json()["error"]["message"]
    assert scrubbed(clean, (token,)) is clean  # nothing left to mask: the same response


# ---------------------------------------------------------------- the sync: sync_run, CLI, artifact


def _project(tmp_path: Path):
    root = write_project(tmp_path / "shop", {}, segments=SEGMENTS)
    store = open_store(f"sqlite:///{tmp_path / 'nurture.db'}")
    with store.engine.begin() as conn:
        for i in range(2):
            cid = conn.execute(contact_t.insert().values(
                email=f"c{i}@example.com", lifecycle_stage="lead", score=0.0, attributes={"vip": True},
                created_at=NOW - timedelta(days=9), updated_at=NOW - timedelta(days=9))).inserted_primary_key[0]
            record_consent(conn, cid, "ads", "granted", source="test", at=NOW - timedelta(days=9))
    return root, store


def test_a_401_quoting_the_token_leaves_no_token_in_the_sync_report_or_sync_run(tmp_path):
    root, store = _project(tmp_path)
    hubspot = FakeHubSpot("the-right-token-of-the-portal").start()
    hubspot.quote_bad_token = True  # our (wrong) token comes back in the 401 body
    env = {"NURTURE_HUBSPOT_TOKEN": TOKEN, "NURTURE_HUBSPOT_BASE_URL": hubspot.url, "NURTURE_SYNC_MAX_ATTEMPTS": "1"}
    try:
        [report] = sync_segments(store, load_project(root), NOW, IntegrationContext(root, root / ".nurture", env))
    finally:
        hubspot.stop()
    assert (report.status, report.failed) == ("failed", 2)
    assert report.errors == [{"reason": f'HTTP 401: {{"status": "error", "message": "The access token {MASK} is not '
                                        f'valid for this portal.", "category": "INVALID_AUTHENTICATION"}}',
                              "count": 2}]
    with store.engine.connect() as conn:
        [run] = conn.execute(select(sync_run_t)).all()
    assert run.status == "failed" and MASK in json.dumps(run.errors)
    _no_secret(repr(report) + json.dumps(report.row()) + repr(tuple(run)), TOKEN)
    store.dispose()


def test_a_plugin_exception_quoting_the_token_is_recorded_masked(tmp_path):
    root, store = _project(tmp_path)

    class Leaky(HubSpotDestination):
        def add(self, target, members, batch):
            raise RuntimeError(f"boom while using {TOKEN}")

    env = {"NURTURE_HUBSPOT_TOKEN": TOKEN}
    [report] = sync_segments(store, load_project(root), NOW, IntegrationContext(root, root / ".nurture", env),
                             factory=lambda name, ctx: Leaky(TOKEN, "http://127.0.0.1:9"))
    with store.engine.connect() as conn:
        runs = conn.execute(select(sync_run_t)).all()
    assert report.status == "failed"
    assert report.errors[0]["reason"] == f"RuntimeError in hubspot: boom while using {MASK}"
    _no_secret(repr(report) + repr([tuple(r) for r in runs]), TOKEN)
    store.dispose()


def test_the_cli_summary_masks_a_secret_in_an_error_line(monkeypatch, capsys):
    from nurture.cli import sync_verbs
    monkeypatch.setenv("NURTURE_HUBSPOT_TOKEN", TOKEN)
    sync_verbs.print_sync_summary([{"segment": "vip", "target": "hubspot:45", "status": "failed", "failed": 2,
                                    "errors": f"HTTP 401: token {TOKEN} (x2)"}])
    out = capsys.readouterr().out
    assert f"HTTP 401: token {MASK} (x2)" in out
    _no_secret(out, TOKEN)


@pytest.mark.prefect
@pytest.mark.xdist_group("prefect")
def test_the_prefect_artifact_and_task_rows_carry_no_quoted_token(tmp_path, monkeypatch, prefect_harness):
    import anyio
    from prefect import get_client

    from flows.runtime import forget_runtimes
    from flows.segment_sync import segment_sync
    root, store = _project(tmp_path)
    store.dispose()
    hubspot = FakeHubSpot("the-right-token-of-the-portal").start()
    hubspot.quote_bad_token = True
    for key, value in {"NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'nurture.db'}",
                       "NURTURE_DATA_DIR": str(root / ".nurture"), "NURTURE_HUBSPOT_TOKEN": TOKEN,
                       "NURTURE_HUBSPOT_BASE_URL": hubspot.url, "NURTURE_SYNC_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    try:
        state = segment_sync(project=str(root), now=NOW, return_state=True)
        rows = state.result()

        async def artifacts():
            async with get_client() as client:
                return await client.read_artifacts()
        found = anyio.run(artifacts)
    finally:
        hubspot.stop()
        forget_runtimes()
    [table] = [a for a in found if a.key == "segment-sync" and a.flow_run_id == state.state_details.flow_run_id]
    data = table.data if isinstance(table.data, str) else json.dumps(table.data)
    assert "failed" in data and MASK in data
    _no_secret(data + json.dumps(rows) + (table.description or ""), TOKEN)

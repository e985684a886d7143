"""E-mail over SMTP, end to end: a journey tick delivers through `email.smtp` to a real SMTP
server (aiosmtpd) on 127.0.0.1, and what arrives is parsed header by header. The server can
answer 4xx / 5xx for chosen recipients (retry with backoff; hard bounce → suppression), and
speak STARTTLS + AUTH or implicit TLS with a certificate made for the test."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from nurture.rendering.email_message import rfc_message_id
from nurture.runtime.tick import run_tick
from nurture.store.tables import suppression_t
from nurture.tokens import verify_token
from tests.conftest import utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber

NOW = utc(2026, 3, 2, 12, 0)
SECRET = "smtp-test-secret-0123456789"
PUBLIC = "https://mail.shop.example"
PASSWORD = "s3cret-Pa55word-for-relay"
PROMO = journey_yaml("promo", """
- id: hello
  send: {channel: email, template: promo, subject: "Hello {{ contact.first_name }} – news inside"}
""")
PROMO_HTML = ('{% extends "layouts/base.html" %}{% block content %}<h1>Hi {{ contact.first_name }}</h1>'
              '<p><a class="button" href="https://shop.example/new?ref=mail">See what is new</a></p>{% endblock %}')
BASE_LAYOUT = (Path(__file__).resolve().parent.parent / "templates" / "layouts" / "base.html").read_text()


@dataclass
class Recorder:
    """aiosmtpd handler: records each accepted message and the connection it came on;
    `replies` maps a recipient to the reply RCPT TO gets instead of 250."""
    replies: dict[str, str] = field(default_factory=dict)
    received: list[tuple[str, list[str], bytes, tuple]] = field(default_factory=list)
    logins_seen: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.replies:
            return self.replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, session.peer))
        return "250 2.0.0 Accepted"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode()
        self.logins_seen.append(login)
        return AuthResult(success=login == "relay-user" and auth_data.password.decode() == PASSWORD, handled=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the client trusts it via NURTURE_SMTP_CA_FILE)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def smtp_server():
    started: list[Controller] = []

    def start(recorder: Recorder, **kwargs) -> int:
        port = _free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return port

    yield start
    for controller in started:
        controller.stop()


def _runtime(make_runtime, port: int, **env: str):
    rt = make_runtime({"promo": PROMO}, templates={"email/promo.html": PROMO_HTML, "layouts/base.html": BASE_LAYOUT})
    rt.env.update({"NURTURE_EMAIL_BACKEND": "smtp", "NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_SMTP_PORT": str(port),
                   "NURTURE_SMTP_SECURITY": "none", "NURTURE_FROM_EMAIL": "news@shop.example",
                   "NURTURE_FROM_NAME": "Shöp News", "NURTURE_SECRET_KEY": SECRET, "NURTURE_PUBLIC_URL": PUBLIC, **env})
    return rt


def _signups(store, *emails: str) -> dict[str, int]:
    ids = {}
    for i, address in enumerate(emails):
        ids[address] = subscriber(store, address, first_name=f"Ann{i}")
        add_event(store, ids[address], "signup", NOW - dt.timedelta(minutes=5))
    return ids


def _header_urls(value: str) -> list[str]:
    return [part.strip().strip("<>") for part in " ".join(value.split()).split(",")]


def test_marketing_email_arrives_complete_and_one_connection_serves_the_batch(make_runtime, store, smtp_server):
    recorder = Recorder()
    rt = _runtime(make_runtime, smtp_server(recorder))
    ids = _signups(store, "ann0@example.com", "bob@example.com", "cy@example.com")

    run_tick(rt, "promo", NOW)

    rows = {m.address: m for m in messages(store, journey="promo")}
    assert {a: (m.status, m.reason) for a, m in rows.items()} == {a: ("sent", None) for a in ids}
    assert len(recorder.received) == 3
    assert len({peer for *_, peer in recorder.received}) == 1  # one SMTP connection for the batch
    for mail_from, rcpt_tos, raw, _ in recorder.received:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        to = rcpt_tos[0]
        row = rows[to]
        assert mail_from == "news@shop.example"
        assert msg["From"].addresses[0].addr_spec == "news@shop.example"
        assert msg["From"].addresses[0].display_name == "Shöp News"
        assert msg["To"].addresses[0].addr_spec == to
        assert str(msg["Subject"]).startswith("Hello Ann") and "– news inside" in str(msg["Subject"])
        assert msg["Message-ID"] == rfc_message_id(row.id, "promo", "news@shop.example") == row.provider_id
        assert msg["Date"] is not None and msg["MIME-Version"] == "1.0"
        # RFC 8058 one-click + RFC 2369 mailto
        https_url, mailto = _header_urls(str(msg["List-Unsubscribe"]))
        assert https_url.startswith(f"{PUBLIC}/u/") and mailto.startswith("mailto:unsubscribe@shop.example")
        claims = verify_token(SECRET, https_url.rsplit("/", 1)[1], "unsubscribe")
        assert claims is not None and claims.contact_id == ids[to] and claims.purpose == "marketing"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # multipart/alternative: text first, then HTML
        assert msg.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in msg.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        assert f'href="{https_url}"' in html and ">Unsubscribe</a>" in html  # visible, untagged
        link = next(u for u in (h.split('"')[0] for h in html.split('href="')[1:]) if "shop.example/new" in u)
        query = parse_qs(urlsplit(link.replace("&amp;", "&")).query)
        assert query == {"ref": ["mail"], "utm_source": ["nurture"], "utm_medium": ["email"],
                         "utm_campaign": ["promo"], "utm_content": ["hello"]}
        assert "utm_campaign=promo" in text and https_url in text


@pytest.mark.parametrize("smtputf8", [True, False])
def test_international_addresses_go_in_ascii_form_and_one_no_server_can_take_fails_alone(make_runtime, store,
                                                                                         smtp_server, smtputf8):
    """An internationalised domain goes as its IDNA A-labels, in RCPT TO and in the To header.
    A non-ASCII local part needs a server that offers SMTPUTF8 (RFC 6531, RFC 6532 headers);
    without one, that message alone fails — before, formataddr's UnicodeEncodeError (or
    smtplib's) escaped the batch, and every message of it stayed queued on every tick."""
    recorder = Recorder()
    rt = _runtime(make_runtime, smtp_server(recorder, enable_SMTPUTF8=smtputf8))
    _signups(store, "uni@exämple.com", "jü@example.com", "bob@example.com")
    with store.engine.begin() as conn:  # a name that formataddr must encode
        from nurture.store.tables import contact_t
        conn.execute(contact_t.update().where(contact_t.c.email == "uni@exämple.com").values(first_name="Jürgen"))

    run_tick(rt, "promo", NOW)

    rows = {m.address: (m.status, (m.reason or "").split(":")[0]) for m in messages(store, journey="promo")}
    assert rows == {"uni@exämple.com": ("sent", ""), "bob@example.com": ("sent", ""),
                    "jü@example.com": ("sent", "") if smtputf8 else ("failed", "smtputf8_unsupported")}
    got = {}
    for _, rcpt_tos, raw, _ in recorder.received:
        msg = email.message_from_string(raw.decode("utf-8"), policy=email.policy.SMTPUTF8)
        got[rcpt_tos[0]] = (msg["To"].addresses[0].addr_spec, msg["To"].addresses[0].display_name)
    expected = {"uni@xn--exmple-cua.com": ("uni@xn--exmple-cua.com", "Jürgen"), "bob@example.com": ("bob@example.com", "Ann2")}
    if smtputf8:
        expected["jü@example.com"] = ("jü@example.com", "Ann1")
    assert got == expected


def test_a_sender_on_an_international_domain_goes_as_a_labels_and_every_message_arrives(make_runtime, store,
                                                                                        smtp_server):
    """NURTURE_FROM_EMAIL=news@bücher.example: MAIL FROM, the From header, the Message-ID and the
    List-Unsubscribe mailto carry the domain's A-labels (docs/delivery.md). Before, only the
    recipient was converted: smtplib could not write MAIL FROM (UnicodeEncodeError), the error
    escaped the channel, and every message of the batch became `failed / delivery_unknown`
    although none had left — on every tick."""
    recorder = Recorder()
    rt = _runtime(make_runtime, smtp_server(recorder), NURTURE_FROM_EMAIL="Bücherei <news@bücher.example>")
    _signups(store, "bob@example.com", "cy@example.com", "dee@example.com")

    run_tick(rt, "promo", NOW)

    assert [(m.status, m.reason) for m in messages(store, journey="promo")] == [("sent", None)] * 3
    assert len(recorder.received) == 3
    for mail_from, _, raw, _ in recorder.received:
        assert mail_from == "news@xn--bcher-kva.example"
        assert raw.isascii(), "no SMTPUTF8 was negotiated: the message must be 7-bit"
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        (sender,) = msg["From"].addresses
        assert (sender.display_name, sender.addr_spec) == ("Shöp News", "news@xn--bcher-kva.example")
        assert msg["Message-ID"].endswith("@xn--bcher-kva.example>")
        raw_head = raw.split(b"\r\n\r\n")[0].decode()
        unsubscribe = " ".join(raw_head.split("List-Unsubscribe: ", 1)[1].split("\r\nList-Unsubscribe-Post")[0].split())
        assert "=?" not in unsubscribe, unsubscribe  # a structured header: URLs in <>, never encoded-words
        assert unsubscribe.endswith(", <mailto:unsubscribe@xn--bcher-kva.example?subject=unsubscribe>"), unsubscribe


@pytest.mark.parametrize("smtputf8", [True, False])
def test_a_sender_with_a_non_ascii_local_part_goes_with_smtputf8_else_every_message_stays_queued(
        make_runtime, store, smtp_server, smtputf8):
    """jörg@bücher.example is an address only a server that offers SMTPUTF8 (RFC 6531) takes:
    with one, MAIL FROM goes with SMTPUTF8 (the domain still as A-labels); without one, no
    message can go, and none is to blame — they stay queued, no attempt counted, with a reason
    naming the setting (before: `failed / delivery_unknown` for every message)."""
    recorder = Recorder()
    rt = _runtime(make_runtime, smtp_server(recorder, enable_SMTPUTF8=smtputf8),
                  NURTURE_FROM_EMAIL="jörg@bücher.example")
    _signups(store, "bob@example.com", "cy@example.com")

    run_tick(rt, "promo", NOW)

    rows = [(m.status, m.reason, m.attempts) for m in messages(store, journey="promo")]
    if smtputf8:
        assert [r[:2] for r in rows] == [("sent", None)] * 2
        assert [mail_from for mail_from, _, _, _ in recorder.received] == ["jörg@xn--bcher-kva.example"] * 2
    else:
        assert rows == [("queued", rows[0][1], 0)] * 2
        assert rows[0][1].startswith("smtputf8_unsupported: NURTURE_FROM_EMAIL"), rows[0][1]
        assert recorder.received == []


def test_a_sender_domain_without_an_ascii_form_keeps_every_email_queued_naming_the_setting(make_runtime, store,
                                                                                           smtp_server):
    """A domain IDNA refuses (an emoji, an underscore: a typo) fits in neither MAIL FROM nor a
    Message-ID: the channel will not send, the messages stay queued, and the reason says which
    setting to fix (before: every message `failed / delivery_unknown`)."""
    recorder = Recorder()
    rt = _runtime(make_runtime, smtp_server(recorder), NURTURE_FROM_EMAIL="news@bü_cher.example")
    _signups(store, "bob@example.com", "cy@example.com")

    run_tick(rt, "promo", NOW)

    rows = [(m.status, m.attempts, m.reason) for m in messages(store, journey="promo")]
    assert [r[:2] for r in rows] == [("queued", 0)] * 2
    assert "NURTURE_FROM_EMAIL: the domain of 'news@bü_cher.example' has no IDNA A-label form" in rows[0][2]
    assert recorder.received == []


def test_an_address_smtp_cannot_write_fails_that_message_alone_and_is_never_in_doubt(smtp_server, tmp_path):
    """smtplib refuses to write a command it cannot encode (UnicodeEncodeError) or one holding a
    line break (ValueError: here an address parseaddr cannot read, which smtplib then passes on
    as it is). Nothing of that message left, so it is `failed` for what it is and the journal
    answers "not delivered"; the rest of the batch goes on the same connection. Before, the
    error escaped the channel and every message of the batch was `delivery_unknown`."""
    from integrations.smtp import HandoverJournal, SmtpChannel, SmtpSettings
    from nurture.registry import OutgoingMessage
    recorder = Recorder()
    settings = SmtpSettings(host="127.0.0.1", port=smtp_server(recorder), security="none",
                            from_email="news@shop.example", from_name="Shop")
    channel = SmtpChannel(settings, HandoverJournal(tmp_path / "journal"))

    def message(pk: int, to: str) -> OutgoingMessage:
        return OutgoingMessage(message_pk=pk, rfc_message_id=rfc_message_id(pk, "promo", "news@shop.example"),
                               contact_id=pk, channel="email", journey="promo", step_id="hello",
                               purpose="marketing", to=to, subject="Hi", html="<p>Hi</p>", text="Hi")

    batch = [message(1, "@\r\n"), message(2, "cy@example.com")]
    results = channel.send_batch(batch)

    assert [(r.message_pk, r.status) for r in results] == [(1, "failed"), (2, "sent")]
    assert results[0].reason.startswith("smtp_command_error: ValueError: "), results[0].reason
    assert "delivery_unknown" not in results[0].reason
    assert channel.was_delivered(1, batch[0].rfc_message_id) is False
    assert [rcpt_tos for _, rcpt_tos, _, _ in recorder.received] == [["cy@example.com"]]


@dataclass
class Dropping(Recorder):
    """Takes each message, then closes the connection instead of answering its final "." for
    the recipients in `drop_after_data`, and at RCPT for those in `drop_at_rcpt`."""
    drop_after_data: set = field(default_factory=set)
    drop_at_rcpt: set = field(default_factory=set)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.drop_at_rcpt:
            self.drop_at_rcpt.discard(address)  # once
            server.transport.close()
            return "250 OK"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        answer = await super().handle_DATA(server, session, envelope)
        if envelope.rcpt_tos[0] in self.drop_after_data:
            server.transport.close()  # the message is taken; its 250 never reaches the client
        return answer


def test_a_connection_lost_during_data_is_never_sent_again_and_one_lost_before_is_retried(make_runtime, store,
                                                                                           smtp_server):
    """sendmail could not tell the two apart: both were retried, and the message the server had
    taken before the connection dropped went out twice."""
    recorder = Dropping(drop_after_data={"taken@example.com"}, drop_at_rcpt={"early@example.com"})
    rt = _runtime(make_runtime, smtp_server(recorder))
    _signups(store, "taken@example.com", "early@example.com", "bob@example.com")
    run_tick(rt, "promo", NOW)
    run_tick(rt, "promo", NOW + dt.timedelta(hours=1))  # the retry's backoff is over
    rows = {m.address: (m.status, (m.reason or "").split(":")[0]) for m in messages(store, journey="promo")}
    assert rows == {"taken@example.com": ("failed", "delivery_unknown"), "early@example.com": ("sent", ""),
                    "bob@example.com": ("sent", "")}
    delivered = sorted(rcpt_tos[0] for _, rcpt_tos, _, _ in recorder.received)
    assert delivered == ["bob@example.com", "early@example.com", "taken@example.com"]  # each once


def test_4xx_is_retried_on_a_later_tick_and_5xx_becomes_a_hard_bounce_suppression(make_runtime, store, smtp_server):
    recorder = Recorder(replies={"busy@example.com": "451 4.2.1 Mailbox busy, try later",
                                 "gone@example.com": "550 5.1.1 No such user",
                                 "closing@example.com": "421 4.3.2 Service shutting down"})
    rt = _runtime(make_runtime, smtp_server(recorder))
    ids = _signups(store, "busy@example.com", "gone@example.com", "closing@example.com", "fine@example.com")

    run_tick(rt, "promo", NOW)

    rows = {m.address: m for m in messages(store, journey="promo")}
    assert (rows["fine@example.com"].status, rows["fine@example.com"].reason) == ("sent", None)
    # 421 closes the connection: that message waits, the next one goes out on a new connection.
    closing = rows["closing@example.com"]
    assert closing.status == "queued" and closing.reason.startswith("smtp_rcpt_deferred: 421")
    busy = rows["busy@example.com"]
    assert busy.status == "queued" and busy.due_at > NOW and busy.reason.startswith("smtp_rcpt_deferred: 451")
    gone = rows["gone@example.com"]
    assert gone.status == "failed" and gone.reason.startswith("smtp_rcpt_rejected: 550 5.1.1")
    with store.engine.connect() as conn:
        sup = conn.execute(select(suppression_t)).all()
    assert [(s.contact_id, s.address, s.channel, s.reason) for s in sup] == \
        [(ids["gone@example.com"], "gone@example.com", "email", "hard_bounce")]
    assert [r[1] for r in recorder.received] == [["fine@example.com"]]

    # The mailbox recovers; the retry goes out once its backoff has passed, exactly once.
    del recorder.replies["busy@example.com"]
    run_tick(rt, "promo", NOW + dt.timedelta(minutes=1))
    assert messages(store, address="busy@example.com")[0].status == "queued"
    run_tick(rt, "promo", busy.due_at)
    assert messages(store, address="busy@example.com")[0].status == "sent"
    assert [r[1] for r in recorder.received] == [["fine@example.com"], ["busy@example.com"]]


def test_starttls_with_login_delivers_and_a_wrong_password_never_leaks(make_runtime, store, smtp_server, tmp_path):
    cert, key = _certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    recorder = Recorder()
    port = smtp_server(recorder, tls_context=tls, require_starttls=True, auth_required=True,
                       authenticator=recorder.authenticate)
    rt = _runtime(make_runtime, port, NURTURE_SMTP_SECURITY="starttls", NURTURE_SMTP_CA_FILE=str(cert),
                  NURTURE_SMTP_USERNAME="relay-user", NURTURE_SMTP_PASSWORD="wrong-" + PASSWORD)
    _signups(store, "tls@example.com")

    run_tick(rt, "promo", NOW)
    row = messages(store, journey="promo")[0]
    assert row.status == "queued" and row.reason.startswith("smtp_auth_failed: 535")
    assert PASSWORD not in row.reason and recorder.received == [] and set(recorder.logins_seen) == {"relay-user"}

    rt.close()  # new credentials: a new channel
    rt.env["NURTURE_SMTP_PASSWORD"] = PASSWORD
    run_tick(rt, "promo", row.due_at)
    assert messages(store, journey="promo")[0].status == "sent"
    assert [r[1] for r in recorder.received] == [["tls@example.com"]]


def test_implicit_tls_on_the_submissions_port_style(make_runtime, store, smtp_server, tmp_path):
    cert, key = _certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    recorder = Recorder()
    port = smtp_server(recorder, ssl_context=tls)
    rt = _runtime(make_runtime, port, NURTURE_SMTP_SECURITY="ssl", NURTURE_SMTP_CA_FILE=str(cert))
    _signups(store, "implicit@example.com")
    run_tick(rt, "promo", NOW)
    assert messages(store, journey="promo")[0].status == "sent"
    assert len(recorder.received) == 1


def test_unreachable_server_keeps_every_message_queued_for_a_later_tick(make_runtime, store):
    rt = _runtime(make_runtime, _free_port())  # nothing listens there
    _signups(store, "a@example.com", "b@example.com")
    run_tick(rt, "promo", NOW)
    rows = messages(store, journey="promo")
    assert [(r.status, r.reason) for r in rows] == [("queued", "smtp_connect_failed: ConnectionRefusedError")] * 2


@pytest.mark.parametrize("env, problem", [
    ({"NURTURE_SMTP_HOST": ""}, "NURTURE_SMTP_HOST"),
    ({"NURTURE_SMTP_SECURITY": "tls13"}, "NURTURE_SMTP_SECURITY must be one of none, starttls, ssl"),
    ({"NURTURE_SMTP_USERNAME": "u"}, "set both NURTURE_SMTP_USERNAME and NURTURE_SMTP_PASSWORD"),
    ({"NURTURE_FROM_EMAIL": ""}, "NURTURE_FROM_EMAIL"),
])
def test_misconfiguration_is_a_clear_error_naming_the_setting(tmp_path, env, problem):
    from nurture.registry import IntegrationContext, IntegrationError, channel_for
    base = {"NURTURE_EMAIL_BACKEND": "smtp", "NURTURE_SMTP_HOST": "127.0.0.1", "NURTURE_FROM_EMAIL": "a@b.example"}
    with pytest.raises(IntegrationError, match=problem):
        channel_for("email", IntegrationContext(tmp_path, tmp_path, {**base, **env}))

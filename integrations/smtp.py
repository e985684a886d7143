"""`email.smtp`: e-mail delivery over SMTP (`NURTURE_EMAIL_BACKEND=smtp`).

One connection per batch (connect, optional STARTTLS or implicit TLS, optional AUTH), one
transaction per message, results per recipient:
- 2xx: `sent` (provider id: the message's Message-ID);
- 4xx on RCPT or DATA, or a dropped connection: `retry` (the engine re-queues the row with
  backoff and tries again on a later tick);
- 5xx on RCPT: `failed` and a `hard_bounce` suppression for the address;
- 5xx on DATA or MAIL: `failed` (the message, not the address, was refused).

Settings come from the environment: NURTURE_SMTP_HOST, NURTURE_SMTP_PORT,
NURTURE_SMTP_USERNAME, NURTURE_SMTP_PASSWORD, NURTURE_SMTP_SECURITY (none | starttls | ssl),
NURTURE_SMTP_TIMEOUT (seconds), NURTURE_SMTP_CA_FILE (extra CA bundle for a private relay),
NURTURE_FROM_EMAIL, NURTURE_FROM_NAME. The password is held as a SecretStr and never appears
in a result, log line or error message.
"""
from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Sequence

from pydantic import SecretStr

from nurture.registry import Channel, DeliveryResult, IntegrationContext, IntegrationError, OutgoingMessage
from nurture.rendering.email_message import build_email_bytes

SECURITY = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str
    username: Optional[str]
    password: Optional[SecretStr]
    from_email: str
    from_name: str
    timeout: float = 30.0
    ca_file: Optional[str] = None

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "SmtpSettings":
        host = context.setting("NURTURE_SMTP_HOST")
        if not host:
            raise IntegrationError("NURTURE_EMAIL_BACKEND=smtp needs NURTURE_SMTP_HOST")
        security = (context.setting("NURTURE_SMTP_SECURITY") or "starttls").lower()
        if security not in SECURITY:
            raise IntegrationError(f"NURTURE_SMTP_SECURITY must be one of {', '.join(SECURITY)}, not '{security}'")
        try:
            port = int(context.setting("NURTURE_SMTP_PORT") or DEFAULT_PORTS[security])
            timeout = float(context.setting("NURTURE_SMTP_TIMEOUT") or 30)
        except ValueError:
            raise IntegrationError("NURTURE_SMTP_PORT and NURTURE_SMTP_TIMEOUT must be numbers") from None
        username = context.setting("NURTURE_SMTP_USERNAME") or None
        password = context.setting("NURTURE_SMTP_PASSWORD") or None
        if bool(username) != bool(password):
            raise IntegrationError("set both NURTURE_SMTP_USERNAME and NURTURE_SMTP_PASSWORD, or neither")
        from_email = context.setting("NURTURE_FROM_EMAIL")
        if not from_email or "@" not in from_email:
            raise IntegrationError("NURTURE_EMAIL_BACKEND=smtp needs NURTURE_FROM_EMAIL (the sender address)")
        return cls(host=host, port=port, security=security, username=username,
                   password=SecretStr(password) if password else None, from_email=from_email,
                   from_name=context.setting("NURTURE_FROM_NAME") or "", timeout=timeout,
                   ca_file=context.setting("NURTURE_SMTP_CA_FILE") or None)


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {' '.join(text.split())}"[:300]


class SmtpChannel(Channel):
    name = "email.smtp"
    channel = "email"

    def __init__(self, settings: SmtpSettings):
        self.settings = settings

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "SmtpChannel":
        return cls(SmtpSettings.from_env(context))

    # -- connection
    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.ca_file:
            context.load_verify_locations(cafile=self.settings.ca_file)
        return context

    def connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._tls_context())
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            client.ehlo()
            if s.security == "starttls":
                client.starttls(context=self._tls_context())
                client.ehlo()
            if s.username and s.password:
                client.login(s.username, s.password.get_secret_value())
        except BaseException:
            _quietly_close(client)
            raise
        return client

    # -- delivery
    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        if not messages:
            return results
        client: Optional[smtplib.SMTP] = None
        try:
            for position, m in enumerate(messages):
                if client is None:
                    try:
                        client = self.connect()
                    except smtplib.SMTPAuthenticationError as exc:
                        # Credentials are wrong: nothing in this batch can go; retry later.
                        reason = f"smtp_auth_failed: {_reply(exc.smtp_code, exc.smtp_error)}"
                        return results + [DeliveryResult(x.message_pk, "retry", reason=reason) for x in messages[position:]]
                    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                        reason = f"smtp_connect_failed: {type(exc).__name__}"
                        return results + [DeliveryResult(x.message_pk, "retry", reason=reason) for x in messages[position:]]
                result, keep = self._send_one(client, m)
                results.append(result)
                if not keep:
                    _quietly_close(client)
                    client = None
        finally:
            if client is not None:
                try:
                    client.quit()
                except (OSError, smtplib.SMTPException):
                    _quietly_close(client)
        return results

    def _send_one(self, client: smtplib.SMTP, m: OutgoingMessage) -> tuple[DeliveryResult, bool]:
        """(result, whether the connection is still usable)."""
        s = self.settings
        if not m.to:
            return DeliveryResult(m.message_pk, "failed", reason="no_address"), True
        data = build_email_bytes(message_id=m.rfc_message_id, from_addr=s.from_email, from_name=s.from_name,
                                 to_addr=m.to, to_name=m.to_name, subject=m.subject, html=m.html, text=m.text,
                                 date=m.created_at or datetime.now(timezone.utc), extra_headers=m.headers)
        try:
            refused = client.sendmail(s.from_email, [m.to], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, message = next(iter(exc.recipients.values()))
            if 400 <= code < 500:  # 421: the server is closing the connection (smtplib closed it)
                return DeliveryResult(m.message_pk, "retry", reason=f"smtp_rcpt_deferred: {_reply(code, message)}"), code != 421
            return DeliveryResult(m.message_pk, "failed", reason=f"smtp_rcpt_rejected: {_reply(code, message)}",
                                  suppress="hard_bounce"), True
        except smtplib.SMTPSenderRefused as exc:
            status = "retry" if 400 <= exc.smtp_code < 500 else "failed"
            return (DeliveryResult(m.message_pk, status, reason=f"smtp_sender_refused: {_reply(exc.smtp_code, exc.smtp_error)}"),
                    exc.smtp_code != 421)
        except smtplib.SMTPDataError as exc:
            status = "retry" if 400 <= exc.smtp_code < 500 else "failed"
            return (DeliveryResult(m.message_pk, status, reason=f"smtp_data_refused: {_reply(exc.smtp_code, exc.smtp_error)}"),
                    exc.smtp_code != 421)
        except (smtplib.SMTPServerDisconnected, socket.timeout, OSError) as exc:
            return DeliveryResult(m.message_pk, "retry", reason=f"smtp_connection_lost: {type(exc).__name__}"), False
        except smtplib.SMTPException as exc:
            return DeliveryResult(m.message_pk, "retry", reason=f"smtp_error: {type(exc).__name__}"), False
        if refused:  # a single recipient: only reachable if the server answered oddly
            code, message = refused[m.to]
            return DeliveryResult(m.message_pk, "retry", reason=f"smtp_rcpt_deferred: {_reply(code, message)}"), True
        return DeliveryResult(m.message_pk, "sent", provider_id=m.rfc_message_id), True


def _quietly_close(client: smtplib.SMTP) -> None:
    try:
        client.close()
    except OSError:
        pass

"""`email.smtp`: e-mail delivery over SMTP (`NURTURE_EMAIL_BACKEND=smtp`).

One connection per batch (connect, optional STARTTLS or implicit TLS, optional AUTH), one
transaction per message, results per recipient:
- 2xx: `sent` (provider id: the message's Message-ID);
- 4xx on RCPT or DATA, or a dropped connection: `retry` (the engine re-queues the row with
  backoff and tries again on a later tick);
- 5xx on RCPT: `failed` and a `hard_bounce` suppression for the address;
- 5xx on DATA or MAIL: `failed` (the message, not the address, was refused);
- MAIL or RCPT that smtplib cannot write from the message's addresses: `failed`
  (`smtp_command_error`: nothing was handed over, and the same message would fail again);
- the channel itself cannot be used — the connection cannot be made (refused, timeout, TLS
  certificate refused, a 421 greeting) or AUTH is refused (a wrong password): `unavailable`
  for every message of the batch not yet handed over, reason `smtp_connect_failed: …` or
  `smtp_auth_failed: 535 …` (or `smtputf8_unsupported: NURTURE_FROM_EMAIL …`: a sender with a
  non-ASCII local part, and a server that does not offer SMTPUTF8). Those messages go back to
  the queue unchanged and the attempt does not count against them: a wrong password must not
  use up their retries.

Settings come from the environment: NURTURE_SMTP_HOST, NURTURE_SMTP_PORT,
NURTURE_SMTP_USERNAME, NURTURE_SMTP_PASSWORD, NURTURE_SMTP_SECURITY (none | starttls | ssl),
NURTURE_SMTP_TIMEOUT (seconds), NURTURE_SMTP_CA_FILE (extra CA bundle for a private relay),
NURTURE_FROM_EMAIL, NURTURE_FROM_NAME. The password is held as a SecretStr and never appears
in a result, log line or error message: a server reply that quotes it (`535 bad credentials
for <password>`, or the base64 that AUTH PLAIN / LOGIN sent) goes through
`nurture.redaction.redact` before it is shortened and recorded.

The hand-over journal: what `was_delivered` answers after a crash
-----------------------------------------------------------------
A worker killed in the middle of a batch leaves its messages `sending`, and the next tick asks
`was_delivered` about each. So that only the messages really in doubt are in doubt, the channel
appends to `<data dir>/smtp-journal/<YYYY-MM-DD>_<boot>.log` (the UTC day the batch started;
`<boot>`: the machine's boot id) one line per step, each with one plain `write()` to an
`O_APPEND` file:

    Q <Message-ID>    every message of the batch, in one write, before connecting
    H <Message-ID>    just before the message is handed to the server (MAIL … DATA)
    A <Message-ID>    the server accepted it (250 after DATA)
    R <Message-ID>    the server refused it (MAIL, RCPT or DATA answered 4xx / 5xx)

The latest line of a Message-ID gives the answer: `A` → True (recorded `sent`); `Q` or `R` →
False (never handed over, or refused: safe to re-queue); `H` → None (handed over, no answer
recorded: `failed` / `delivery_unknown`, never sent twice). A Message-ID the journal does not
know — the crash came before the batch reached the channel, another machine sent it, its file
was pruned — is None as well.

A `write()` that returned is in the kernel's page cache: it survives the death of the process
(SIGKILL, the OOM killer) without an fsync per message. A crash of the *machine* (power loss,
kernel panic) may lose the last lines of the journal. That is why the boot id names the file:
a `Q` or `H` line written before the machine last booted answers None, never False, so a
message handed over just before the machine died becomes `delivery_unknown` rather than being
sent a second time; a lost `A` line likewise leaves None. (Without a boot id — not Linux —
that protection is absent: a lost `H` line behind a surviving `Q` could let a message go out
twice after a power loss.) A journal that cannot be written (disk full) makes the channel
`unavailable`: nothing is handed over that the journal could not vouch for.

Several delivery processes append to the same file (a line is one `write()`). `was_delivered`
reads the journal once into an index and later reads only what was appended since (one
`stat` per file per question), so reconciling thousands of messages costs one pass over the
journal; the next `send_batch` drops the index. Files of days more than 7 days back are
deleted when a batch starts.

Re-queueing `failed` / `delivery_unknown` e-mail after checking the provider
-----------------------------------------------------------------------------
Such a message may or may not have reached its recipient, and Nurture does not guess. An
operator settles it:
1. list them: `SELECT id, journey, address, claimed_at FROM message WHERE channel = 'email'
   AND status = 'failed' AND reason LIKE 'delivery_unknown%'` (`HandoverJournal.in_doubt()`
   lists the Message-IDs the journal has as handed over without an answer);
2. look each one up at the provider — the relay's mail log, the ESP's activity search — by its
   Message-ID, `<nurture.<id>.<journey, - for _>@<domain of NURTURE_FROM_EMAIL>>`, or by
   recipient and `claimed_at`;
3. if the provider accepted none of them (of a journey): `nurture requeue --reason
   delivery_unknown [--journey NAME] [--dry-run]` puts them back in the queue; the next tick
   sends them after checking consent, suppression, quiet hours and frequency caps again, as
   for every delivery attempt. If it accepted some, record those first, so that the requeue
   leaves them alone: `UPDATE message SET status = 'sent', reason = 'confirmed_by_operator',
   sent_at = claimed_at WHERE id IN (…) AND status = 'failed' AND reason LIKE
   'delivery_unknown%'`.
"""
from __future__ import annotations

import base64
import os
import re
import smtplib
import socket
import ssl
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Optional, Sequence

from pydantic import SecretStr

from nurture.email_address import ascii_address
from nurture.redaction import redact, secrets_in
from nurture.registry import Channel, DeliveryResult, IntegrationContext, IntegrationError, OutgoingMessage
from nurture.rendering.email_message import build_email_bytes
from nurture.send.lease import boot_id as current_boot_id  # (the journal names its files by it)
from nurture.settings import EnvSettings, Settings, setting

SECURITY = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
JOURNAL_DIR = "smtp-journal"
JOURNAL_KEEP_DAYS = 7


class SmtpSettings(EnvSettings):
    """The relay and its credentials. The sender (`from_email`, `from_name`) is the engine's
    NURTURE_FROM_EMAIL / NURTURE_FROM_NAME; `port` is resolved from `security` when unset."""
    host: Optional[str] = setting("NURTURE_SMTP_HOST", doc="The SMTP relay's host name (required for smtp).")
    port: Optional[int] = setting("NURTURE_SMTP_PORT", doc="The relay's port (unset: 25, 587 or 465 by security).")
    security: str = setting("NURTURE_SMTP_SECURITY", "starttls", doc="none, starttls or ssl (implicit TLS).")
    username: Optional[str] = setting("NURTURE_SMTP_USERNAME", doc="AUTH user name (with the password, or neither).")
    password: Optional[SecretStr] = setting("NURTURE_SMTP_PASSWORD", doc="AUTH password.")
    timeout: float = setting("NURTURE_SMTP_TIMEOUT", 30.0, doc="Seconds to wait for the relay.")
    ca_file: Optional[str] = setting("NURTURE_SMTP_CA_FILE", doc="An extra CA bundle (PEM) for a private relay.")
    from_email: str = ""
    from_name: str = ""

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "SmtpSettings":
        raw = cls.values_in(context.env)
        host = raw.get("host")
        if not host:
            raise IntegrationError("NURTURE_EMAIL_BACKEND=smtp needs NURTURE_SMTP_HOST")
        security = raw.get("security", "starttls").lower()
        if security not in SECURITY:
            raise IntegrationError(f"NURTURE_SMTP_SECURITY must be one of {', '.join(SECURITY)}, not '{security}'")
        try:
            port = int(raw.get("port") or DEFAULT_PORTS[security])
            timeout = float(raw.get("timeout") or 30)
        except ValueError:
            raise IntegrationError("NURTURE_SMTP_PORT and NURTURE_SMTP_TIMEOUT must be numbers") from None
        username, password = raw.get("username"), raw.get("password")
        if bool(username) != bool(password):
            raise IntegrationError("set both NURTURE_SMTP_USERNAME and NURTURE_SMTP_PASSWORD, or neither")
        engine = Settings.from_env(context.env)
        if not engine.is_set("from_email") or "@" not in engine.from_email:
            raise IntegrationError("NURTURE_EMAIL_BACKEND=smtp needs NURTURE_FROM_EMAIL (the sender address)")
        return cls(host=host, port=port, security=security, username=username, password=password,
                   from_email=engine.from_email, from_name=engine.from_name or "", timeout=timeout,
                   ca_file=raw.get("ca_file"))


def _reply(code: int, message: bytes | str, secrets: Sequence[str] = ()) -> str:
    """A server reply as a reason: secrets masked first, then whitespace folded and cut."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    text = redact(text, secrets) or ""
    return f"{code} {' '.join(text.split())}"[:300]


_SENDER_NEEDS_SMTPUTF8 = ("smtputf8_unsupported: NURTURE_FROM_EMAIL has a non-ASCII local part, which only a server "
                         "that offers SMTPUTF8 (RFC 6531) takes; this one does not")


# ---------------------------------------------------------------- the hand-over journal

QUEUED, HANDED, ACCEPTED, REFUSED = "Q", "H", "A", "R"
_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})_([0-9A-Za-z]+)\.log$")
# The latest line of a Message-ID -> was_delivered. Lower case: written before the machine
# last booted (lines after it may be lost), so a hand-over that left no trace is possible.
_ANSWER: dict[str, Optional[bool]] = {"A": True, "a": True, "R": False, "r": False, "Q": False, "q": None,
                                      "H": None, "h": None}


def _key(rfc_message_id: str) -> str:
    return "".join(rfc_message_id.split())  # a line holds one token, whatever the id contains


class JournalBatch:
    """The journal lines of one `send_batch`, appended to one file (opened at the batch's
    start, so a batch that runs past midnight stays in one file)."""

    def __init__(self, fd: int):
        self.fd = fd

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.fd, data):]

    def queued(self, rfc_message_ids: Iterable[str]) -> None:
        self._write("".join(f"{QUEUED} {_key(i)}\n" for i in rfc_message_ids).encode("utf-8", "replace"))

    def mark(self, state: str, rfc_message_id: str) -> None:
        self._write(f"{state} {_key(rfc_message_id)}\n".encode("utf-8", "replace"))

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class HandoverJournal:
    """Which messages the channel handed to the server, and what the server answered (see the
    module docstring: line format, crash semantics, retention)."""

    def __init__(self, folder: Path, *, keep_days: int = JOURNAL_KEEP_DAYS, boot_id: Optional[str] = None):
        self.folder = Path(folder)
        self.keep_days = keep_days
        self.boot_id = boot_id or current_boot_id()
        self._pruned: Optional[date] = None
        self._index: Optional[dict[str, str]] = None  # Message-ID -> latest state
        self._offsets: dict[str, int] = {}  # file name -> bytes already indexed

    # -- writing
    def begin(self, rfc_message_ids: Iterable[str]) -> JournalBatch:
        """Open today's file and record the batch's messages as queued (raises OSError)."""
        today = datetime.now(timezone.utc).date()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._pruned != today:
            self.prune(today)
        path = self.folder / f"{today.isoformat()}_{self.boot_id}.log"
        batch = JournalBatch(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        try:
            batch.queued(rfc_message_ids)
        except BaseException:
            batch.close()
            raise
        return batch

    def prune(self, today: date) -> None:
        """Delete the files of days more than `keep_days` before `today`."""
        oldest = (today - timedelta(days=self.keep_days)).isoformat()
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            match = _FILE.match(name)
            if match and match.group(1) < oldest:
                try:
                    os.unlink(self.folder / name)
                except OSError:
                    pass
        self._pruned = today

    # -- reading
    def state(self, rfc_message_id: str) -> Optional[str]:
        """The latest journal state of a Message-ID (Q H A R; lower case when written before
        the last boot), or None when the journal does not know it."""
        key = _key(rfc_message_id)
        if self._index is not None and self._index.get(key) in ("A", "a"):
            return self._index[key]  # final: no need to look for newer lines
        self._refresh()
        assert self._index is not None
        return self._index.get(key)

    def forget(self) -> None:
        """Drop the index (it is rebuilt on the next question)."""
        self._index = None
        self._offsets = {}

    def in_doubt(self) -> list[str]:
        """Message-IDs handed over without an answer recorded: the ones to look up at the
        provider (see "Re-queueing" in the module docstring)."""
        self._refresh()
        assert self._index is not None
        return sorted(k for k, v in self._index.items() if v in ("H", "h"))

    def _refresh(self) -> None:
        if self._index is None:
            self._index, self._offsets = {}, {}
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        grown = []
        for name in names:
            match = _FILE.match(name)
            if not match:
                continue
            try:
                info = os.stat(self.folder / name)
            except OSError:
                continue
            if info.st_size > self._offsets.get(name, 0):
                grown.append((match.group(1), info.st_mtime_ns, name, match.group(2) == self.boot_id))
        for _, _, name, this_boot in sorted(grown):  # oldest day first: later lines win
            self._read(name, this_boot)

    def _read(self, name: str, this_boot: bool) -> None:
        assert self._index is not None
        offset = self._offsets.get(name, 0)
        try:
            with open(self.folder / name, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written (or torn) waits for its end
        self._offsets[name] = offset + end
        index = self._index
        for line in data[:end].decode("utf-8", "replace").split("\n"):
            state = line[:1]
            if len(line) > 2 and line[1] == " " and state in "QHAR":
                index[line[2:]] = state if this_boot else state.lower()


class _JournalFailed(Exception):
    def __init__(self, error: OSError):
        super().__init__(type(error).__name__)
        self.error = error


# ---------------------------------------------------------------- the channel


class SmtpChannel(Channel):
    name = "email.smtp"
    channel = "email"

    def __init__(self, settings: SmtpSettings, journal: Optional[HandoverJournal] = None):
        self.settings = settings
        self.journal = journal  # None: was_delivered cannot tell (always None)
        self._secrets = _secrets(settings)

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "SmtpChannel":
        return cls(SmtpSettings.from_env(context), HandoverJournal(context.data_dir / JOURNAL_DIR))

    def _reply(self, code: int, message: bytes | str) -> str:
        return _reply(code, message, self._secrets)

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

    def _connect_failure(self, exc: BaseException) -> str:
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return f"smtp_auth_failed: {self._reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPResponseException):  # e.g. a 421 greeting, EHLO refused
            return f"smtp_connect_failed: {type(exc).__name__}: {self._reply(exc.smtp_code, exc.smtp_error)}"
        return f"smtp_connect_failed: {type(exc).__name__}"

    # -- delivery
    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        if not messages:
            return results
        batch: Optional[JournalBatch] = None
        if self.journal is not None:
            self.journal.forget()  # reconciling is over: free the index
            try:
                batch = self.journal.begin(m.rfc_message_id for m in messages)
            except OSError as exc:
                reason = f"smtp_journal_failed: {type(exc).__name__}"
                return [DeliveryResult(m.message_pk, "unavailable", reason=reason) for m in messages]
        client: Optional[smtplib.SMTP] = None
        try:
            for position, m in enumerate(messages):
                if client is None:
                    try:
                        client = self.connect()
                    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                        # The channel itself is unusable (server down, credentials refused):
                        # nothing more of this batch goes, and no message's attempt counts.
                        reason = self._connect_failure(exc)
                        return results + [DeliveryResult(x.message_pk, "unavailable", reason=reason)
                                          for x in messages[position:]]
                    if not self.settings.from_email.isascii() and not client.has_extn("smtputf8"):
                        # The sender itself needs SMTPUTF8: no message can go through this
                        # server, and none is to blame (fix the setting or the relay).
                        return results + [DeliveryResult(x.message_pk, "unavailable", reason=_SENDER_NEEDS_SMTPUTF8)
                                          for x in messages[position:]]
                try:
                    result, keep = self._send_one(client, m, batch)
                except _JournalFailed as exc:
                    reason = f"smtp_journal_failed: {exc}"
                    return results + [DeliveryResult(x.message_pk, "unavailable", reason=reason)
                                      for x in messages[position:]]
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
            if batch is not None:
                batch.close()
        return results

    def _send_one(self, client: smtplib.SMTP, m: OutgoingMessage,
                  journal: Optional[JournalBatch]) -> tuple[DeliveryResult, bool]:
        """(result, whether the connection is still usable). Raises _JournalFailed, before
        anything is handed over, when the hand-over cannot be journaled."""
        s = self.settings
        if not m.to:
            return DeliveryResult(m.message_pk, "failed", reason="no_address"), True
        to = ascii_address(m.to)
        if not to.isascii() and not client.has_extn("smtputf8"):
            # A non-ASCII local part exists only for a server that offers SMTPUTF8 (RFC 6531):
            # this one cannot take the address at all, now or on a retry.
            return DeliveryResult(m.message_pk, "failed", reason="smtputf8_unsupported: the server does not offer "
                                  "SMTPUTF8, which the address's non-ASCII local part needs"), True
        try:
            data = build_email_bytes(message_id=m.rfc_message_id, from_addr=s.from_email, from_name=s.from_name,
                                     to_addr=m.to, to_name=m.to_name, subject=m.subject, html=m.html, text=m.text,
                                     date=m.created_at or datetime.now(timezone.utc), extra_headers=m.headers)
        except ValueError as exc:  # (UnicodeError too) this message cannot be written: it alone fails
            return DeliveryResult(m.message_pk, "failed", reason=f"build_error: {type(exc).__name__}"), True
        if journal is not None:
            try:
                journal.mark(HANDED, m.rfc_message_id)
            except OSError as exc:
                raise _JournalFailed(exc) from None
        result, keep, answer = self._transaction(client, m, to, data)
        if journal is not None and answer is not None:
            try:
                journal.mark(answer, m.rfc_message_id)
            except OSError:  # the `H` line stands: in doubt after a crash, never sent twice
                pass
        return result, keep

    def _transaction(self, client: smtplib.SMTP, m: OutgoingMessage, to: str,
                     data: bytes) -> tuple[DeliveryResult, bool, Optional[str]]:
        """One MAIL / RCPT / DATA to `to` (the address as the server takes it): (result,
        whether the connection is still usable, the server's answer for the journal: ACCEPTED,
        REFUSED, or None when none came).

        Phase by phase rather than smtplib's sendmail, for the one case sendmail cannot tell
        apart: a connection lost during DATA may have left the message with the server (the
        final "." sent, its 250 lost; RFC 5321 §4.1.1.4), so that message is never sent again
        (`delivery_unknown`), while one lost before DATA is simply retried."""
        s = self.settings
        options = [] if to.isascii() and s.from_email.isascii() else ["SMTPUTF8"]
        if client.does_esmtp and client.has_extn("size"):
            options.append(f"SIZE={len(data)}")
        try:
            code, message = client.mail(s.from_email, options)
            if code != 250:
                self._reset(client, code)
                status = "retry" if 400 <= code < 500 else "failed"
                reason = f"smtp_sender_refused: {self._reply(code, message)}"
                return DeliveryResult(m.message_pk, status, reason=reason), code != 421, REFUSED
            code, message = client.rcpt(to)
            if code not in (250, 251):
                self._reset(client, code)
                if 400 <= code < 500:  # 421: the server is closing the connection
                    reason = f"smtp_rcpt_deferred: {self._reply(code, message)}"
                    return DeliveryResult(m.message_pk, "retry", reason=reason), code != 421, REFUSED
                reason = f"smtp_rcpt_rejected: {self._reply(code, message)}"
                return DeliveryResult(m.message_pk, "failed", reason=reason, suppress="hard_bounce"), True, REFUSED
        except (smtplib.SMTPServerDisconnected, socket.timeout, OSError) as exc:
            reason = f"smtp_connection_lost: {type(exc).__name__}"
            return DeliveryResult(m.message_pk, "retry", reason=reason), False, None
        except smtplib.SMTPException as exc:
            return DeliveryResult(m.message_pk, "retry", reason=f"smtp_error: {type(exc).__name__}"), False, None
        except ValueError as exc:
            # (UnicodeError too) MAIL or RCPT could not be written from this message's addresses:
            # the command never left, nothing was handed over, and the same message would fail
            # the same way again. It alone fails, for what it is — never `delivery_unknown`.
            self._reset(client, 0)
            reason = f"smtp_command_error: {type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            return DeliveryResult(m.message_pk, "failed", reason=reason), True, REFUSED
        try:
            code, message = client.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing of the message was sent
            self._reset(client, exc.smtp_code)
            status = "retry" if 400 <= exc.smtp_code < 500 else "failed"
            reason = f"smtp_data_refused: {self._reply(exc.smtp_code, exc.smtp_error)}"
            return DeliveryResult(m.message_pk, status, reason=reason), exc.smtp_code != 421, REFUSED
        except (smtplib.SMTPServerDisconnected, socket.timeout, OSError, smtplib.SMTPException) as exc:
            reason = (f"delivery_unknown: smtp_connection_lost during DATA ({type(exc).__name__}): the server may "
                      "have taken the message")
            return DeliveryResult(m.message_pk, "failed", reason=reason), False, None
        if code != 250:
            self._reset(client, code)
            status = "retry" if 400 <= code < 500 else "failed"
            reason = f"smtp_data_refused: {self._reply(code, message)}"
            return DeliveryResult(m.message_pk, status, reason=reason), code != 421, REFUSED
        return DeliveryResult(m.message_pk, "sent", provider_id=m.rfc_message_id), True, ACCEPTED

    @staticmethod
    def _reset(client: smtplib.SMTP, code: int) -> None:
        """RSET after a refusal, as sendmail does (not after 421: the server is closing)."""
        if code == 421:
            return
        try:
            client.rset()
        except (smtplib.SMTPException, OSError):
            pass

    def was_delivered(self, message_pk: int, rfc_message_id: str) -> Optional[bool]:
        """From the hand-over journal: True (the server accepted it), False (never handed
        over, or refused: safe to re-queue), None (handed over without an answer, unknown, or
        no journal)."""
        if self.journal is None:
            return None
        try:
            return _ANSWER.get(self.journal.state(rfc_message_id) or "")
        except OSError:
            return None

    def close(self) -> None:
        if self.journal is not None:
            self.journal.forget()


def _secrets(settings: SmtpSettings) -> tuple[str, ...]:
    """The password, and the base64 forms AUTH LOGIN and PLAIN put on the wire (a server may
    quote those back too)."""
    if settings.password is None:
        return ()
    password = settings.password.get_secret_value()

    def b64(raw: str) -> str:
        return base64.b64encode(raw.encode("utf-8")).decode("ascii")
    return secrets_in({}, [password, b64(password), b64(f"\0{settings.username or ''}\0{password}")])


def _quietly_close(client: smtplib.SMTP) -> None:
    try:
        client.close()
    except OSError:
        pass

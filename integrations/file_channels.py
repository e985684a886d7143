"""The embedded-default channels: e-mail as `.eml` files, SMS and WhatsApp as JSONL lines under
`<project>/.nurture/outbox/`. Good for the demo, for previews, and as a record when no
provider is configured. `was_delivered` is exact: an .eml file is complete exactly when it
ends with its closing MIME boundary (a file torn by a crash does not, and is removed), and an
SMS counts only as a whole JSON line. (A write + rename per file would cost ~4x a plain write
here; the completeness check gives the same guarantee.)"""
from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Optional, Sequence

from nurture.registry import Channel, DeliveryResult, IntegrationContext, OutgoingMessage
from nurture.rendering.email_message import build_email_bytes
from nurture.settings import EnvSettings, Settings


class FileEmailSettings(EnvSettings):
    """Where `email.file` writes its .eml files, and the sender it writes into them (the engine's
    NURTURE_FROM_EMAIL and NURTURE_FROM_NAME: this channel declares no setting of its own)."""
    outbox: Path
    from_email: str
    from_name: str

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "FileEmailSettings":
        engine = Settings.from_env(context.env)
        return cls(outbox=context.data_dir / "outbox" / "email", from_email=engine.from_email,
                   from_name=engine.from_name or "Nurture")


class FileSmsSettings(EnvSettings):
    """Where `sms.file` appends its JSON lines (no setting of its own)."""
    path: Path

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "FileSmsSettings":
        return cls(path=context.data_dir / "outbox" / "sms.jsonl")


class FileEmailChannel(Channel):
    name = "email.file"
    channel = "email"
    local = True  # writes files on this machine: development links are fine

    def __init__(self, outbox: Path, from_email: str, from_name: str):
        self.outbox = outbox
        self.from_email = from_email
        self.from_name = from_name
        self._dirs: set[str] = set()

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "FileEmailChannel":
        settings = FileEmailSettings.from_env(context)
        return cls(settings.outbox, settings.from_email, settings.from_name)

    def path_for(self, message_pk: int, journey: str) -> Path:
        return self.outbox / journey / f"{message_pk:09d}.eml"

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results = []
        now = datetime.now(timezone.utc)
        outbox = str(self.outbox)
        date = format_datetime(now)  # the Date header is the time of sending, once per batch
        for m in messages:
            folder = os.path.join(outbox, m.journey)
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            path = os.path.join(folder, f"{m.message_pk:09d}.eml")
            try:
                data = build_email_bytes(message_id=m.rfc_message_id, from_addr=self.from_email,
                                         from_name=self.from_name, to_addr=m.to, to_name=m.to_name,
                                         subject=m.subject, html=m.html, text=m.text,
                                         date=date, extra_headers=m.headers)
            except ValueError as exc:  # (UnicodeError too) this message cannot be written: it alone fails
                results.append(DeliveryResult(m.message_pk, "failed", reason=f"build_error: {type(exc).__name__}"))
                continue
            problem = _write_whole(path, data)
            if problem:  # (a full disk, a file-size limit, no permission): nothing usable was left
                results.append(DeliveryResult(m.message_pk, "retry", reason=f"outbox_write: {problem}"))
                continue
            results.append(DeliveryResult(m.message_pk, "sent", provider_id=os.path.basename(path)))
        return results

    def was_delivered(self, message_pk: int, rfc_message_id: str) -> Optional[bool]:
        for path in self.outbox.glob(f"*/{message_pk:09d}.eml"):
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 200))
                tail = fh.read()
            if tail.rstrip().endswith(b"--") and b"--=_nurture_" in tail:
                return True
            path.unlink()  # torn by the crash: never reached the recipient
        return False


def _write_whole(path: str, data: bytes) -> Optional[str]:
    """Write `data` as the file at `path`, every byte: os.write may write only part of it (a
    disk that fills up, a file-size limit: the rest fails on the next call). None when it is
    all there; else why not, and the partial file is removed — a cut-off .eml never counts as
    sent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    problem = None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if problem:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return problem


class FileSmsChannel(Channel):
    name = "sms.file"
    local = True
    channel = "sms"

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "FileSmsChannel":
        return cls(FileSmsSettings.from_env(context).path)

    def line(self, m: OutgoingMessage) -> dict:
        return {"message_id": m.message_pk, "to": m.to, "body": m.text, "journey": m.journey, "step": m.step_id,
                "at": (m.created_at or datetime.now(timezone.utc)).isoformat()}

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(self.line(m), ensure_ascii=False) for m in messages]
        if lines:
            # One write of whole lines, flushed and synced: a crash leaves complete lines only
            # (a torn last line is ignored by was_delivered).
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return [DeliveryResult(m.message_pk, "sent", provider_id=f"{self.channel}-{m.message_pk}") for m in messages]

    def was_delivered(self, message_pk: int, rfc_message_id: str) -> Optional[bool]:
        if not self.path.exists():
            return False
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    if json.loads(line).get("message_id") == message_pk:
                        return True
                except ValueError:
                    continue
        return False


class FileWhatsAppSettings(EnvSettings):
    """Where `whatsapp.file` appends its JSON lines (no setting of its own)."""
    path: Path

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "FileWhatsAppSettings":
        return cls(path=context.data_dir / "outbox" / "whatsapp.jsonl")


class FileWhatsAppChannel(FileSmsChannel):
    """`whatsapp.file`, the embedded default: one JSON line per message in
    `.nurture/outbox/whatsapp.jsonl` — the free text (`body`) inside the contact's 24-hour
    session, or the approved template (`content_sid`, `content_variables`) outside it."""
    name = "whatsapp.file"
    channel = "whatsapp"

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "FileWhatsAppChannel":
        return cls(FileWhatsAppSettings.from_env(context).path)

    def line(self, m: OutgoingMessage) -> dict:
        line = super().line(m)
        line["to"] = f"whatsapp:{m.to}"
        if m.content_sid:
            line.update(content_sid=m.content_sid, content_variables=m.content_variables or {})
        return line

"""The personal data Nurture keeps in files under the data directory, and its removal.

- the file e-mail outbox: `outbox/email/<journey>/<message id:09d>.eml` — a rendered message
  (the only place a rendered body is stored: the database keeps no bodies);
- the file SMS outbox: `outbox/sms.jsonl`, one JSON line per SMS (`message_id`, `to`, `body`);
- the file WhatsApp outbox: `outbox/whatsapp.jsonl`, one JSON line per message (`message_id`,
  `to`: `whatsapp:<E.164>`, `body`);
- the handover file: `handover/handovers.jsonl`, one JSON line per handover (`handover_id`,
  the contact's e-mail, names, phone).

An .eml file is deleted; a JSONL file is rewritten without the person's lines (a temporary
file renamed over it, so a reader sees the old or the new file, never half of one). A line
appended by a delivery while the file is being rewritten is not lost: the rewrite starts over
when the file grew meanwhile.

The CSV audience files (`audiences/<audience>/…-add.csv`) hold SHA-256 hashes, not addresses;
an erasure appends a `…-remove.csv` for the person through the destination itself, and replaying
the folder no longer includes them.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

EMAIL_OUTBOX = ("outbox", "email")
SMS_OUTBOX = ("outbox", "sms.jsonl")
WHATSAPP_OUTBOX = ("outbox", "whatsapp.jsonl")
HANDOVER_FILE = ("handover", "handovers.jsonl")
_ATTEMPTS = 5


def eml_paths(data_dir: Path, messages: Iterable[tuple[int, str]]) -> list[Path]:
    """The outbox files of these (message id, journey) that exist — found under the journey's
    folder, or under any journey folder (a renamed journey)."""
    root = data_dir.joinpath(*EMAIL_OUTBOX)
    wanted = list(messages)
    if not wanted or not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir()]
    found: list[Path] = []
    for pk, journey in wanted:
        name = f"{pk:09d}.eml"
        first = root / journey / name
        if first.is_file():
            found.append(first)
            continue
        found.extend(folder / name for folder in folders if (folder / name).is_file())
    return found


def remove_outbox(data_dir: Path, *, emails: Iterable[tuple[int, str]] = (), sms: Iterable[int] = (),
                  whatsapp: Iterable[int] = (), handovers: Iterable[int] = (),
                  phone: Optional[str] = None) -> Counter:
    """Delete the .eml files of `emails` ((message id, journey)) and drop the JSONL lines of the
    SMS messages `sms` and the WhatsApp messages `whatsapp` (or to `phone`) and of the handovers
    `handovers`. Counts per kind: outbox_emails, outbox_sms, outbox_whatsapp, handover_file_lines."""
    counts: Counter = Counter()
    for path in eml_paths(data_dir, emails):
        try:
            path.unlink()
            counts["outbox_emails"] += 1
        except FileNotFoundError:
            pass
    sms_ids = {int(i) for i in sms}
    if sms_ids or phone:
        counts["outbox_sms"] += drop_lines(data_dir.joinpath(*SMS_OUTBOX),
                                           lambda r: r.get("message_id") in sms_ids or (phone and r.get("to") == phone))
    whatsapp_ids = {int(i) for i in whatsapp}
    if whatsapp_ids or phone:
        to = f"whatsapp:{phone}" if phone else None
        counts["outbox_whatsapp"] += drop_lines(data_dir.joinpath(*WHATSAPP_OUTBOX),
                                                lambda r: r.get("message_id") in whatsapp_ids or (to and r.get("to") == to))
    handover_ids = {int(i) for i in handovers}
    if handover_ids:
        counts["handover_file_lines"] += drop_lines(data_dir.joinpath(*HANDOVER_FILE),
                                                    lambda r: r.get("handover_id") in handover_ids)
    return +counts


def drop_lines(path: Path, matches) -> int:
    """Rewrite a JSONL file without the lines whose JSON object `matches`; how many were dropped.
    Lines that are not JSON objects (a torn last line) are kept as they are."""
    for _ in range(_ATTEMPTS):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        kept, dropped = [], 0
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and matches(record):
                dropped += 1
            else:
                kept.append(line)
        if not dropped:
            return 0
        tmp = path.with_name(path.name + ".erasing")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(kept))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777)
            if path.stat().st_size != len(data):  # a line was appended meanwhile: start over
                continue
            os.replace(tmp, path)
            return dropped
        finally:
            if tmp.exists():
                tmp.unlink()
    raise OSError(f"{path} kept changing while it was rewritten")

"""Bringing data in: contacts from CSV or JSONL (upsert by e-mail), events from JSONL
(idempotent by event_id). A bad row is reported by line and field and the good rows are
kept; nothing is half-written."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, select

from nurture.consent_ledger import record_consent
from nurture.runtime.sql import chunks, insert_ignore
from nurture.store.db import Store
from nurture.store.models import Contact, Event

contact_t = Contact.__table__
event_t = Event.__table__

CORE_FIELDS = ("email", "phone", "first_name", "last_name", "timezone", "country", "locale", "lifecycle_stage", "score")
CONSENT_COLUMNS = {"consent_email": "email", "consent_sms": "sms", "consent_ads": "ads"}
CONSENT_VALUES = ("granted", "revoked", "pending")


@dataclass
class RowError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    consents: int = 0
    skipped_duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)


def parse_timestamp(value: Any) -> datetime:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected an ISO 8601 timestamp, e.g. 2026-11-21T10:00:00Z")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{value}' is not an ISO 8601 timestamp") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def normalize_email(value: str) -> str:
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def normalize_phone(value: str, country: Optional[str]) -> str:
    try:
        number = phonenumbers.parse(value, (country or "").upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"'{value}' is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"'{value}' is not a valid phone number" + ("" if country else " (add a country or a +prefix)"))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _records(path: Path) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
    """(line number, record or None, parse error) for CSV or JSONL."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(record, dict):
                yield number, None, "each line must be a JSON object"
                continue
            yield number, record, None
        return
    reader = csv.DictReader(io.StringIO(text))
    for record in reader:
        yield reader.line_num, {k.strip(): v for k, v in record.items() if k is not None}, None


def _clean_contact(record: dict) -> tuple[dict, dict[str, str], list[tuple[str, str]]]:
    """(contact fields, consent columns, [(field, error)])"""
    errors: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    consents: dict[str, str] = {}
    attributes: dict[str, Any] = {}
    for key, raw in record.items():
        value = raw.strip() if isinstance(raw, str) else raw
        if value in ("", None):
            continue
        if key in CONSENT_COLUMNS:
            if str(value).lower() not in CONSENT_VALUES:
                errors.append((key, f"'{value}' is not one of {', '.join(CONSENT_VALUES)}"))
            else:
                consents[CONSENT_COLUMNS[key]] = str(value).lower()
        elif key in CORE_FIELDS:
            fields[key] = value
        elif key == "attributes" and isinstance(value, dict):
            attributes.update(value)
        else:
            attributes[key] = _coerce(value)
    if "email" not in fields:
        errors.append(("email", "required (contacts are matched by e-mail)"))
    else:
        try:
            fields["email"] = normalize_email(str(fields["email"]))
        except ValueError as exc:
            errors.append(("email", str(exc)))
    if "country" in fields:
        fields["country"] = str(fields["country"]).upper()
        if len(fields["country"]) != 2:
            errors.append(("country", f"'{fields['country']}' is not a two-letter ISO country code"))
    if "phone" in fields:
        try:
            fields["phone"] = normalize_phone(str(fields["phone"]), fields.get("country"))
        except ValueError as exc:
            errors.append(("phone", str(exc)))
    if "timezone" in fields:
        try:
            from zoneinfo import ZoneInfo
            ZoneInfo(str(fields["timezone"]))
        except Exception:
            errors.append(("timezone", f"'{fields['timezone']}' is not an IANA time zone (e.g. Europe/Berlin)"))
    if "score" in fields:
        try:
            fields["score"] = float(fields["score"])
        except (TypeError, ValueError):
            errors.append(("score", f"'{fields['score']}' is not a number"))
    fields["attributes"] = attributes
    return fields, consents, errors


def _coerce(value: Any) -> Any:
    """CSV cells are text; numbers and booleans become numbers and booleans for conditions."""
    if not isinstance(value, str):
        return value
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    digits = value.lstrip("-")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        return value  # 01234 is an identifier (ZIP code, customer number), not the number 1234
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value) if _is_float(value) else value
    except ValueError:
        return value


def _is_float(value: str) -> bool:
    try:
        float(value)
        return "." in value or "e" in value.lower()
    except ValueError:
        return False


def import_contacts(store: Store, path: Path, *, now: Optional[datetime] = None, policy_version: str = "") -> ImportResult:
    now = now or datetime.now(timezone.utc)
    result = ImportResult()
    good: dict[str, tuple[dict, dict]] = {}
    for line, record, problem in _records(path):
        if problem:
            result.errors.append(RowError(path.name, line, "line", problem))
            continue
        fields, consents, errors = _clean_contact(record)
        if errors:
            result.errors.extend(RowError(path.name, line, f, m) for f, m in errors)
            continue
        previous = good.get(fields["email"])
        if previous:  # the same address twice in one file: later values win, attributes merge
            fields["attributes"] = {**previous[0]["attributes"], **fields["attributes"]}
            consents = {**previous[1], **consents}
        good[fields["email"]] = (fields, consents)
    with store.engine.begin() as conn:
        existing: dict[str, tuple[int, dict]] = {}
        for part in chunks(list(good)):
            for cid, email, attrs in conn.execute(select(contact_t.c.id, contact_t.c.email, contact_t.c.attributes)
                                                  .where(contact_t.c.email.in_(part))):
                existing[email] = (cid, attrs or {})
        inserts, updates = [], []
        for email, (fields, _) in good.items():
            if email in existing:
                cid, attrs = existing[email]
                row = {k: fields.get(k) for k in CORE_FIELDS if k in fields and k != "email"}
                updates.append({"cid": cid, **row, "attributes": {**attrs, **fields["attributes"]}, "updated_at": now})
            else:
                inserts.append({"email": email, "phone": None, "first_name": None, "last_name": None,
                                "timezone": None, "country": None, "locale": None, "lifecycle_stage": "lead",
                                "score": 0.0, **fields, "created_at": now, "updated_at": now})
        for part in chunks(inserts, 5000):
            conn.execute(contact_t.insert(), list(part))
        # Updates touch only the columns the file has, grouped by that column set.
        groups: dict[tuple, list[dict]] = {}
        for u in updates:
            groups.setdefault(tuple(sorted(k for k in u if k != "cid")), []).append(u)
        for keys, rows in groups.items():
            stmt = contact_t.update().where(contact_t.c.id == bindparam("cid")).values(
                {k: bindparam(k) for k in keys})
            conn.execute(stmt, rows)
        result.created, result.updated = len(inserts), len(updates)
        ids = dict(conn.execute(select(contact_t.c.email, contact_t.c.id).where(
            contact_t.c.email.in_([e for e, (_, c) in good.items() if c]))).all()) if any(c for _, c in good.values()) else {}
        for email, (_, consents) in good.items():
            for channel, status in consents.items():
                # An import moves a list from another tool: 'granted' there was confirmed there.
                record_consent(conn, ids[email], channel, status, source=f"import:{path.name}", at=now,
                               policy_version=policy_version, confirmed=status == "granted")
                result.consents += 1
    return result


@dataclass
class TrackResult:
    inserted: int = 0
    duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)


def _clean_event(record: dict) -> tuple[Optional[dict], list[tuple[str, str]]]:
    errors = []
    for key in ("event_id", "email", "event", "timestamp"):
        if record.get(key) in (None, ""):
            errors.append((key, "required"))
    props = record.get("properties", {})
    if props is None:
        props = {}
    if not isinstance(props, dict):
        errors.append(("properties", "must be a JSON object"))
    occurred = None
    if record.get("timestamp") not in (None, ""):
        try:
            occurred = parse_timestamp(record["timestamp"])
        except ValueError as exc:
            errors.append(("timestamp", str(exc)))
    email = None
    if record.get("email"):
        try:
            email = normalize_email(str(record["email"]))
        except ValueError as exc:
            errors.append(("email", str(exc)))
    if errors:
        return None, errors
    return {"event_id": str(record["event_id"]), "email": email, "name": str(record["event"]),
            "properties": props, "occurred_at": occurred}, []


def track_records(store: Store, records: list[tuple[int, dict]], *, source: str = "track",
                  now: Optional[datetime] = None, create_contacts: bool = True) -> TrackResult:
    """Insert events; unknown e-mail addresses become new contacts (an event from a form is
    how many contacts first appear)."""
    now = now or datetime.now(timezone.utc)
    result = TrackResult()
    clean: list[dict] = []
    for line, record in records:
        event, errors = _clean_event(record)
        if errors:
            result.errors.extend(RowError(source, line, f, m) for f, m in errors)
        else:
            clean.append(event)
    with store.engine.begin() as conn:
        emails = sorted({e["email"] for e in clean})
        ids: dict[str, int] = {}
        for part in chunks(emails):
            ids.update(dict(conn.execute(select(contact_t.c.email, contact_t.c.id).where(contact_t.c.email.in_(part))).all()))
        missing = [e for e in emails if e not in ids]
        if missing and create_contacts:
            conn.execute(contact_t.insert(), [{"email": e, "lifecycle_stage": "lead", "score": 0.0, "attributes": {},
                                               "created_at": now, "updated_at": now} for e in missing])
            for part in chunks(missing):
                ids.update(dict(conn.execute(select(contact_t.c.email, contact_t.c.id).where(contact_t.c.email.in_(part))).all()))
        known_ids: set[str] = set()
        event_ids = [e["event_id"] for e in clean]
        for part in chunks(event_ids):
            known_ids.update(r[0] for r in conn.execute(select(event_t.c.event_id).where(event_t.c.event_id.in_(part))))
        rows, seen = [], set()
        for e in clean:
            if e["event_id"] in known_ids or e["event_id"] in seen:
                result.duplicates += 1
                continue
            seen.add(e["event_id"])
            rows.append({"event_id": e["event_id"], "contact_id": ids[e["email"]], "name": e["name"],
                         "properties": e["properties"], "occurred_at": e["occurred_at"], "received_at": now})
        insert_ignore(conn, event_t, rows, ("event_id",))
        result.inserted = len(rows)
    return result


def track_file(store: Store, path: Path, *, now: Optional[datetime] = None) -> TrackResult:
    records, parse_errors = [], []
    for line, record, problem in _records(path):
        if problem:
            parse_errors.append(RowError(path.name, line, "line", problem))
        else:
            records.append((line, record))
    result = track_records(store, records, source=path.name, now=now)
    result.errors = parse_errors + result.errors
    result.errors.sort(key=lambda e: e.line)
    return result

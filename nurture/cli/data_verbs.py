"""Data in and out: `import contacts`, `import spend`, `import deals`, `track`, `consent grant|revoke`,
`messages`."""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, parse_now, store, utc_now
from nurture.settings import Settings
from nurture.spec.models import CONSENT_CHANNELS

import_app = typer.Typer(help="Import data from files.", no_args_is_help=True)
consent_app = typer.Typer(help="Record consent changes in the ledger.", no_args_is_help=True)


# The ledger's channels, as CONSENT_CHANNELS declares them (a new channel needs no edit here).
ConsentChannel = Enum("ConsentChannel", {c: c for c in CONSENT_CHANNELS}, type=str)  # type: ignore[misc]


class Purpose(str, Enum):
    marketing = "marketing"
    transactional = "transactional"


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    return path


ENCODING_HELP = ("The file's text encoding. Default: UTF-8 (a BOM is fine); a line that is not valid UTF-8 "
                 "is reported with its line number and skipped, the others are kept. An Excel export from "
                 "Windows is usually cp1252 (Western European).")


def _encoding(name: Optional[str]) -> Optional[str]:
    """Check --encoding before the database is opened: a typo is a usage error, not N bad lines."""
    from nurture.ingest import check_encoding
    try:
        check_encoding(name)
    except ValueError as exc:
        raise CliError(f"--encoding: {exc}", code=2) from None
    return name


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """An unreadable file (permissions, a vanished mount) is a message, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise CliError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _report_errors(errors, total_good: int) -> None:
    for error in errors[:200]:
        err_console.print(str(error), markup=False)
    if len(errors) > 200:
        err_console.print(f"… and {len(errors) - 200} more")


SHOWN_WARNINGS = 20  # a file with one bad column on every row must not drown the errors


def _report_warnings(warnings, what: str = "warning(s)") -> None:
    for warning in warnings[:SHOWN_WARNINGS]:
        err_console.print(f"warning: {warning}", markup=False)
    if len(warnings) > SHOWN_WARNINGS:
        err_console.print(f"… and {len(warnings) - SHOWN_WARNINGS} more {what}", markup=False)


def _past_time(option: str, value: Optional[str]):
    """An ISO time given as `option`, not in the future (a consent is given before it is recorded)."""
    from nurture.ingest import parse_timestamp
    if value is None:
        return None
    try:
        when = parse_timestamp(value)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}", code=2) from None
    return _not_in_future(option, when)


def _not_in_future(option: str, when: datetime) -> datetime:
    """A future consent time would hide a revocation until that date, or let a grant outrank
    every revocation recorded before it: refused."""
    if when > utc_now():
        raise CliError(f"{option}: {when.isoformat()} lies in the future: a consent is given before it is recorded",
                       code=2)
    return when


@import_app.command("contacts")
def import_contacts_cmd(file: Path = typer.Argument(..., help="CSV or JSONL file"),
                        encoding: Optional[str] = typer.Option(None, "--encoding", help=ENCODING_HELP),
                        consent_at: Optional[str] = typer.Option(
                            None, "--consent-at", help="ISO time the file's consents were given (for rows without "
                                                       "a consent_<channel>_at column value; default: now)")) -> None:
    """Upsert contacts, matched by external_id, then email, then phone (a row needs one of
    them); unknown columns become attributes; consent_<channel> columns (consent_email,
    consent_sms, …) go to the consent ledger with the import as source —
    consent_<channel>_at and consent_<channel>_source carry when and where it was given.
    With policies.yaml keep_attributes, other columns are dropped (a warning names them).
    Every column: docs/import.md.

    A bad row (or a line that is not valid in the file's encoding) is named by line and field and
    skipped; the good rows are kept and the exit code is 1. A bad optional field (a phone that is
    no number, an unknown time zone …) is left out with a warning and the contact kept; a column
    close to a known one (time_zone, e-mail) is a warning. Warnings alone: exit code 0. Names
    lose control characters."""
    from nurture.ingest import import_contacts
    codec = _encoding(encoding)
    given_at = _past_time("--consent-at", consent_at)
    spec = open_project(strict=False)
    with _reading(file):
        result = import_contacts(store(), _existing(file), policy_version=spec.policies.version, encoding=codec,
                                 keep_attributes=spec.policies.keep_attributes, consent_at=given_at)
    _report_errors(result.errors, result.created + result.updated)
    _report_warnings(result.warnings)
    if result.dropped_columns:
        err_console.print(f"warning: {file.name}: column(s) not kept (policies.yaml keep_attributes): "
                          + ", ".join(sorted(result.dropped_columns)), markup=False)
    warned = f", {len(result.warnings)} warning(s)" if result.warnings else ""
    not_regranted = (f" ({result.skipped_consents} not re-granted: revoked in Nurture)"
                     if result.skipped_consents else "")
    console.print(f"imported {file.name}: {result.created} created, {result.updated} updated, "
                  f"{result.consents} consent record(s){not_regranted}, {len({e.line for e in result.errors})} bad row(s) "
                  f"skipped{warned}",
                  markup=False)
    if result.errors:
        raise typer.Exit(1)


def _project_currency() -> str:
    """The project's currency (policies.yaml), which every imported amount is checked against;
    policies.yaml with errors refuses the import before anything is read."""
    spec = open_project(strict=False)
    broken = spec.file_errors("policies")
    if broken:
        for error in broken:
            err_console.print(str(error), markup=False)
        raise CliError("policies.yaml has errors (its `currency` is what the amounts are checked against); "
                       "nothing was imported")
    return spec.policies.currency


@import_app.command("spend")
def import_spend_cmd(file: Path = typer.Argument(..., help="CSV or JSONL: date,source,medium,campaign,amount,currency"),
                     encoding: Optional[str] = typer.Option(None, "--encoding", help=ENCODING_HELP)) -> None:
    """Import ad spend per day, source, medium and campaign (for CAC per source in the report).

    Columns: date (YYYY-MM-DD), source, medium (optional), campaign, amount (a number, dot as
    decimal separator), currency (must be the project's, policies.yaml `currency`). A day, source,
    medium and campaign imported again replaces its amount. A bad row is named by line and field
    and skipped; the good rows are kept and the exit code is 1."""
    from nurture.spend import import_spend
    codec = _encoding(encoding)
    currency = _project_currency()
    with _reading(file):
        result = import_spend(store(), _existing(file), currency=currency, encoding=codec)
    _report_errors(result.errors, result.imported)
    superseded = f", {result.superseded} repeated in the file (the later row won)" if result.superseded else ""
    console.print(f"imported {file.name}: {result.imported} row(s), {result.replaced} replaced, "
                  f"{result.bad_rows} bad row(s) skipped{superseded}, total {result.total:,.2f} {currency}",
                  markup=False)
    if result.errors:
        raise typer.Exit(1)


@import_app.command("deals")
def import_deals_cmd(file: Path = typer.Argument(..., help="CSV or JSONL: deal_id,email,stage,amount,currency,"
                                                            "closed_at"),
                     encoding: Optional[str] = typer.Option(None, "--encoding", help=ENCODING_HELP)) -> None:
    """Import deals from a CRM export: deal_created, deal_stage_changed, deal_won (its amount is
    revenue) and deal_lost events of their contacts, as `nurture crm pull` makes them.

    Columns: deal_id, email (the deal's contact), stage (won, lost or an open stage's name),
    amount (required for won), currency (the project's, policies.yaml `currency`), closed_at
    (ISO 8601; required for won and lost), optional pipeline and name. Importing again adds
    nothing; a changed stage is a new event. Deals of unknown addresses are kept and counted
    (no contact is created). A bad row is named by line and field and skipped; the good rows
    are kept and the exit code is 1."""
    from nurture.crm.deal_file import import_deals
    codec = _encoding(encoding)
    currency = _project_currency()
    with _reading(file):
        result = import_deals(store(), _existing(file), currency=currency, encoding=codec)
    _report_errors(result.errors, result.deals.read)
    d = result.deals
    superseded = f", {result.superseded} repeated in the file (the later row won)" if result.superseded else ""
    console.print(f"imported {file.name}: {d.read} deal(s) ({d.new} new, {d.changed} changed), {d.events} event(s) "
                  f"added ({d.stage_changes} stage change(s), {d.won} won, {d.lost} lost), revenue "
                  f"{d.revenue:,.2f} {currency}, {result.bad_rows} bad row(s) skipped{superseded}", markup=False)
    if d.without_contact:
        shown = ", ".join(f"{deal_id} ({email})" for deal_id, email in d.examples)
        console.print(f"deals without a known contact: {d.without_contact} (kept, no events), e.g. {shown}; import "
                      "those contacts and the next `import deals` or `crm pull` attaches them", markup=False)
    for problem in d.problems[:200]:
        err_console.print(f"warning: {problem}", markup=False)
    if result.errors:
        raise typer.Exit(1)


def track(file: Path = typer.Argument(..., help='JSONL: {"event_id","email","event","properties","timestamp"}'),
          encoding: Optional[str] = typer.Option(None, "--encoding", help=ENCODING_HELP)) -> None:
    """Track events (idempotent by event_id: a file can be sent twice).

    A bad line is named by line and field and skipped; the good events are kept and the exit
    code is 1."""
    from nurture.ingest import track_file
    codec = _encoding(encoding)
    with _reading(file):
        result = track_file(store(), _existing(file), encoding=codec)
    _report_errors(result.errors, result.inserted)
    console.print(f"tracked {file.name}: {result.inserted} new event(s), {result.duplicates} already known, "
                  f"{len(result.errors)} bad line(s) skipped")
    if result.errors:
        raise typer.Exit(1)


def _consent(email: Optional[str], status: str, channel: Optional[ConsentChannel], purpose: Purpose,
             at: Optional[str], phone: Optional[str] = None, external_id: Optional[str] = None,
             file: Optional[Path] = None, encoding: Optional[str] = None) -> None:
    from nurture.consent_ledger import record_consent
    from nurture.contact_lookup import contact_by_email
    from nurture.identities import find_by_identity
    from nurture.ingest import normalize_phone
    given = [name for name, value in (("EMAIL", email), ("--phone", phone), ("--external-id", external_id)) if value]
    if file is not None:
        if given:
            raise CliError(f"--file names its contacts itself: leave out {', '.join(given)}", code=2)
        _consent_file(file, status, channel, purpose, at, encoding)
        return
    if encoding is not None:
        raise CliError("--encoding is for --file", code=2)
    if channel is None:
        raise CliError("--channel is required (one of " + ", ".join(CONSENT_CHANNELS) + ")", code=2)
    if len(given) != 1:
        raise CliError("name the contact by exactly one of EMAIL, --phone or --external-id"
                       + (f" (got {', '.join(given)})" if given else ""))
    spec = open_project(strict=False)
    at_time = parse_now(at, "--at")
    when = _not_in_future("--at", at_time) if at_time is not None else utc_now()
    with store().engine.begin() as conn:
        if email:
            cid = contact_by_email(conn, email)
            if cid is None:
                raise CliError(f"no contact with e-mail {email}")
            who = email
        else:
            if phone:
                try:
                    who = normalize_phone(phone, None)
                except ValueError as exc:
                    raise CliError(f"--phone: {exc}") from None
                kind = "phone"
            else:
                who, kind = external_id.strip(), "external_id"  # type: ignore[union-attr]
            cid = find_by_identity(conn, kind, who)
            if cid is None:
                raise CliError(f"no contact with {kind.replace('_', ' ')} {who}")
        record_consent(conn, cid, channel.value, status, purpose=purpose.value, source="cli", at=when,
                       policy_version=spec.policies.version, confirmed=status == "granted")
    console.print(f"{who}: {channel.value}/{purpose.value} consent {status} at {when.isoformat()}")


def _consent_file(file: Path, status: str, channel: Optional[ConsentChannel], purpose: Purpose, at: Optional[str],
                  encoding: Optional[str]) -> None:
    """`consent grant|revoke --file`: every row of the file through the ledger's one writer
    (nurture.consent_file); bad rows and unknown contacts named by line."""
    from nurture.consent_file import record_consent_file
    codec = _encoding(encoding)
    now = utc_now()
    when = _past_time("--at", at) or now
    spec = open_project(strict=False)
    with _reading(file):
        result = record_consent_file(store(), _existing(file), status, channel=channel.value if channel else None,
                                     purpose=purpose.value, at=when, now=now, policy_version=spec.policies.version,
                                     encoding=codec)
    _report_errors(result.errors, result.recorded)
    _report_warnings(result.unknown, "unknown contact(s)")
    _report_warnings(result.outranked, "row(s) not current")
    outranked = (f", {len(result.outranked)} recorded but not current (a later row on record outranks it)"
                 if result.outranked else "")
    console.print(f"{file.name}: {result.recorded - len(result.outranked)} consent(s) {status}{outranked}, "
                  f"{len(result.unknown)} unknown contact(s) skipped (not created), {result.bad_rows} bad row(s) "
                  "skipped", markup=False)
    if result.errors:
        raise typer.Exit(1)


_PHONE = typer.Option(None, "--phone", help="the contact's phone (E.164, e.g. +4930123456), instead of EMAIL")
_EXTERNAL_ID = typer.Option(None, "--external-id", help="the contact's external user id, instead of EMAIL")
_CHANNEL = typer.Option(None, "--channel", help="the channel (with --file: for rows without a channel column)")
_FILE = typer.Option(None, "--file", help="CSV or JSONL of many contacts: email, phone or external_id, optional "
                                          "channel, purpose, at, source (docs/import.md)")
_AT = typer.Option(None, "--at", help="ISO time, not in the future (default: now; with --file: for rows without an `at`)")
_FILE_ENCODING = typer.Option(None, "--encoding", help="with --file: " + ENCODING_HELP)


@consent_app.command("grant")
def consent_grant(email: Optional[str] = typer.Argument(None), channel: Optional[ConsentChannel] = _CHANNEL,
                  purpose: Purpose = typer.Option(Purpose.marketing, "--purpose"), at: Optional[str] = _AT,
                  phone: Optional[str] = _PHONE, external_id: Optional[str] = _EXTERNAL_ID,
                  file: Optional[Path] = _FILE, encoding: Optional[str] = _FILE_ENCODING) -> None:
    """Record a granted (and confirmed) consent of the contact with EMAIL (or --phone / --external-id),
    or of every contact of --file (unknown contacts are named by line, not created; a bad row
    is named by line and field and the exit code is 1)."""
    _consent(email, "granted", channel, purpose, at, phone, external_id, file, encoding)


@consent_app.command("revoke")
def consent_revoke(email: Optional[str] = typer.Argument(None), channel: Optional[ConsentChannel] = _CHANNEL,
                   purpose: Purpose = typer.Option(Purpose.marketing, "--purpose"), at: Optional[str] = _AT,
                   phone: Optional[str] = _PHONE, external_id: Optional[str] = _EXTERNAL_ID,
                   file: Optional[Path] = _FILE, encoding: Optional[str] = _FILE_ENCODING) -> None:
    """Record a revoked consent of the contact with EMAIL (or --phone / --external-id), or of every
    contact of --file: it holds from the next send on."""
    _consent(email, "revoked", channel, purpose, at, phone, external_id, file, encoding)


def messages(journey: Optional[str] = typer.Option(None, "--journey"),
             as_json: bool = typer.Option(False, "--json", help="Print a JSON array (for scripts)"),
             limit: Optional[int] = typer.Option(None, "--limit")) -> None:
    """The message log: contact, journey, step, channel, status, reason, due_at, sent_at — and
    with --json also id, enrollment_id, attempts, attempt_key, purpose, provider_id,
    message_id (the e-mail's Message-ID), subject, to and the A/B arm."""
    from rich.table import Table

    from nurture.messages import message_log
    project = open_project(strict=False)
    rows = message_log(store(), journey, limit, project, Settings.from_env().from_email)
    if as_json:
        keys = ("id", "contact", "journey", "step", "channel", "status", "reason", "due_at", "sent_at",
                "enrollment_id", "attempts", "attempt_key", "purpose", "provider_id", "message_id", "subject",
                "to", "arm")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=1))
        return
    table = Table("id", "contact", "journey", "step", "channel", "status", "reason", "due_at", "sent_at")
    for r in rows:
        table.add_row(str(r["id"]), r["contact"] or "", r["journey"], r["step"], r["channel"], r["status"],
                      r["reason"] or "", (r["due_at"] or "")[:16], (r["sent_at"] or "")[:16])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
    app.command()(track)
    app.add_typer(consent_app, name="consent")
    app.command()(messages)

"""Privacy: `nurture erase` (GDPR Art. 17), `nurture export-contact` (Art. 15/20) and
`nurture purge` (retention).

The work is nurture.privacy's; this module reads the command line, wires the destinations
(provider credentials from the environment — or, with a Prefect server configured, from the
same Secret blocks the nightly sync reads) and prints what happened."""
from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, store

_KIND_NAMES = {"contact": "contact", "events": "events", "consents": "consent records", "messages": "messages",
               "messages_cancelled": "queued messages cancelled", "enrollments_exited": "journeys left",
               "suppressions": "suppressions", "handovers": "handovers", "texts_scrubbed": "texts scrubbed",
               "outbox_emails": "outbox e-mails", "outbox_sms": "outbox SMS", "outbox_whatsapp": "outbox WhatsApp", "handover_file_lines": "handover lines",
               "audience_memberships": "audience/list memberships", "crm_records": "CRM records",
               "touches": "lead sources", "deals": "CRM deal addresses", "identities": "identifiers"}


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a container without a passwd entry
        return "cli"


def _factory(name: str, context: Any) -> Any:
    """The sync's destination factory; credentials missing from the environment are read from
    Prefect Secret blocks when a Prefect server is configured (as the nightly sync does)."""
    from nurture.registry import IntegrationContext, IntegrationError
    from nurture.segments.sync import default_factory
    try:
        return default_factory(name, context)
    except IntegrationError:
        if not os.environ.get("PREFECT_API_URL"):
            raise
        from flows.segment_sync import with_secret_blocks
        env = with_secret_blocks(dict(context.env), name)
        return default_factory(name, IntegrationContext(context.project_dir, context.data_dir, env))


def _addresses(emails: Optional[list[str]], file: Optional[Path]) -> list[tuple[str, str]]:
    """(where, address) from the arguments and the file: one address per line, blank lines
    and `#` comments skipped."""
    found = [("argument", e) for e in emails or []]
    if file is not None:
        if not file.is_file():
            raise CliError(f"{file}: no such file")
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"{file}: cannot read it ({exc})") from None
        for number, line in enumerate(text.splitlines(), 1):
            address = line.strip()
            if address and not address.startswith("#"):
                found.append((f"{file.name}:{number}", address))
    return found


def _default_country() -> Optional[str]:
    """NURTURE_DEFAULT_COUNTRY: the region of a phone number given without +country code."""
    from nurture.settings import Settings
    return Settings.from_env(os.environ).default_country


def _describe(removed: dict[str, int]) -> str:
    return ", ".join(f"{_KIND_NAMES.get(k, k)} {n}" for k, n in removed.items()) or "nothing more"


def erase(emails: Optional[list[str]] = typer.Argument(
              None, help="E-mail addresses or phone numbers (E.164, or national with NURTURE_DEFAULT_COUNTRY) "
                         "of the people to erase"),
          file: Optional[Path] = typer.Option(None, "--file", help="A file with one address or number per line"),
          reason: str = typer.Option("request", "--reason",
                                     help="A short label stored with the erasure (e.g. art17-ticket-4711)")) -> None:
    """Erase people (GDPR Art. 17): their data leaves the store, the outbox, every audience and CRM.

    Their personal data leaves the store and the outbox files, they are removed from every
    audience and CRM list now (not at the nightly sync), and deleted from HubSpot (GDPR delete)
    when it is configured. The contact row stays, pseudonymized; a hashed tombstone keeps a
    later import or event from re-creating them. Erasing again changes nothing more. A person
    Nurture knows only by phone (a phone-only lead) is named by their number."""
    from nurture.privacy.erase import check_reason, erase_people, identifier
    from nurture.registry import IntegrationContext
    from nurture.runtime.context import Runtime

    given = _addresses(emails, file)
    if not given:
        raise CliError("name the e-mail addresses or phone numbers to erase, or --file FILE (one per line)", code=2)
    try:
        check_reason(reason)
    except ValueError as exc:
        raise CliError(f"--reason: {exc}", code=2) from None
    country = _default_country()
    valid, bad = [], 0
    for where, address in given:
        try:
            identifier(address, country)
            valid.append(address)
        except ValueError as exc:
            bad += 1
            err_console.print(f"{where}: {exc}", markup=False)
    if not valid:
        raise CliError("no address or number to erase")
    project = open_project(strict=False)
    rt = Runtime(store(), project, env=dict(os.environ))
    context = IntegrationContext(project.root, rt.data_dir, rt.env)
    results = erase_people(rt.store, project, valid, context=context, actor=_actor(), reason=reason,
                           factory=_factory, default_country=country)
    pending = 0
    for r in results:
        if r.outcome == "erased":
            console.print(f"{r.request}: erased (erasure #{r.erasure_id}): {_describe(r.removed)}", markup=False)
        elif r.outcome == "already_erased":
            when = f" on {r.erased_at:%Y-%m-%d %H:%M} UTC" if r.erased_at else ""
            extra = f"; now also: {_describe(r.removed)}" if r.removed else ""
            console.print(f"{r.request}: already erased{when}{extra}", markup=False)
        elif r.outcome == "invalid":
            bad += 1
            err_console.print(f"{r.request}: not erased: {r.error}", markup=False)
        else:
            console.print(f"{r.request}: not found (nothing is held about this address)", markup=False)
        done = [f"{target} {status}" for target, status in r.destinations.items() if status != "pending"]
        if done:
            console.print(f"  {'; '.join(done)}", markup=False)
        for item in r.pending:
            pending += 1
            console.print(f"  pending: {item}", markup=False)
    if pending:
        raise CliError(f"{pending} removal(s) pending: the nightly sync removes the audience memberships, and "
                       "`nurture erase` of the same addresses retries all of them")
    if bad:
        raise CliError(f"{bad} line(s) skipped: not an e-mail address or phone number of one person")


def export_contact(email: str = typer.Argument(..., help="The contact's e-mail address or phone number (E.164, "
                                               "or national with NURTURE_DEFAULT_COUNTRY)"),
                   out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON to this file "
                                                      "(created readable by its owner only) instead of stdout")
                   ) -> None:
    """Everything held about a person (GDPR Art. 15/20) as one JSON document.

    Contact, identifiers, consents (source, policy version), events, enrollments, messages,
    scores, handovers, segments and audience memberships with their sync records."""
    from nurture.privacy.export import erasure_of
    from nurture.privacy.export import export_contact as build
    from nurture.runtime.context import Runtime

    project = open_project(strict=False)
    rt = Runtime(store(), project, env=dict(os.environ))
    country = _default_country()
    try:
        doc = build(rt.store, project, email, data_dir=rt.data_dir, default_country=country)
    except ValueError as exc:  # a number several contacts share
        raise CliError(str(exc)) from None
    if doc is None:
        erased = erasure_of(rt.store, email, country)
        if erased is not None:
            raise CliError(f"{email} was erased on {erased:%Y-%m-%d %H:%M} UTC: nothing is held about it any more")
        raise CliError(f"no contact with {'e-mail' if '@' in email else 'phone number'} {email}")
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file too: it now holds personal data
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CliError(f"{out}: cannot write it ({exc.strerror or exc})") from None
    err_console.print(f"exported {email} to {out} ({len(doc['events'])} events, {len(doc['messages'])} messages)",
                      markup=False)


def purge(dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing"),
          now: Optional[str] = typer.Option(None, "--now", help="Logical clock (ISO 8601; default: now)")) -> None:
    """Delete what is older than policies.yaml `retention:` allows (events, messages, bodies, …).

    Kinds without a period are kept. The hygiene flow does the same every run; see
    docs/privacy.md for what each kind removes and what is always kept."""
    from nurture.cli.invocation import parse_now, utc_now
    from nurture.privacy.retention import purge as run_purge
    from nurture.runtime.context import Runtime

    project = open_project(strict=False)
    rt = Runtime(store(), project, env=dict(os.environ))
    clock = parse_now(now) or utc_now()
    result = run_purge(rt.store, project.policies, clock, rt.data_dir, dry_run=dry_run)
    if not result.cutoffs:
        console.print("no retention: policies.yaml declares no `retention:` periods — nothing is purged", markup=False)
        return
    verb = "would remove" if dry_run else "removed"
    for row in result.rows():
        what = ", ".join(f"{k.split(':', 1)[1].replace('_', ' ')} {n}" for k, n in row["removed"].items()) or "nothing"
        console.print(f"{row['kind']}: older than {row['older_than'][:16]} — {verb} {what}", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(erase)
    app.command("export-contact")(export_contact)
    app.command()(purge)

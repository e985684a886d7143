"""`nurture test-send JOURNEY --step ID --to ADDRESS [--contact EMAIL]`: one send step rendered
as for a contact and sent, marked as a test, to a seed address through the configured channel
(nurture.test_send) — never recorded in the message log."""
from __future__ import annotations

import os
from typing import Optional

import typer

from nurture.cli.invocation import CliError, console, err_console, open_project, store


def _project(journey: str):
    """The project with `journey`, or one clear error: the journey does not exist, or it (or
    policies.yaml) has errors — those are printed with their locations first."""
    spec = open_project(strict=False, only=journey)
    missing = next((e for e in spec.errors if e.message == f"no journey named '{journey}'"), None)
    if missing is not None:
        raise CliError(missing.message + (f" ({missing.hint})" if missing.hint else ""))
    if spec.errors:
        for error in spec.errors:
            err_console.print(str(error), markup=False)
        raise CliError(f"{len(spec.errors)} error(s) in the project (run `nurture validate`); nothing was sent")
    return spec


def test_send(journey: str = typer.Argument(..., help="Journey name"),
              step: str = typer.Option(..., "--step", help="The send step to test"),
              to: str = typer.Option(..., "--to", help="Seed address: an e-mail address, or a phone number "
                                                       "(+country code) for SMS"),
              contact: Optional[str] = typer.Option(None, "--contact", help="Render for this contact (e-mail); "
                                                                             "default: the sample contact of "
                                                                             "`nurture preview`"),
              channel: Optional[str] = typer.Option(None, "--channel", help="For a step with `channels:`: "
                                                                             "which one to test (default: the first)")
              ) -> None:
    """Send one step, rendered as for a contact, to a seed address through the configured channel.

    Marked as a test ("[TEST] " subject or text, header X-Nurture-Test: 1) and never recorded:
    no message row, so no cap, report or reconcile counts it. Links in it do not work."""
    from nurture.runtime import Runtime
    from nurture.test_send import SeedSendError, send_test
    spec = _project(journey)
    rt = Runtime(store(), spec, env=dict(os.environ))
    try:
        result = send_test(rt, journey, step, to, contact_email=contact, channel=channel)
    except SeedSendError as exc:
        raise CliError(str(exc)) from None
    finally:
        rt.close()
    if not result.sent:
        raise CliError(f"test send not delivered: {result.integration} answered {result.status}"
                       + (f" ({result.reason})" if result.reason else "")
                       + "; nothing was recorded")
    console.print(f"test send: {journey} / {step} ({result.channel} via {result.integration}) → {result.to}",
                  markup=False)
    console.print(f"rendered for: {result.contact}", markup=False)
    if result.channel == "email":
        console.print(f"subject: {result.subject}", markup=False)
    else:
        console.print(f"text: {result.text}", markup=False)
    if result.provider_id:
        console.print(f"provider id: {result.provider_id}", markup=False)
    console.print("not recorded: no message row, not counted by caps or the report", markup=False)


def register(app: typer.Typer) -> None:
    app.command("test-send")(test_send)

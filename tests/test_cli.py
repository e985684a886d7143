"""The `nurture` command as users script it: exit codes, messages, and never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli_inproc import run_cli
from tests.conftest import write_project

JOURNEY = """
name: cart_nudge
trigger: {event: add_to_cart, where: {property: {cart_value: {gte: 20}}}}
steps:
  - id: reminder
    send: {channel: email, template: hello, subject: "Your cart, {{ contact.first_name }}"}
  - id: text
    send: {channel: sms, template: hello}
"""


def nurture(root: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "NURTURE_PROJECT": str(root), "NURTURE_DATABASE_URL": f"sqlite:///{root / '.nurture' / 'cli.db'}",
           "NURTURE_DATA_DIR": str(root / ".nurture"), "COLUMNS": "200"}
    env.pop("NURTURE_DEBUG", None)
    proc = run_cli(list(args), env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def project(tmp_path) -> Path:
    return write_project(tmp_path / "shop", {"cart_nudge": JOURNEY})


def test_validate_accepts_a_good_project(project):
    out = nurture(project, "validate", check=True)
    assert "ok: 1 journey(s)" in out.stdout


def test_validate_names_a_journey_whose_file_is_gone_while_contacts_are_active_in_it(tmp_path):
    """Deleting (or renaming) a journey's file leaves its contacts where they are: validate says
    so, with how many, instead of `ok` alone."""
    project = write_project(tmp_path / "shop", {"cart_nudge": JOURNEY.replace("steps:", "steps:\n  - {id: pause, wait: 1d}")})
    from datetime import datetime, timezone

    from nurture.runtime import Runtime, run_tick
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    from tests.engine_fixtures import add_event, subscriber
    (project / ".nurture").mkdir(exist_ok=True)
    store = open_store(f"sqlite:///{project / '.nurture' / 'cli.db'}")
    try:
        cid = subscriber(store, "ann@example.com")
        at = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
        add_event(store, cid, "add_to_cart", at, {"cart_value": 50})
        rt = Runtime(store, load_project(project), env={"NURTURE_DATA_DIR": str(project / ".nurture")})
        run_tick(rt, "cart_nudge", at.replace(minute=5))  # enrolls: she waits a day
    finally:
        store.dispose()
    assert "warning" not in nurture(project, "validate", check=True).stdout
    (project / "journeys" / "cart_nudge.yaml").rename(project / "cart_nudge.yaml.bak")
    out = nurture(project, "validate", check=True).stdout
    assert "journey 'cart_nudge' ran here, but no file in journeys/ declares it: 1 contact(s) are still active" in out
    assert "1 warning(s)" in out


def test_a_project_directory_that_does_not_exist_is_an_error_not_a_new_project(project, tmp_path):
    """A mistyped --project made a new, empty project on the spot: the import went there with
    exit 0 and `messages` answered []. Only `init` makes the directory."""
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email\nann@example.com\n")
    typo = tmp_path / "shpo"
    for args in (("import", "contacts", str(contacts)), ("messages", "--json")):
        out = nurture(typo, *args)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"the project directory {typo} does not exist" in out.stderr
    assert not typo.exists()
    assert nurture(typo, "init", str(typo), check=True) and (typo / "journeys").is_dir()


def test_validate_reports_every_error_with_location_and_exits_1(project):
    (project / "journeys" / "broken.yaml").write_text(
        "name: broken\ntrigger: {event: signup}\nexit_whn: []\nsteps:\n  - id: a\n    send: {channel: emial, template: hello}\n")
    (project / "journeys" / "bad_syntax.yaml").write_text("name: bad_syntax\nsteps: [\n")
    out = nurture(project, "validate")
    assert out.returncode == 1
    text = out.stdout
    assert "journeys/broken.yaml:3:1: unknown key 'exit_whn' (did you mean 'exit_when'?)" in text
    assert "journeys/broken.yaml:6:21: 'emial' is not allowed here" in text and "did you mean 'email'?" in text
    assert "journeys/bad_syntax.yaml:3:1: YAML syntax error" in text
    # the summary counts files, not "errors in valid journeys"
    assert "error(s) in 2 file(s): journeys/bad_syntax.yaml, journeys/broken.yaml; 1 journey(s) valid" in out.stderr


def test_import_names_bad_rows_by_line_and_field_and_keeps_the_good_ones(project, tmp_path):
    csv = tmp_path / "contacts.csv"
    csv.write_text("email,first_name,phone,country,consent_email,plan\n"
                   "ana@example.com,Ana,+4915112345678,DE,granted,pro\n"
                   "not-an-email,Bob,,,,\n"
                   "cy@example.com,Cy,12345,DE,maybe,free\n"
                   "dee@example.com,Dee,,,pending,team\n")
    out = nurture(project, "import", "contacts", str(csv))
    assert out.returncode == 1
    assert "contacts.csv:3: email:" in out.stderr
    assert "contacts.csv:4: phone:" in out.stderr and "contacts.csv:4: consent_email:" in out.stderr
    assert "2 created" in out.stdout
    again = nurture(project, "import", "contacts", str(csv))
    assert "0 created, 2 updated" in again.stdout


def test_track_is_idempotent_and_names_bad_lines(project, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([
        json.dumps({"event_id": "e1", "email": "ana@example.com", "event": "add_to_cart",
                    "properties": {"cart_value": 40}, "timestamp": "2026-11-20T10:00:00Z"}),
        "{not json",
        json.dumps({"event_id": "e2", "email": "ana@example.com", "event": "add_to_cart", "timestamp": "yesterday"}),
    ]) + "\n")
    first = nurture(project, "track", str(events))
    assert first.returncode == 1
    assert "events.jsonl:2: line: not valid JSON" in first.stderr
    assert "events.jsonl:3: timestamp:" in first.stderr
    assert "1 new event(s)" in first.stdout
    second = nurture(project, "track", str(events))
    assert "0 new event(s), 1 already known" in second.stdout


def test_consent_unknown_contact_and_bad_channel_are_clear_errors(project):
    out = nurture(project, "consent", "grant", "ghost@example.com", "--channel", "email")
    assert out.returncode == 1 and "no contact with e-mail ghost@example.com" in out.stderr
    out = nurture(project, "consent", "grant", "ghost@example.com", "--channel", "fax")
    assert out.returncode == 2 and "fax" in out.stderr


@pytest.mark.xdist_group("prefect")
def test_run_ticks_through_prefect_and_messages_json_shows_every_outcome(project, tmp_path, prefect_api):
    csv = tmp_path / "c.csv"
    csv.write_text("email,first_name,consent_email\nana@example.com,Ana,granted\nbo@example.com,Bo,revoked\n")
    nurture(project, "import", "contacts", str(csv), check=True)
    nurture(project, "consent", "grant", "ana@example.com", "--channel", "email", "--at", "2026-11-01T00:00:00Z", check=True)
    nurture(project, "consent", "revoke", "bo@example.com", "--channel", "email", "--at", "2026-11-01T00:00:00Z", check=True)
    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"event_id": f"c{i}", "email": e, "event": "add_to_cart",
                                          "properties": {"cart_value": 50}, "timestamp": "2026-11-20T10:00:00Z"}) + "\n"
                              for i, e in enumerate(["ana@example.com", "bo@example.com"])))
    nurture(project, "track", str(events), check=True)
    run = nurture(project, "run", "--now", "2026-11-20T10:05:00Z", check=True)
    assert "journey-cart_nudge" in run.stdout
    log = json.loads(nurture(project, "messages", "--json", check=True).stdout)
    outcomes = {(m["contact"], m["step"]): (m["status"], m["reason"]) for m in log}
    assert outcomes[("ana@example.com", "reminder")] == ("sent", None)
    assert outcomes[("bo@example.com", "reminder")] == ("suppressed", "consent_revoked")
    assert outcomes[("ana@example.com", "text")] == ("skipped", "no_phone") or outcomes[("ana@example.com", "text")][0] == "suppressed"
    assert {"contact", "journey", "step", "channel", "status", "reason", "due_at", "sent_at"} < set(log[0])
    assert {"id", "enrollment_id", "attempts", "provider_id", "message_id", "subject", "arm"} < set(log[0])
    assert list((project / ".nurture" / "outbox" / "email" / "cart_nudge").glob("*.eml"))


@pytest.mark.xdist_group("prefect")
def test_the_tick_that_reconciles_a_crashed_runs_messages_says_what_it_recorded(tmp_path, prefect_api):
    """A run killed mid-delivery leaves its messages `sending`: one its channel has (the .eml
    written), one it never got. The tick 30 minutes later reconciles them — and says so, in
    `nurture run`'s output and in the journey's artifact, instead of "no message due"."""
    from datetime import datetime, timedelta, timezone

    import anyio
    from prefect import get_client
    from sqlalchemy import text

    from nurture.runtime import Runtime, run_tick
    from nurture.spec.project import load_project
    from nurture.store.db import open_store
    from tests.engine_fixtures import add_event, subscriber
    root = write_project(tmp_path / "shop", {"welcome": (
        "name: welcome\ntrigger: {event: signup}\nsteps:\n"
        "  - id: hello\n    send: {channel: email, template: hello, subject: Hi}\n")})
    (root / ".nurture").mkdir()
    at = datetime(2026, 12, 10, 11, tzinfo=timezone.utc)
    store = open_store(f"sqlite:///{root / '.nurture' / 'cli.db'}")
    rt = Runtime(store, load_project(root), env={"NURTURE_DATA_DIR": str(root / ".nurture")})
    try:
        for email in ("ann@example.com", "bob@example.com"):
            add_event(store, subscriber(store, email), "signup", at - timedelta(minutes=5))
        run_tick(rt, "welcome", at)
        # As the kill left them: `sending`, claimed by a run that is gone; bob's never written.
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE message SET status = 'sending', claim = 'dead-run', claimed_at = :at, "
                              "sent_at = NULL"), {"at": at})
            bob = conn.execute(text("SELECT m.id FROM message m JOIN contact c ON c.id = m.contact_id "
                                    "WHERE c.email = 'bob@example.com'")).scalar()
    finally:
        rt.close()
        store.dispose()
    next(root.glob(f".nurture/outbox/email/*/{bob:09d}.eml")).unlink()
    run = nurture(root, "run", "--now", (at + timedelta(minutes=30)).isoformat(), check=True)
    assert "reconciled after a crash: 1 sent, 1 queued again" in run.stdout, run.stdout

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()
    described = [a.description or "" for a in anyio.run(artifacts)
                 if a.key == "journey-welcome" and f"project {root}," in (a.description or "")]
    assert described and "reconciled after a crash: 1 sent, 1 queued again" in described[-1]
    log = {m["contact"]: (m["status"], m["reason"]) for m in json.loads(nurture(root, "messages", "--json").stdout)}
    assert log == {"ann@example.com": ("sent", "reconciled"), "bob@example.com": ("queued", "requeued_after_crash")}


def test_serve_with_a_bad_sync_timezone_is_a_user_error_naming_the_setting(project):
    """Before it needs a Prefect server (none listens here), serve reads the setting: exit 1 and
    the variable named, not "internal error" from Prefect's deployment model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURTURE_", "PREFECT_"))}
    env.update(NURTURE_PROJECT=str(project), NURTURE_CREATE_DATABASE="1", NURTURE_SYNC_TIMEZONE="Mars/Olympus",
               NURTURE_DATA_DIR=str(project / ".nurture"), PREFECT_API_URL="http://127.0.0.1:9/api")
    out = run_cli(["serve"], env, timeout=120)
    assert (out.returncode, out.stderr.strip()) == (
        1, "error: NURTURE_SYNC_TIMEZONE: unknown time zone 'Mars/Olympus' (an IANA name such as Europe/Berlin)")


def test_run_with_a_bad_clock_or_unknown_journey_says_so(project):
    out = nurture(project, "run", "--now", "tomorrow-ish")
    assert out.returncode == 1 and "--now:" in out.stderr
    out = nurture(project, "run", "--journey", "cart_nuge")
    assert out.returncode == 1 and "did you mean 'cart_nudge'?" in (out.stdout + out.stderr)
    out = nurture(project, "run", "--workers", "0")
    assert out.returncode == 2 and "--workers" in out.stderr and "Traceback" not in out.stderr


def test_preview_renders_email_and_counts_sms_segments(project):
    out = nurture(project, "preview", "cart_nudge", check=True)
    assert "Subject: Your cart, Alex" in out.stdout
    assert "GSM-7, 1 segment(s)" in out.stdout


@pytest.mark.parametrize("event, message", [
    ("[" * 1000 + "]" * 1000, "--event is nested far too deep"),  # was RecursionError, "internal error", exit 70
    ('{"value": ' + "9" * 5000 + "}", "--event is not JSON: Exceeds the limit"),
    ("{oops", "--event is not JSON: Expecting property name"),
    ("[1]", "--event must be a JSON object"),
], ids=["deep", "long-integer", "broken", "a-list"])
def test_preview_refuses_an_event_it_cannot_read_by_name(project, event, message):
    out = nurture(project, "preview", "cart_nudge", "--event", event)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr + out.stdout


def test_outside_a_project_the_error_says_where_to_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = nurture(empty, "validate")
    assert out.returncode == 1 and "no journeys/ folder" in out.stdout + out.stderr


def test_init_makes_a_project_that_validates_and_previews_and_refuses_to_overwrite_one(tmp_path):
    """`nurture init DIR`: one journey, policies, the layout and a template — valid at once."""
    root = tmp_path / "newshop"
    out = nurture(root, "init", str(root), check=True)
    assert "created a project" in out.stdout
    assert nurture(root, "validate", check=True).stdout.startswith("ok: 1 journey(s)")
    preview = nurture(root, "preview", "welcome", check=True)
    assert "Subject: Welcome, Alex!" in preview.stdout  # a sample contact when the store has none
    again = nurture(root, "init", str(root))
    assert again.returncode == 2 and "already holds a project" in again.stderr
    version = nurture(root, "--version", check=True)
    assert version.stdout.startswith("nurture ")


def test_an_error_message_keeps_its_brackets(project):
    """A CliError is text, not console markup: '[…]' in it is printed as written."""
    out = nurture(project, "consent", "grant", "[ghost]@example.com", "--channel", "email")
    assert out.returncode == 1 and "[ghost]@example.com" in out.stderr


def test_each_bad_option_is_named_and_refused_even_when_there_is_nothing_to_do(project):
    """`consent grant --at garbage` blamed --now; sync and conversions without destinations
    took any --now with exit 0; `requeue --reason ''` re-queued every failed message."""
    cases = [
        (("consent", "grant", "ann@example.com", "--channel", "email", "--at", "garbage"), "--at: "),
        (("sync", "--now", "garbage"), "--now: "),
        (("conversions", "--now", "garbage"), "--now: "),
        (("requeue", "--reason", " "), "--reason: give the start of a failure reason"),
    ]
    for args, message in cases:
        out = nurture(project, *args)
        assert out.returncode == 1, (args, out.stdout + out.stderr)
        assert f"error: {message}" in out.stderr, (args, out.stderr)

"""Specification: `nurture test-send JOURNEY --step ID --to ADDRESS [--contact EMAIL]` renders one
send step exactly as for a contact (or the sample contact of `nurture preview`) and sends it,
marked as a test — "[TEST] " before the subject and `X-Nurture-Test: 1` for e-mail, "[TEST] "
before an SMS — through the configured channel to a seed address. It writes nothing to the
store: no message row, so no cap, report or reconcile ever sees it. Wrong input and a channel
that cannot send end with one error line and a non-zero exit, never a traceback."""
from __future__ import annotations

import email
import email.policy
import json
import shutil
import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from nurture.runtime.tick import run_tick
from nurture.store.tables import enrollment_t, message_t, suppression_t
from nurture.test_send import SeedSendError, send_test
from nurture.tokens import verify_token
from tests.conftest import DEFAULT_POLICIES, utc
from tests.engine_fixtures import add_event, journey_yaml, messages, subscriber
from tests.test_smtp_delivery import Recorder, _free_port, smtp_server  # noqa: F401  (the aiosmtpd fixture)

NOW = utc(2026, 3, 2, 12, 0)
SECRET = "test-send-secret-0123456789"
PROMO = journey_yaml("promo", """
- id: hello
  send: {channel: email, template: promo, subject: "Hello {{ contact.first_name }}"}
- id: pause
  wait: 1d
- id: nudge
  send: {channel: sms, template: hello}
""")
TEMPLATES = {"email/promo.html": "<p>Hi {{ contact.first_name }}, your cart of {{ event.cart_value | default(0) }} EUR waits."
                                 "</p><a href=\"{{ links.unsubscribe }}\">unsubscribe</a>"}
# One marketing e-mail a week: a test send that counted would hold the contact's real one back.
ONE_A_WEEK = DEFAULT_POLICIES.replace("{channel: email, max: 3, per: 7d}", "{channel: email, max: 1, per: 7d}")
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _runtime(make_runtime, **env: str):
    rt = make_runtime({"promo": PROMO}, templates=TEMPLATES, policies=ONE_A_WEEK)
    rt.env.update({"NURTURE_SECRET_KEY": SECRET, "NURTURE_PUBLIC_URL": "https://shop.example", **env})
    return rt


def _rows(store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (message_t, suppression_t, enrollment_t)}


@sqlite_only
def test_over_smtp_the_seed_gets_the_contacts_rendering_marked_as_a_test_and_nothing_is_recorded(
        make_runtime, store, smtp_server):
    recorder = Recorder()
    port = smtp_server(recorder)
    rt = _runtime(make_runtime, NURTURE_EMAIL_BACKEND="smtp", NURTURE_SMTP_HOST="127.0.0.1",
                  NURTURE_SMTP_PORT=str(port), NURTURE_SMTP_SECURITY="none", NURTURE_FROM_EMAIL="news@shop.example")
    ann = subscriber(store, "ann@example.com", first_name="Ann")
    add_event(store, ann, "signup", NOW - timedelta(minutes=5), {"cart_value": 42})

    results = [send_test(rt, "promo", "hello", "Seed@QA.example", contact_email="ann@example.com", now=NOW)
               for _ in range(2)]

    assert [(r.status, r.integration, r.to, r.subject) for r in results] == \
        [("sent", "email.smtp", "seed@qa.example", "[TEST] Hello Ann")] * 2
    assert [rcpt for _, rcpt, _, _ in recorder.received] == [["seed@qa.example"]] * 2
    mails = [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw, _ in recorder.received]
    for msg in mails:
        assert str(msg["Subject"]) == "[TEST] Hello Ann" and msg["X-Nurture-Test"] == "1"
        assert msg["To"].addresses[0].addr_spec == "seed@qa.example"
        html = msg.get_body(("html",)).get_content()
        assert "Hi Ann, your cart of 42 EUR waits." in html  # the contact and its trigger event
        token = str(msg["List-Unsubscribe"]).split("/u/")[1].split(">")[0]
        assert verify_token(SECRET, token, "unsubscribe") is None  # a test mail's links act on no one
    assert mails[0]["Message-ID"] != mails[1]["Message-ID"]  # inboxes keep both test sends
    assert _rows(store) == {"message": 0, "suppression": 0, "enrollment": 0}

    # Caps unaffected: two test sends, yet the contact's one marketing e-mail of the week goes out.
    run_tick(rt, "promo", NOW)
    assert [(m.step_id, m.status) for m in messages(store)] == [("hello", "sent")]
    assert [rcpt for _, rcpt, _, _ in recorder.received][-1] == ["ann@example.com"]
    assert not str(email.message_from_bytes(recorder.received[-1][2], policy=email.policy.default)["Subject"]) \
        .startswith("[TEST]")


@sqlite_only
def test_a_refused_seed_is_reported_not_recorded_as_a_bounce(make_runtime, store, smtp_server):
    port = smtp_server(Recorder(replies={"gone@qa.example": "550 5.1.1 No such user"}))
    rt = _runtime(make_runtime, NURTURE_EMAIL_BACKEND="smtp", NURTURE_SMTP_HOST="127.0.0.1",
                  NURTURE_SMTP_PORT=str(port), NURTURE_SMTP_SECURITY="none")
    result = send_test(rt, "promo", "hello", "gone@qa.example", now=NOW)
    assert (result.sent, result.status) == (False, "failed") and result.reason.startswith("smtp_rcpt_rejected: 550")
    assert _rows(store) == {"message": 0, "suppression": 0, "enrollment": 0}


@sqlite_only
def test_the_sample_contact_stands_in_without_contact_and_an_unknown_contact_is_an_error(make_runtime, store):
    rt = _runtime(make_runtime)
    result = send_test(rt, "promo", "hello", "seed@qa.example", now=NOW)
    assert result.subject == "[TEST] Hello Alex" and result.contact.startswith("sample contact (Alex Example")
    with pytest.raises(SeedSendError, match="no contact with e-mail nobody@example.com"):
        send_test(rt, "promo", "hello", "seed@qa.example", contact_email="nobody@example.com")


@sqlite_only
def test_the_sample_contact_carries_the_sample_trigger_event_preview_renders_with(make_runtime, store):
    """docs/test-send.md's own example: a cart reminder reading `event.cart_value` (a documented
    property of add_to_cart) sends for the sample contact, as `nurture preview` renders it."""
    cart = journey_yaml("cart", '- id: reminder\n  send: {channel: email, template: cart, subject: "Your cart"}',
                        trigger="{event: add_to_cart}")
    rt = make_runtime({"cart": cart}, templates={
        "email/cart.html": '<p>{{ event.cart_value | money }} wait for you.</p><a href="{{ links.unsubscribe }}">u</a>'})
    rt.env.update({"NURTURE_SECRET_KEY": SECRET, "NURTURE_PUBLIC_URL": "https://shop.example"})
    result = send_test(rt, "cart", "reminder", "seed@qa.example", now=NOW)
    assert result.status == "sent", result
    [eml] = (rt.data_dir / "outbox" / "email").rglob("*.eml")
    body = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default).get_body(("plain",)).get_content()
    assert "129.00" in body  # event_schema.SAMPLES["add_to_cart"]["cart_value"]


@sqlite_only
def test_the_test_file_cannot_collide_with_a_real_messages_file(make_runtime, store):
    rt = _runtime(make_runtime)
    ann = subscriber(store, "ann@example.com", first_name="Ann")
    add_event(store, ann, "signup", NOW - timedelta(minutes=5))
    send_test(rt, "promo", "hello", "seed@qa.example", contact_email="ann@example.com", now=NOW)
    run_tick(rt, "promo", NOW)
    outbox = rt.data_dir / "outbox" / "email" / "promo"
    (real,) = messages(store)
    assert sorted(p.name for p in outbox.iterdir()) == ["000000000.eml", f"{real.id:09d}.eml"] and real.id > 0
    test_mail = email.message_from_bytes((outbox / "000000000.eml").read_bytes(), policy=email.policy.default)
    assert str(test_mail["Subject"]) == "[TEST] Hello Ann" and test_mail["To"].addresses[0].addr_spec == "seed@qa.example"
    real_mail = email.message_from_bytes((outbox / f"{real.id:09d}.eml").read_bytes(), policy=email.policy.default)
    assert str(real_mail["Subject"]) == "Hello Ann" and real_mail["X-Nurture-Test"] is None


# ---------------------------------------------------------------- the verb (in-process: cheap)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, sqlite_template):
    """nurture(*args) -> (exit code, stdout, stderr), run in this process on a project of PROMO."""
    from tests.conftest import write_project
    root = write_project(tmp_path / "shop", {"promo": PROMO}, templates=TEMPLATES)
    (root / ".nurture").mkdir()
    shutil.copyfile(sqlite_template, root / ".nurture" / "cli.db")
    for name in ("NURTURE_EMAIL_BACKEND", "NURTURE_SMS_BACKEND", "NURTURE_DEBUG", "NURTURE_SECRET_KEY",
                 "NURTURE_PUBLIC_URL", "NURTURE_FROM_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NURTURE_PROJECT", str(root))
    monkeypatch.setenv("NURTURE_DATA_DIR", str(root / ".nurture"))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{root / '.nurture' / 'cli.db'}")

    def run(*args: str) -> tuple[int, str, str]:
        from nurture.cli import main
        monkeypatch.setattr(sys, "argv", ["nurture", *args])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err, out.out + out.err
        return stop.value.code or 0, out.out, out.err
    run.root = root
    return run


def test_test_send_writes_the_marked_eml_and_sms_with_the_default_file_channels(cli):
    code, out, _ = cli("test-send", "promo", "--step", "hello", "--to", "seed@qa.example")
    assert code == 0, out
    assert "promo / hello (email via email.file) → seed@qa.example" in out and "subject: [TEST] Hello Alex" in out
    mail = email.message_from_bytes((cli.root / ".nurture/outbox/email/promo/000000000.eml").read_bytes(),
                                    policy=email.policy.default)
    assert str(mail["Subject"]) == "[TEST] Hello Alex" and mail["X-Nurture-Test"] == "1"

    code, out, _ = cli("test-send", "promo", "--step", "nudge", "--to", "+49 151 1234 5670")
    assert code == 0 and "(sms via sms.file) → +4915112345670" in out
    (line,) = (cli.root / ".nurture/outbox/sms.jsonl").read_text().splitlines()
    assert json.loads(line) | {"at": None} == {"message_id": 0, "to": "+4915112345670", "journey": "promo",
                                                "step": "nudge", "body": "[TEST] Hi Alex! Reply STOP to opt out.",
                                                "at": None}
    from nurture.store.db import open_store
    store = open_store(f"sqlite:///{cli.root / '.nurture' / 'cli.db'}")
    assert _rows(store) == {"message": 0, "suppression": 0, "enrollment": 0}
    store.dispose()


@pytest.mark.parametrize("args, says", [
    (("promx", "--step", "hello", "--to", "a@qa.example"), "no journey named 'promx' (did you mean 'promo'?)"),
    (("promo", "--step", "helo", "--to", "a@qa.example"), "journey 'promo' has no step 'helo' (its send steps: hello, nudge)"),
    (("promo", "--step", "pause", "--to", "a@qa.example"), "step 'pause' of journey 'promo' is a wait step, not a send"),
    (("promo", "--step", "hello", "--to", "not-an-address"), "--to 'not-an-address' is not an e-mail address"),
    (("promo", "--step", "nudge", "--to", "a@qa.example"), "--to 'a@qa.example' is not a phone number in E.164 form"),
    (("promo", "--step", "hello", "--to", "a@qa.example", "--contact", "who@example.com"),
     "no contact with e-mail who@example.com"),
])
def test_wrong_input_is_one_error_line_and_a_non_zero_exit(cli, args, says):
    code, out, err = cli("test-send", *args)
    assert code != 0 and out == ""
    assert err.startswith(f"error: {says}") and err.count("\n") == 1, err


def test_a_channel_that_cannot_send_is_an_error_and_nothing_is_recorded(cli, monkeypatch):
    monkeypatch.setenv("NURTURE_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("NURTURE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("NURTURE_SMTP_PORT", str(_free_port()))  # nobody listens: the server is down
    monkeypatch.setenv("NURTURE_SMTP_SECURITY", "none")
    code, _, err = cli("test-send", "promo", "--step", "hello", "--to", "seed@qa.example")
    assert code != 0 and err == ("error: the email channel cannot send: NURTURE_EMAIL_BACKEND=smtp needs "
                                 "NURTURE_FROM_EMAIL (the sender address)\n")

    monkeypatch.setenv("NURTURE_FROM_EMAIL", "news@shop.example")
    code, _, err = cli("test-send", "promo", "--step", "hello", "--to", "seed@qa.example")
    assert code != 0 and "will not send" in err  # a real channel needs a real secret and public URL first

    monkeypatch.setenv("NURTURE_SECRET_KEY", SECRET)
    monkeypatch.setenv("NURTURE_PUBLIC_URL", "https://shop.example")
    code, _, err = cli("test-send", "promo", "--step", "hello", "--to", "seed@qa.example")
    assert code != 0 and err.startswith("error: test send not delivered: email.smtp answered unavailable "
                                        "(smtp_connect_failed: ConnectionRefusedError)"), err

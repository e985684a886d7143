"""Specification: one bad stored record never stops a tick. A journey whose stage fails is
isolated and reported (one line, no traceback, a non-zero exit code); every other journey of
the tick still runs. Through the real `nurture run` (Prefect flow runs)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import write_project
from tests.test_cli import nurture

CART = """
name: cart
trigger: {event: add_to_cart, where: {property: {cart_value: {gte: 20}}}}
steps:
  - id: reminder
    send: {channel: email, template: hello, subject: "Your cart"}
"""
WELCOME = """
name: welcome
trigger: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: hello, subject: "Welcome"}
"""
ZEBRA = WELCOME.replace("name: welcome", "name: zebra")  # sorts after the broken journey


def _poison(db: Path) -> None:
    """A NaN stored by an older version (or by hand): SQLite's JSON functions refuse the row."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE event SET properties = ? WHERE name = 'add_to_cart'", ('{"cart_value": NaN}',))


@pytest.mark.xdist_group("prefect")
def test_a_poison_event_and_a_template_typo_each_fail_their_journey_alone_and_the_others_send(tmp_path, prefect_api):
    """One `nurture run` (Prefect starts once): `cart` meets a NaN stored in its trigger event,
    `broken` names a template that does not exist; `welcome` and `zebra` (which sorts after
    both) still send."""
    broken = WELCOME.replace("name: welcome", "name: broken").replace("template: hello", "template: helo")
    root = write_project(tmp_path / "shop", {"cart": CART, "broken": broken, "welcome": WELCOME, "zebra": ZEBRA})
    contacts = tmp_path / "contacts.jsonl"
    contacts.write_text(json.dumps({"email": "ann@example.com", "first_name": "Ann"}) + "\n")
    nurture(root, "import", "contacts", str(contacts), check=True)
    nurture(root, "consent", "grant", "ann@example.com", "--channel", "email", "--at", "2026-03-01T00:00:00Z", check=True)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in [
        {"event_id": "e1", "email": "ann@example.com", "event": "add_to_cart", "properties": {"cart_value": 25},
         "timestamp": "2026-03-04T10:00:00Z"},
        {"event_id": "e2", "email": "ann@example.com", "event": "signup", "timestamp": "2026-03-04T10:00:00Z"}]) + "\n")
    nurture(root, "track", str(events), check=True)
    _poison(root / ".nurture" / "cli.db")

    out = nurture(root, "run", "--now", "2026-03-04T10:05:00Z")
    assert out.returncode == 1
    assert "journeys/broken.yaml:5:" in out.stderr and "template 'helo' not found" in out.stderr
    assert "2 of 4 journey(s) failed: broken (broken has errors and did not tick" in out.stderr
    assert "cart (OperationalError: malformed JSON)" in out.stderr
    assert "journey-welcome" in out.stdout and "journey-zebra" in out.stdout
    log = json.loads(nurture(root, "messages", "--json", check=True).stdout)
    assert sorted((m["journey"], m["status"]) for m in log) == [("welcome", "sent"), ("zebra", "sent")]


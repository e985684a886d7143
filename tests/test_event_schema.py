"""`nurture validate` knows what a template may read: the trigger event's documented
properties (nurture.event_schema, kept equal to docs/events.md here) and the attribute names
contacts have in the database (nurture.store.attributes) — anything else is a located warning
with a did-you-mean."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nurture.event_schema import EVENTS
from nurture.spec.project import load_project
from nurture.store.attributes import attribute_names
from tests.conftest import write_project
from tests.engine_fixtures import add_contact

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def documented_table() -> dict[str, tuple[str, ...]]:
    out = {}
    for event, props in re.findall(r"^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|$", DOC.read_text(encoding="utf-8"), re.M):
        flat = re.sub(r"\([^)]*\)", "", props)
        out[event] = tuple(m.group(1) for item in flat.split(",") if (m := re.match(r"\s*★?`([a-z_]+)`", item)))
    return out


def test_the_schema_is_the_table_of_docs_events_md():
    assert documented_table() == EVENTS


def journey(event: str) -> dict[str, str]:
    return {"j": f"name: j\ntrigger: {{event: {event}}}\nsteps:\n  - id: hi\n    send: {{channel: email, template: t, subject: Hi}}\n"}


TEMPLATE = {"email/t.html": "<p>{{ event.cart_valeu }} {{ event.utm_source }} {{ event.name }} {{ contact.vip_levl }}</p>"
                            "<a href=\"{{ links.unsubscribe }}\">x</a>"}


def test_an_undocumented_property_of_a_documented_event_is_a_warning_with_a_suggestion(tmp_path):
    spec = load_project(write_project(tmp_path / "p", journey("add_to_cart"), templates=TEMPLATE))
    assert not spec.errors
    assert [str(w) for w in spec.warnings if "event." in str(w)] == [
        "templates/email/t.html:1:1: warning: 'event.cart_valeu' is not a documented property of 'add_to_cart' "
        "(docs/events.md); did you mean 'cart_value'?"]


def test_an_undocumented_event_is_not_checked(tmp_path):
    spec = load_project(write_project(tmp_path / "p", journey("my_own_event"), templates=TEMPLATE))
    assert not [w for w in spec.warnings if "event." in str(w)]


def test_attributes_from_the_database_name_what_contact_may_read(tmp_path):
    root = write_project(tmp_path / "p", journey("my_own_event"), templates=TEMPLATE)
    with_db = load_project(root, attributes={"vip_level", "company"})
    assert [str(w) for w in with_db.warnings if "contact." in str(w)] == [
        "templates/email/t.html:1:1: warning: 'contact.vip_levl' is not a contact field or an attribute any contact "
        "has in the database; did you mean 'vip_level'?"]
    assert not [w for w in load_project(root, attributes={"vip_levl"}).warnings if "contact." in str(w)]


def test_attribute_names_reads_the_keys_of_the_contacts(store):
    assert attribute_names(store) is None  # no contact yet: nothing is known
    add_contact(store, "a@example.com", attributes={"vip_level": "gold", "company": "ACME"})
    add_contact(store, "b@example.com", attributes={"plan": "pro"})
    add_contact(store, "c@example.com")
    assert attribute_names(store) == {"vip_level", "company", "plan"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_validate_reads_the_attributes_of_the_projects_database(tmp_path, monkeypatch, db_url):
    from typer.testing import CliRunner

    from nurture.cli import app
    from nurture.store.db import open_store
    root = write_project(tmp_path / "p", journey("add_to_cart"), templates=TEMPLATE)
    db = open_store(db_url)
    add_contact(db, "a@example.com", attributes={"vip_level": "gold"})
    db.dispose()
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    result = CliRunner().invoke(app, ["--project", str(root), "validate"])
    assert result.exit_code == 0, result.output
    assert "'contact.vip_levl' is not a contact field or an attribute any contact has in the database; " \
           "did you mean 'vip_level'?" in result.output

"""The integration registry finds one integration without importing every other: a tick (and
each delivery process of a large tick) that sends e-mail through `email.file` loads that entry
point alone. What it returns, its errors and a broken plug-in are as they were."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nurture import registry
from nurture.registry import IntegrationError, lookup

REPO = Path(__file__).resolve().parent.parent


def _fresh(code: str) -> dict:
    """Run `code` in a new interpreter (nothing imported yet) and return the JSON it prints."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_looking_up_one_channel_imports_that_integration_alone():
    got = _fresh("""
import json, sys
from nurture.registry import lookup
cls = lookup("email.file", "channel")
print(json.dumps({"cls": f"{cls.__module__}.{cls.__name__}",
                  "integrations": sorted(m for m in sys.modules if m.startswith("integrations."))}))
""")
    assert got["cls"] == "integrations.file_channels.FileEmailChannel"
    assert "integrations.google_conversions" not in got["integrations"]
    assert "integrations.hubspot" not in got["integrations"]
    assert "integrations.file_channels" in got["integrations"]


def test_listing_integrations_still_loads_every_entry_point():
    got = _fresh("""
import json
from nurture.registry import available, lookup
lookup("email.file", "channel")
print(json.dumps(sorted(available())))
""")
    assert {"email.file", "email.smtp", "hubspot", "conversions.google", "sms.twilio"} <= set(got)


def test_an_unknown_name_or_a_name_of_another_role_is_the_error_naming_what_there_is():
    with pytest.raises(IntegrationError, match=r"no channel named 'email.fiel' \(did you mean 'email.file'\?\)"):
        lookup("email.fiel", "channel")
    with pytest.raises(IntegrationError, match=r"no channel named 'hubspot'; known: .*email.file"):
        lookup("hubspot", "channel")
    assert lookup("hubspot", "crm").__name__ == "HubSpotDestination"


def test_a_registered_class_wins_over_the_entry_point_of_its_name(monkeypatch):
    class Mine:
        name = "email.file"
        role = "channel"
    monkeypatch.setitem(registry._registry, "email.file", Mine)
    assert lookup("email.file", "channel") is Mine


def test_a_plug_in_that_fails_to_import_is_not_found_and_does_not_raise_its_error(monkeypatch):
    class Broken:
        name = "email.broken"
        group = registry.ENTRY_POINT_GROUP

        def load(self):
            raise ImportError("no module named 'missing_sdk'")

    def entry_points(group, name=None):
        assert group == registry.ENTRY_POINT_GROUP
        return [Broken()] if name in (None, "email.broken") else []
    monkeypatch.setattr(registry, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_registry", {})
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(IntegrationError, match="no channel named 'email.broken'"):
        lookup("email.broken", "channel")
    assert "no module named 'missing_sdk'" in registry._registry["!email.broken"].error


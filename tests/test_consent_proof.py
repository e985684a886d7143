"""Specification: proof of consent and data minimization. A consent given on Nurture's web pages
keeps the client's address and browser with the ledger row (double opt-in confirmation,
preference center, one-click unsubscribe); an import may carry when and where each consent was
given (`consent_<channel>_at`, `consent_<channel>_source`), which become the row's time and
source — so a tick in the past sees it; `nurture export-contact` shows all of it; an erasure
removes the address and browser too. policies.yaml `keep_attributes` keeps only the listed
attributes of an import and names the dropped columns."""
from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from nurture.consent_ledger import proof_of
from nurture.ingest import import_contacts
from nurture.store.tables import consent_t, contact_t
from tests.conftest import DEFAULT_POLICIES, utc, write_project
from tests.engine_fixtures import add_contact
from tests.test_privacy_erase import nurture

NOW = utc(2026, 5, 4, 10)


def _ledger(store, email):
    with store.reading() as conn:
        return conn.execute(select(consent_t).join(contact_t, contact_t.c.id == consent_t.c.contact_id)
                            .where(contact_t.c.email == email).order_by(consent_t.c.id)).all()


def test_the_proof_of_a_web_request_is_cleaned():
    assert proof_of("2001:db8::1", "Mozilla/5.0 (X11)") == ("2001:db8::1", "Mozilla/5.0 (X11)")
    assert proof_of("testclient", "A\r\nB" + "x" * 600).ip_address is None
    assert len(proof_of(None, "A\r\nB" + "x" * 600).user_agent) == 512 and "\n" not in proof_of(None, "A\nB").user_agent


def test_a_double_opt_in_confirmation_keeps_the_address_and_browser(make_runtime, store):
    from fastapi.testclient import TestClient

    from nurture.double_opt_in import request_opt_in
    from nurture.tokens import make_token
    from nurture.web.app import create_app
    rt = make_runtime({})
    cid = add_contact(store, "doi@example.com")
    with store.engine.begin() as conn:
        request_opt_in(conn, rt.project.policies, cid, source="test:signup", now=NOW)
    app = create_app(rt.store, rt.project, dict(rt.env), clock=lambda: NOW + timedelta(hours=1))
    token = make_token(rt.settings.signing_secret, "confirm", cid, "marketing", "email", ttl=86400 * 30)
    with TestClient(app, client=("198.51.100.23", 50000)) as http:
        scanned = http.get(f"/confirm/{token}", headers={"User-Agent": "LinkScanner/1.0"})  # opened: nothing
        assert scanned.status_code == 200 and [r.status for r in _ledger(store, "doi@example.com")] == ["pending"]
        page = http.post(f"/confirm/{token}", headers={"User-Agent": "Mozilla/5.0 (Macintosh) Safari/605"})
    assert page.status_code == 200
    granted = [r for r in _ledger(store, "doi@example.com") if r.status == "granted"]
    assert [(r.source, r.ip_address, r.user_agent) for r in granted] == [
        ("double_opt_in:confirm", "198.51.100.23", "Mozilla/5.0 (Macintosh) Safari/605")]


def test_an_import_carries_when_and_where_consent_was_given(store, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("email,consent_email,consent_email_at,consent_email_source,consent_sms,phone\n"
                    "ann@example.com,granted,2025-03-01T09:30:00Z,webshop checkout 2025,granted,+4915112345678\n")
    result = import_contacts(store, path, now=NOW, policy_version="p1")
    assert result.errors == [] and result.consents == 2
    by_channel = {r.channel: r for r in _ledger(store, "ann@example.com")}
    assert by_channel["email"].recorded_at == utc(2025, 3, 1, 9, 30)
    assert by_channel["email"].source == "import:list.csv (webshop checkout 2025)"
    assert by_channel["sms"].recorded_at == NOW and by_channel["sms"].source == "import:list.csv"


def test_a_granted_without_a_time_is_not_written_over_a_revocation(store, tmp_path):
    """A stale export (`granted`, no time) was stamped with the import's time and so outranked
    every revocation on record. It is skipped with a warning naming line and field, the rest of
    the row is kept; a grant whose time the file gives, later than the revocation, still counts."""
    from nurture.consent_ledger import current_consent, record_consent
    ann = add_contact(store, "ann@example.com", phone="+4915112345678")
    bo = add_contact(store, "bo@example.com")
    with store.engine.begin() as conn:
        for channel in ("sms", "ads"):
            record_consent(conn, ann, channel, "granted", source="test", at=utc(2026, 1, 1), confirmed=True)
            record_consent(conn, ann, channel, "revoked", source="cli", at=utc(2026, 4, 1))
        record_consent(conn, ann, "email", "revoked", source="cli", at=NOW + timedelta(days=30))  # dated later
    path = tmp_path / "crm.csv"
    path.write_text("email,first_name,consent_sms,consent_ads,consent_ads_at,consent_email\n"
                    "bo@example.com,Bo,granted,,,granted\n"
                    "ann@example.com,Ann,granted,granted,2026-04-02T00:00:00Z,granted\n")
    result = import_contacts(store, path, now=NOW, policy_version="p1")
    assert result.errors == [] and result.consents == 3 and result.skipped_consents == 2
    assert [str(w) for w in result.warnings] == [
        "crm.csv:3: consent_sms: revoked in Nurture on 2026-04-01T00:00:00+00:00: not re-granted by a 'granted' "
        "without a time (give consent_sms_at or --consent-at: when it was given again)",
        "crm.csv:3: consent_email: revoked in Nurture on 2026-06-03T10:00:00+00:00: not re-granted by a 'granted' "
        "without a time (give consent_email_at or --consent-at: when it was given again)"]
    with store.reading() as conn:
        state = {channel: current_consent(conn, [ann, bo], channel, "marketing", NOW + timedelta(days=31))
                 for channel in ("sms", "ads", "email")}
        first_name = conn.execute(select(contact_t.c.first_name).where(contact_t.c.id == ann)).scalar_one()
    assert {channel: (s[ann][0], s.get(bo, ("none",))[0]) for channel, s in state.items()} == {
        "sms": ("revoked", "granted"), "ads": ("granted", "none"), "email": ("revoked", "granted")}
    assert first_name == "Ann"


def test_bad_consent_proof_columns_are_named_by_line_and_field(store, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("email,consent_email,consent_email_at,consent_sms_source\n"
                    "a@example.com,granted,yesterday,\n"
                    "b@example.com,granted,2027-01-01T00:00:00Z,\n"
                    "c@example.com,,,a form\n")
    errors = [(e.line, e.field) for e in import_contacts(store, path, now=NOW).errors]
    assert errors == [(2, "consent_email_at"), (3, "consent_email_at"), (4, "consent_sms_source")]


def test_keep_attributes_drops_the_other_columns_and_names_them(store, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("email,first_name,plan,birthday,shoe_size\nann@example.com,Ann,pro,1990-01-01,38\n")
    result = import_contacts(store, path, now=NOW, keep_attributes=["plan"])
    assert result.dropped_columns == {"birthday", "shoe_size"}
    with store.reading() as conn:
        row = conn.execute(select(contact_t.c.first_name, contact_t.c.attributes)).one()
    assert row.first_name == "Ann" and row.attributes == {"plan": "pro"}


def test_the_cli_warns_about_dropped_columns_and_export_shows_the_proof(tmp_path):
    root = write_project(tmp_path / "shop", {}, policies=DEFAULT_POLICIES + "keep_attributes: [plan]\n")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("email,plan,hobby,consent_email,consent_email_at,consent_email_source\n"
                        "ann@example.com,pro,chess,granted,2025-03-01T09:30:00Z,fair stand\n")
    run = nurture(root, "import", "contacts", str(contacts))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: contacts.csv: column(s) not kept (policies.yaml keep_attributes): hobby" in run.stderr
    export = nurture(root, "export-contact", "ann@example.com")
    (consent,) = json.loads(export.stdout)["consents"]
    assert consent["source"] == "import:contacts.csv (fair stand)" and consent["recorded_at"].startswith("2025-03-01")
    assert {"ip_address", "user_agent", "policy_version"} <= set(consent)


def test_an_erasure_removes_the_address_and_browser_from_the_ledger(store):
    from nurture.consent_ledger import Proof, erase_consents, record_consent
    cid = add_contact(store, "gone@example.com")
    with store.engine.begin() as conn:
        record_consent(conn, cid, "email", "granted", source="web:preference_center", at=NOW,
                       proof=Proof("198.51.100.23", "Mozilla/5.0"))
        assert erase_consents(conn, cid, subject_hash="h", reason="request", at=NOW) == 1
    rows = [r for r in _ledger_by_id(store, cid) if r.status != "erased"]
    assert [(r.source, r.ip_address, r.user_agent) for r in rows] == [("web", None, None)]


def _ledger_by_id(store, cid):
    with store.reading() as conn:
        return conn.execute(select(consent_t).where(consent_t.c.contact_id == cid)).all()

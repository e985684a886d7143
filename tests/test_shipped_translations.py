"""The shipped project speaks English and German through its catalogs: every `_()` message of
templates/ and of the journeys' subjects has a German translation in translations/de.po, every
shipped message renders for an English and a German contact, with or without a first name,
without a stray comma — and the product catalog names its products in the reader's language."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

import pytest

from nurture.catalog import import_products, install_catalog
from nurture.compiler import compile_journey
from nurture.rendering.templates import TemplateLibrary
from nurture.send.context import ContextRow, template_context
from nurture.spec.project import load_project
from tests.conftest import REPO

SKELETON = REPO / "nurture" / "skeleton"
# one trigger event with every property the shipped templates read (view, cart, purchase, form)
EVENT = {"sku": "COF-3", "product_name": "Milk frother", "category": "coffee", "price": 39.0, "cart_value": 158.0,
         "item_count": 2, "order_id": "A-1", "value": 158.0, "topic": "marketing automation"}
LINKS = {"unsubscribe": "https://shop.example/u/t", "preferences": "https://shop.example/p/t",
         "home": "https://shop.example", "confirm": "https://shop.example/confirm/t"}
IMPRINT = {"company": "Nurture Shop GmbH", "address": None, "register": None, "represented_by": "Anna Meier",
           "contact": None}
STRAY = (" ,", "Hallo ,", "Hi ,", ", !", ", ?", ",,")


def _context(locale: str, first_name: str | None) -> dict:
    row = ContextRow(contact_id=7, email="kim@example.com", phone="+4915112345678", first_name=first_name,
                     last_name="Meier", country="DE", locale=locale, timezone="Europe/Berlin", lifecycle_stage="lead",
                     score=0.0, attributes={"company": "Firm Ltd", "industry": "saas"}, step_id="s",
                     event_name="purchase", event_properties=EVENT, event_at=datetime(2026, 11, 2, tzinfo=timezone.utc))
    return template_context(row, {"name": "j", "description": ""}, LINKS, IMPRINT, expires_days=30,
                            sender="Nurture Shop")


@lru_cache(maxsize=None)
def _project(root):
    """The project and its template library, loaded (and validated) once for this module: a
    load takes seconds, and a library compiles each template once."""
    spec = load_project(root)
    return spec, spec.templates


def _rendered(root, locale: str, first_name: str | None) -> dict[str, str]:
    """Every message of the project's journeys (subject, HTML, text, SMS) and every other e-mail
    template (system mail), rendered for one contact: where → text."""
    spec, library = _project(root)
    ctx, out = _context(locale, first_name), {}
    for name, journey in spec.journeys.items():
        plan = compile_journey(journey)
        for sid in plan.order:
            send = plan.nodes[sid].step.send if plan.nodes[sid].kind == "send" else None
            for channel in send.options if send else ():
                if channel == "email":
                    r = library.render_email(send.template, send.subject or "", ctx, send.preheader)
                    out.update({f"{name}.{sid}.subject": r.subject, f"{name}.{sid}.html": r.html,
                                f"{name}.{sid}.text": r.text})
                else:
                    out[f"{name}.{sid}.{channel}"] = library.text(channel, send.template).render(ctx)
    for template in library.names("email"):
        out.setdefault(f"email/{template}", library.render_email(template, "", ctx).text)
    return out


@pytest.mark.parametrize("root", [REPO, SKELETON], ids=["shipped", "skeleton"])
def test_every_message_of_the_templates_and_subjects_has_a_german_translation(root):
    spec, library = _project(root)
    assert spec.errors == []
    assert [str(w) for w in spec.warnings if "no translation" in str(w)] == []
    # and the templates no journey sends (system mail)
    messages = {m for channel in ("email", "sms") for name in library.names(channel)
                for m in library.translatable(channel, name)}
    assert messages and [m for m in sorted(messages) if library.localizer.catalogs.lookup("de", m) == m] == []


@pytest.mark.parametrize("root", [REPO, SKELETON], ids=["shipped", "skeleton"])
@pytest.mark.parametrize("locale, first_name", [("de", "Kim"), ("de", None), ("en", "Kim"), ("en", None), ("en", "")])
def test_every_shipped_message_renders_in_the_contacts_language_without_a_stray_comma(root, locale, first_name):
    rendered = _rendered(root, locale, first_name)
    assert rendered
    for where, text in rendered.items():
        assert not [s for s in STRAY if s in text], (where, text)
        if where.endswith(".html"):
            assert ("Abmelden" in text) == (locale == "de") and ("Unsubscribe" in text) == (locale == "en"), where
    if root == REPO:
        german = locale == "de"
        assert ("Noch unentschlossen" in rendered["cart_abandonment.reminder.subject"]) == german
        assert ("158,00\u00a0€" in rendered["cart_abandonment.incentive.html"]) == german
        assert ("€158.00" in rendered["cart_abandonment.incentive.html"]) == (not german)
        assert ("Vertreten durch Anna Meier" in rendered["welcome.welcome_value.html"]) == german
        sms = rendered["cart_abandonment.sms_nudge.sms"]
        assert sms.strip().startswith(("Hallo" if german else "Hi") + (" Kim," if first_name else ","))


def test_the_catalog_names_products_and_categories_in_the_readers_language(sqlite_url, tmp_path):
    from nurture.store.db import open_store
    store = open_store(sqlite_url)
    catalog = tmp_path / "products.csv"
    catalog.write_text("sku,name,category,price,rank,name_de,category_de\n"
                       "COF-1,Espresso beans 1 kg,coffee,18.90,1,Espressobohnen 1 kg,Kaffee\n"
                       "COF-3,Milk frother,coffee,39.00,2,Milchaufschäumer,Kaffee\n", encoding="utf-8")
    assert import_products(store, catalog).errors == []
    library = TemplateLibrary(REPO / "templates", currency="EUR")
    install_catalog(library, store)
    try:
        def cross_sell(locale):
            return library.render_email("post_purchase/cross_sell", "", _context(locale, "Kim")).html

        assert "Espressobohnen 1 kg" in cross_sell("de") and "Espresso beans" not in cross_sell("de")
        assert "Für Sie ausgewählt aus Kaffee:" in cross_sell("de") and "18,90\u00a0€" in cross_sell("de")
        assert "Espresso beans 1 kg" in cross_sell("en") and "Picked for you from coffee:" in cross_sell("en")
        reminder = library.render_email("browse/reminder", "", _context("de_AT", None)).html
        assert "Denken Sie noch an Milchaufschäumer?" in reminder  # de_AT falls back to name_de
        assert "Sie haben sich Milchaufschäumer in Kaffee angesehen." in reminder
    finally:
        store.dispose()

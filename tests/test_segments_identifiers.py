"""Specification: identifier normalization before hashing, per platform, as documented
(Meta, Google Data Manager, LinkedIn). Table-driven; pure functions."""
from __future__ import annotations

import hashlib

import pytest

from nurture.segments import identifiers as ids


@pytest.mark.parametrize("raw, meta_and_linkedin, google", [
    ("  John.Doe@Example.COM ", "john.doe@example.com", "john.doe@example.com"),
    ("John.Doe+Promo@GMail.com", "john.doe+promo@gmail.com", "johndoe@gmail.com"),
    ("j.o.h.n@googlemail.com", "j.o.h.n@googlemail.com", "john@googlemail.com"),
    ("first.last+x@outlook.com", "first.last+x@outlook.com", "first.last+x@outlook.com"),  # only gmail drops them
    ("a b@example.com", "ab@example.com", "ab@example.com"),
    ("not-an-email", None, None),
    ("", None, None),
    (None, None, None),
])
def test_email_rules(raw, meta_and_linkedin, google):
    assert ids.email(raw) == meta_and_linkedin
    assert ids.google_email(raw) == google


@pytest.mark.parametrize("raw, country, e164, meta", [
    ("+49 30 1234567", None, "+49301234567", "49301234567"),
    ("030 1234567", "DE", "+49301234567", "49301234567"),  # national format, the contact's country
    ("030 1234567", "de", "+49301234567", "49301234567"),
    ("(415) 555-2671", "US", "+14155552671", "14155552671"),
    ("0044 20 7946 0958", None, "+442079460958", "442079460958"),
    ("030 1234567", None, None, None),  # national without a country: unusable, not guessed
    ("12", "DE", None, None),
    (None, "DE", None, None),
])
def test_phone_rules(raw, country, e164, meta):
    assert ids.e164(raw, country) == e164
    assert ids.meta_phone(raw, country) == meta


@pytest.mark.parametrize("raw, expected", [
    ("José", "josé"), ("  Anna ", "anna"), ("O'Brien", "obrien"), ("Müller-Lüdenscheidt", "müllerlüdenscheidt"),
    ("Zoë", "zoë"), ("Jose\u0301", "josé"),  # decomposed accent → composed (NFC) before hashing
    ("--", None), (None, None),
])
def test_meta_name_rules_keep_utf8_letters(raw, expected):
    assert ids.meta_name(raw) == expected


@pytest.mark.parametrize("raw, expected", [("DE", "de"), (" us ", "us"), ("DEU", None), ("", None), (None, None)])
def test_meta_country_is_two_lowercase_letters(raw, expected):
    assert ids.meta_country(raw) == expected


def test_hashes_are_lowercase_hex_sha256_of_utf8():
    assert ids.hashed("josé") == hashlib.sha256("josé".encode("utf-8")).hexdigest()
    assert ids.hashed("test@example.com") == "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    assert ids.hashed(None) is None and ids.hashed("") is None

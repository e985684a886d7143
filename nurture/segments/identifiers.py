"""Identifier normalization before SHA-256, per ad platform, as each one documents it.

Pure functions, table-tested. A platform matches a hash only if we normalized exactly as it
does, so each rule says whose it is:
- Meta: e-mail trimmed and lowercased; phone digits only with the country code, no `+`;
  first/last name lowercased letters only (UTF-8 kept, so `José` stays `josé`); country two
  lowercase letters.
- Google (Data Manager API): e-mail lowercased with all whitespace removed, and for
  gmail.com / googlemail.com the dots and any `+suffix` of the local part removed; phone
  E.164 with the `+`.
- LinkedIn: SHA256_EMAIL of the trimmed, lowercased e-mail.
Hashes are lowercase hex SHA-256 of the UTF-8 bytes. `None` means "no usable value".
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Optional

import phonenumbers

_WHITESPACE = re.compile(r"\s+")
GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def hashed(value: Optional[str]) -> Optional[str]:
    return sha256_hex(value) if value else None


def email(raw: Optional[str]) -> Optional[str]:
    """Trimmed, lowercased, inner whitespace removed; None unless it looks like local@domain."""
    if not raw:
        return None
    value = _WHITESPACE.sub("", unicodedata.normalize("NFC", raw)).lower()
    local, at, domain = value.rpartition("@")
    return value if at and local and "." in domain else None


def google_email(raw: Optional[str]) -> Optional[str]:
    value = email(raw)
    if value is None:
        return None
    local, _, domain = value.rpartition("@")
    if domain in GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        if not local:
            return None
    return f"{local}@{domain}"


def e164(raw: Optional[str], country: Optional[str] = None) -> Optional[str]:
    """`+<country code><number>`; national formats are read in the contact's country."""
    if not raw:
        return None
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    region = None if text.startswith("+") else (country or "").upper() or None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def meta_phone(raw: Optional[str], country: Optional[str] = None) -> Optional[str]:
    value = e164(raw, country)
    return value[1:] if value else None


def meta_name(raw: Optional[str]) -> Optional[str]:
    if not raw:
        return None
    value = "".join(ch for ch in unicodedata.normalize("NFC", raw).lower() if ch.isalpha())
    return value or None


def meta_country(raw: Optional[str]) -> Optional[str]:
    if not raw:
        return None
    value = raw.strip().lower()
    return value if len(value) == 2 and value.isascii() and value.isalpha() else None


def meta_row(member) -> Optional[list[str]]:
    """The hashed EMAIL, PHONE, FN, LN, COUNTRY row of Meta's multi-key schema (also the CSV
    fallback's columns); None without an e-mail or a phone to match on."""
    row = [hashed(email(member.email)), hashed(meta_phone(member.phone, member.country)),
           hashed(meta_name(member.first_name)), hashed(meta_name(member.last_name)),
           hashed(meta_country(member.country))]
    if not (row[0] or row[1]):
        return None
    return [v or "" for v in row]

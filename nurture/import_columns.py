"""The columns `nurture import contacts` understands, and the near misses of them.

One declaration of every column name the contact import reads itself — the core fields of a
contact, the consent columns of every channel in CONSENT_CHANNELS (`consent_<channel>`,
`consent_<channel>_at`, `consent_<channel>_source`) and the lead-source columns
(nurture.sources) — so the import, its warnings and docs/import.md cannot drift apart. Any
other column is stored as an attribute; `near_miss` says which of those look like a
misspelled known column (`time_zone`, `E-Mail`, `firstname`), so the import can warn once
per file instead of silently filing a time zone under attributes. It never renames: the
column is still stored as the attribute it was named.
"""
from __future__ import annotations

import difflib
import re
from typing import Optional

from nurture.sources import CLICK_IDS, UTM_FIELDS
from nurture.spec.models import CONSENT_CHANNELS

CORE_FIELDS = ("email", "external_id", "phone", "first_name", "last_name", "timezone", "country", "locale",
               "lifecycle_stage", "score")
# consent_email -> email, … for every channel the ledger knows (a new channel needs no edit here)
CONSENT_COLUMNS = {f"consent_{channel}": channel for channel in CONSENT_CHANNELS}
# The proof a list brings from the tool it was collected in: when and where each consent was
# given (`consent_email_at`, `consent_email_source`, …): recorded as the ledger row's time and source.
CONSENT_AT = {f"{column}_at": channel for column, channel in CONSENT_COLUMNS.items()}
CONSENT_SOURCE = {f"{column}_source": channel for column, channel in CONSENT_COLUMNS.items()}
# Read for the contact's lead source (nurture.sources) and kept as attributes as well.
LEAD_SOURCE_COLUMNS = (*UTM_FIELDS, *CLICK_IDS, "lead_source")
# JSONL only: an object whose keys are merged into the attributes.
ATTRIBUTES_KEY = "attributes"

KNOWN_COLUMNS = frozenset((*CORE_FIELDS, *CONSENT_COLUMNS, *CONSENT_AT, *CONSENT_SOURCE, *LEAD_SOURCE_COLUMNS,
                           ATTRIBUTES_KEY))

# What other tools (and people) call the core columns, written in `_normalized` form.
ALIASES = {
    "e_mail": "email", "mail": "email", "email_address": "email", "e_mail_address": "email", "emailaddress": "email",
    "mobile": "phone", "mobile_phone": "phone", "mobile_number": "phone", "cell": "phone", "cellphone": "phone",
    "cell_phone": "phone", "phone_number": "phone", "phonenumber": "phone", "telephone": "phone", "tel": "phone",
    "msisdn": "phone",
    "firstname": "first_name", "first": "first_name", "given_name": "first_name", "givenname": "first_name",
    "forename": "first_name", "fname": "first_name",
    "lastname": "last_name", "last": "last_name", "surname": "last_name", "family_name": "last_name",
    "familyname": "last_name", "lname": "last_name",
    "time_zone": "timezone", "tz": "timezone", "zone": "timezone", "tzid": "timezone",
    "language": "locale", "lang": "locale", "language_code": "locale",
    "country_code": "country", "countrycode": "country", "nation": "country",
    "lifecycle": "lifecycle_stage", "lifecyclestage": "lifecycle_stage", "stage": "lifecycle_stage",
    "lifecycle_status": "lifecycle_stage",
    "lead_score": "score", "leadscore": "score",
    "externalid": "external_id", "user_id": "external_id", "userid": "external_id", "customer_id": "external_id",
    "customerid": "external_id",
}
_SEPARATORS = re.compile(r"[\s\-.]+")
# Only names this long are compared for typos: short names are too often close by chance.
MIN_TYPO_LENGTH = 4
TYPO_CUTOFF = 0.85


def _normalized(column: str) -> str:
    """`First Name`, `first-name` and `First.Name` all read as `first_name`."""
    return _SEPARATORS.sub("_", column.strip().lower()).strip("_")


def near_miss(column: str) -> Optional[str]:
    """The known column `column` probably means, or None: same name in another spelling
    (`First Name`, `consent-email`), a known alias (`tz`, `mobile`, `language`), or a typo
    (`timezne`). A known column is no near miss of anything."""
    if column in KNOWN_COLUMNS:
        return None
    name = _normalized(column)
    if name in KNOWN_COLUMNS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    if name.startswith("consent_"):  # consent_e_mail, consent_e-mail_at …
        for alias, core in ALIASES.items():
            if core == "email" and alias in name:
                candidate = name.replace(alias, "email", 1)
                if candidate in KNOWN_COLUMNS:
                    return candidate
    if len(name) < MIN_TYPO_LENGTH or name.rstrip("0123456789_") in KNOWN_COLUMNS:
        return None  # too short to judge; `email2`, `phone_2`: a second one, on purpose
    close = difflib.get_close_matches(name, sorted(KNOWN_COLUMNS - {ATTRIBUTES_KEY}), n=1, cutoff=TYPO_CUTOFF)
    return close[0] if close else None

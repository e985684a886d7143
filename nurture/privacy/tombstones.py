"""What an erasure leaves behind, and the one check that keeps an erased person erased.

An erased contact is named from then on only by `subject_hash(email)`: the lowercase hex
SHA-256 of the normalized e-mail address (as `nurture.ingest.normalize_email` writes it — the
form every contact's e-mail is stored in) — or, for a person Nurture knew only by phone, of
the E.164 number (`nurture.ingest.normalize_phone`). The same value is

- the `address` of the contact's `erased` suppression (channel: every channel),
- the `subject_hash` of the consent ledger's tombstone row, and
- the `subject_hash` of the `erasure` log row.

Every other identifier the person was known by — a second e-mail address, and every E.164
number (the contact's phone and its phone identities) — gets an `erased` suppression of its own
hash. One table holds both kinds: an e-mail address always has an `@` and an E.164 number never
does, so the two never hash the same text.

`erased_among` is the check the ingest (`import contacts`, `track`, the web's `/events`)
calls before it stores anything: an address in it is refused — counted and reported, never
stored — so a later import or event cannot silently re-create the person. `erased_phones`
is the same check for the numbers of what arrives without an e-mail address (a phone-only
lead, import row or Segment message) and would create a contact from the number. (A hash of
an e-mail address or a number is still pseudonymous data: it identifies the person to whoever
holds the address. It is kept for exactly this purpose, under Art. 17(3)(b)/(e) and Art. 21(3):
honouring the erasure and the objection requires remembering whom they concern.)

This module imports only the table handles: the ingest imports it, and nothing here may
import the ingest back.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

from sqlalchemy import exists, select

from nurture.runtime.sql import texts_in
from nurture.store.tables import suppression_t

ERASED_REASON = "erased"  # the suppression reason (and consent status) an erasure writes
REFUSAL = ("erased at the person's request (GDPR Art. 17): not stored; an erased person is never "
           "re-created (see docs/privacy.md)")
_CHUNK = 1000


def subject_hash(normalized: str) -> str:
    """SHA-256 hex of a normalized e-mail (already lowercased by the normalization) or E.164 number."""
    return hashlib.sha256(normalized.strip().lower().encode("utf-8")).hexdigest()


def not_erased(contact_id: Any) -> Any:
    """SQL: the contact of `contact_id` (a column) was not erased — no `erased` suppression of
    its id. An erased contact keeps its id, stage, event names and times (docs/privacy.md), and
    none of them may enroll it in a journey again."""
    return ~exists(select(suppression_t.c.id).where(suppression_t.c.contact_id == contact_id,
                                                    suppression_t.c.reason == ERASED_REASON))


_ANY_ERASED = select(suppression_t.c.id).where(suppression_t.c.reason == ERASED_REASON).limit(1)
_ERASED_IN = select(suppression_t.c.address).where(suppression_t.c.reason == ERASED_REASON,
                                                   texts_in(suppression_t.c.address, ()))


def erased_among(conn: Any, emails: Iterable[str]) -> set[str]:
    """The normalized e-mail addresses among `emails` that belong to an erased person — by
    the `erased` suppression of their hash — in one query per thousand addresses. Nobody
    erased yet (the usual case of a large import): one query, and no address hashed."""
    if conn.execute(_ANY_ERASED).first() is None:
        return set()
    by_hash: dict[str, list[str]] = {}
    for email in emails:
        if email:
            by_hash.setdefault(subject_hash(email), []).append(email)
    found: set[str] = set()
    hashes = list(by_hash)
    for start in range(0, len(hashes), _CHUNK):
        part = hashes[start:start + _CHUNK]
        for (address,) in conn.execute(_ERASED_IN, {"texts_address": part}):
            found.update(by_hash.get(address, ()))
    return found


def erased_phones(conn: Any, phones: Iterable[str]) -> set[str]:
    """The E.164 numbers among `phones` that belong to an erased person (see `erased_among`)."""
    return erased_among(conn, phones)


def erased_suppression(conn: Any, hashed: str) -> Any:
    """The `erased` suppression of a hash — its row (`contact_id`: the pseudonymized contact),
    or None when that address was never erased."""
    return conn.execute(select(suppression_t.c.id, suppression_t.c.contact_id, suppression_t.c.created_at).where(
        suppression_t.c.reason == ERASED_REASON, suppression_t.c.address == hashed)
        .order_by(suppression_t.c.id).limit(1)).first()

"""Finding the contact a person is named by, for the verbs that name one (`export-contact`,
`consent grant|revoke`, `preview --contact`, `test-send --contact`): an address is read as the
ingest stores it (nurture.ingest.normalize_email — Unicode composed, the domain in letters, not
`xn--`), so every verb finds whom an import or `track` of the same text made, by the contact's
own address or a second one it is known by (contact_identity)."""
from __future__ import annotations

from typing import Any, Optional

from nurture.identities import find_by_identity
from nurture.ingest import normalize_email


def contact_by_email(conn: Any, email: str) -> Optional[int]:
    """The id of the contact known by `email`, or None. Text the ingest would refuse is looked
    up as it is written (lower case): a contact stored before a rule changed is still found."""
    typed = email.strip().lower()
    try:
        normalized = normalize_email(email)
    except ValueError:
        normalized = typed
    for address in dict.fromkeys((normalized, typed)):
        found = find_by_identity(conn, "email", address)
        if found is not None:
            return found
    return None

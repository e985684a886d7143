"""Check 1, consent: may a message of this purpose go to a contact, given the current ledger
state of its (channel, purpose)? Pure. The state itself is read for the whole batch by
`nurture.consent_ledger.current_consent` (the ledger's one owner), at send time — never a
value cached from enrollment time."""
from __future__ import annotations

from datetime import datetime
from typing import Optional


def consent_refusal(state: Optional[tuple[str, Optional[datetime]]], purpose: str,
                    double_opt_in: bool, explicit: bool = False) -> Optional[str]:
    """The reason code a send is refused for, or None when consent allows it. `explicit`: the
    channel needs an opt-in for every purpose (WhatsApp), transactional messages too."""
    if purpose == "transactional" and not explicit:
        return "consent_revoked" if state and state[0] == "revoked" else None
    if state is None:
        return "no_consent"
    status, confirmed_at = state
    if status == "revoked":
        return "consent_revoked"
    if status == "pending":
        return "consent_pending"
    if double_opt_in and confirmed_at is None:
        return "not_double_opted_in"
    return None

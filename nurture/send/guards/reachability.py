"""Is there an address the channel can deliver to? Imports validate addresses thoroughly
(email-validator, phonenumbers); at send time a cheap shape check suffices."""
from __future__ import annotations

from typing import Optional


def unreachable_reason(channel: str, email: Optional[str], phone: Optional[str]) -> Optional[str]:
    if channel == "email":
        if not email:
            return "no_email"
        local, _, domain = email.rpartition("@")
        if not local or "." not in domain:
            return "invalid_email"
        return None
    if channel in ("sms", "whatsapp"):  # WhatsApp addresses are phone numbers too
        if not phone:
            return "no_phone"
        if not (phone.startswith("+") and phone[1:].isdigit() and 8 <= len(phone) <= 16):
            return "invalid_phone"
        return None
    return "unknown_channel"

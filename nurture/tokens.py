"""Signed tokens for recipient links (unsubscribe, preferences, double opt-in): HMAC-SHA256
over (action, contact, purpose, expiry) with NURTURE_SECRET_KEY. A tampered or expired token
verifies to None; nothing else about it is trusted."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Optional

DEFAULT_TTL = 60 * 60 * 24 * 365  # unsubscribe links must keep working for a long time


@dataclass(frozen=True)
class TokenClaims:
    action: str
    contact_id: int
    purpose: str
    expires: int
    channel: str = "email"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, action: str, contact_id: int, purpose: str = "marketing",
               channel: str = "email", ttl: int = DEFAULT_TTL, now: Optional[float] = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl)
    body = _b64(json.dumps([action, int(contact_id), purpose, channel, expires], separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()[:18])
    return f"{body}.{sig}"


def verify_token(secret: str, token: str, action: str, now: Optional[float] = None) -> Optional[TokenClaims]:
    try:
        body, sig = token.split(".", 1)
        expected = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()[:18])
        if not hmac.compare_digest(sig, expected):
            return None
        got_action, contact_id, purpose, channel, expires = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    if got_action != action or expires < (now if now is not None else time.time()):
        return None
    return TokenClaims(got_action, int(contact_id), purpose, int(expires), channel)

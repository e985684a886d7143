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
from functools import lru_cache
from typing import Mapping, Optional

# DEVELOPMENT_SECRET / DEVELOPMENT_URL: the defaults of NURTURE_SECRET_KEY / NURTURE_PUBLIC_URL,
# declared with the settings and re-exported here for the token code's readers.
from nurture.settings import DEVELOPMENT_SECRET, DEVELOPMENT_URL, Settings  # noqa: F401

DEFAULT_TTL = 60 * 60 * 24 * 365  # unsubscribe links must keep working for a long time
MIN_SECRET_LENGTH = 16


def link_settings_problem(env: Mapping[str, str] | Settings) -> Optional[str]:
    """Why recipient links cannot be signed for real delivery (None when they can): a real
    channel needs NURTURE_SECRET_KEY (long, not the development one) and NURTURE_PUBLIC_URL."""
    settings = env if isinstance(env, Settings) else Settings.from_env(env)
    secret = settings.signing_secret if settings.is_set("secret_key") else ""
    url = settings.public_url.strip() if settings.is_set("public_url") else ""
    if not secret or secret == DEVELOPMENT_SECRET:
        return ("NURTURE_SECRET_KEY is not set: unsubscribe and preference links would be signed with the public "
                "development secret. Set a long random value, e.g. "
                "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")
    if len(secret) < MIN_SECRET_LENGTH:
        return f"NURTURE_SECRET_KEY is too short (at least {MIN_SECRET_LENGTH} characters)"
    if not url:
        return ("NURTURE_PUBLIC_URL is not set: it is the https address of `nurture web` that links in messages "
                "point to (e.g. https://go.shop.example)")
    if not (url.startswith("https://") or url.startswith("http://")):
        return f"NURTURE_PUBLIC_URL must be an http(s) address, not {url!r}"
    return None


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


@lru_cache(maxsize=64)
def _signer(secret: str) -> "hmac.HMAC":
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


@lru_cache(maxsize=256)
def _json_str(value: str) -> str:
    return json.dumps(value)


def make_token(secret: str, action: str, contact_id: int, purpose: str = "marketing",
               channel: str = "email", ttl: int = DEFAULT_TTL, now: Optional[float] = None) -> str:
    # One token per recipient per message: the JSON claims are formatted directly (exactly
    # what json.dumps with compact separators writes) and the keyed HMAC state is copied
    # rather than rebuilt — a third of the cost, at thousands of messages a second.
    expires = int((now if now is not None else time.time()) + ttl)
    claims = f"[{_json_str(action)},{int(contact_id)},{_json_str(purpose)},{_json_str(channel)},{expires}]"
    body = _b64(claims.encode())
    mac = _signer(secret).copy()
    mac.update(body.encode())
    return f"{body}.{_b64(mac.digest()[:18])}"


def same_secret(given: str, expected: str) -> bool:
    """Whether a secret a request carries (a header, a query parameter, a JSON field) is the
    expected one, in constant time, compared as bytes: non-ASCII text or a lone surrogate a
    hostile request sends compares unequal (hmac.compare_digest raises on such a str, and
    str.encode on a surrogate — both were a 500 before any credential was checked)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


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

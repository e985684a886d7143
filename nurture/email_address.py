"""The ASCII form of an e-mail address: its domain as IDNA A-labels, as every mail server takes
it. One function, for the recipient (nurture.rendering.email_message, the SMTP channel) and the
sender (nurture.settings reads NURTURE_FROM_EMAIL through it). A module of its own so that the
settings can use it without importing the rendering package (Jinja: ~0.1 s on every command)."""
from __future__ import annotations

import idna


def ascii_address(addr: str) -> str:
    """The address with an internationalised domain in its ASCII form (IDNA 2008 A-labels,
    RFC 5891): `uni@exämple.com` → `uni@xn--exmple-cua.com`, as every mail server takes it.
    A non-ASCII local part stays as it is: only a server that offers SMTPUTF8 (RFC 6531) can
    take that address at all. A domain IDNA refuses is left as it is too (the server decides)."""
    if addr.isascii():
        return addr
    local, at, domain = addr.rpartition("@")
    if not at or domain.isascii():
        return addr
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return addr

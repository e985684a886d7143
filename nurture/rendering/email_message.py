"""Fast assembly of RFC 5322 / MIME e-mail bytes.

The standard library's EmailMessage costs ~2.3 ms per message; at 5,000 messages a second
that alone would be the budget. A Nurture e-mail always has the same shape
(multipart/alternative: text/plain + text/html, UTF-8, base64 bodies), so it is assembled
directly: headers RFC 2047-encoded only where they are not plain ASCII, bodies base64
(C speed). Tests parse the result with the standard library to prove it is well formed.
"""
from __future__ import annotations

import base64
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from typing import Mapping, Optional

_GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_EXT = set("^{}\\[~]|€\f")


def encode_header(value: str) -> str:
    if value.isascii() and len(value) < 70 and "\n" not in value:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _b64(text: str) -> bytes:
    return base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")


def build_email_bytes(*, message_id: str, from_addr: str, from_name: str, to_addr: str, to_name: str,
                      subject: str, html: str, text: str, date: datetime,
                      extra_headers: Optional[Mapping[str, str]] = None) -> bytes:
    boundary = "=_nurture_" + message_id.strip("<>").split("@")[0].replace(".", "_")
    headers = [
        f"From: {formataddr((from_name, from_addr))}" if from_name else f"From: {from_addr}",
        f"To: {formataddr((to_name, to_addr))}" if to_name else f"To: {to_addr}",
        f"Subject: {encode_header(subject)}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
    ]
    for name, value in (extra_headers or {}).items():
        headers.append(f"{name}: {encode_header(value)}")
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = "\r\n".join(headers).encode("utf-8")
    part_head = ("--" + boundary + "\r\nContent-Type: text/{kind}; charset=\"utf-8\"\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\n")
    return b"".join([
        head, b"\r\n\r\n",
        part_head.format(kind="plain").encode(), _b64(text), b"\r\n",
        part_head.format(kind="html").encode(), _b64(html), b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])


def sms_segments(body: str) -> tuple[str, int]:
    """(encoding, segments) of an SMS body: GSM-7 160/153 per segment, UCS-2 70/67."""
    if all(ch in _GSM7 or ch in _GSM7_EXT for ch in body):
        units = sum(2 if ch in _GSM7_EXT else 1 for ch in body)
        return "GSM-7", 1 if units <= 160 else -(-units // 153)
    units = sum(2 if ord(ch) > 0xFFFF else 1 for ch in body)
    return "UCS-2", 1 if units <= 70 else -(-units // 67)

"""Keeping configured secrets out of everything Nurture records or prints.

A provider may quote a credential back (an SMTP 535 reply that repeats the password, an HTTP
401 body that echoes the bearer token). Any provider text that reaches the message log, a
`sync_run` row, CLI output, a log line or a Prefect artifact goes through `redact()` first.
The secrets are the values of the settings whose names say they are secret
(`NURTURE_*PASSWORD*`, `*TOKEN*`, `*SECRET*`, `*KEY*`), plus any passed explicitly.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|API_KEY|WRITE_KEY|CREDENTIAL", re.IGNORECASE)
MASK = "[redacted]"
# Shorter values are too likely to be ordinary words or digits of a reply code.
MIN_SECRET_LENGTH = 4


def secrets_in(env: Mapping[str, str], extra: Iterable[Optional[str]] = ()) -> tuple[str, ...]:
    """The secret values configured in `env` (NURTURE_* settings named like secrets), longest
    first so a secret that contains another is masked whole."""
    values = {v for k, v in env.items() if k.startswith("NURTURE_") and SECRET_NAME.search(k) and v}
    values.update(v for v in extra if v)
    return tuple(sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def redact(text: Optional[str], secrets: Iterable[str]) -> Optional[str]:
    """`text` with every occurrence of every secret replaced by a mask."""
    if not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text

"""What an erasure keeps of an event's properties: the amounts the reports read, nothing that
names or locates the person.

An erasure empties an event's properties (nurture.privacy.erase) — but the report reads money
out of them: a purchase's and a won deal's `value` (lead-source revenue, CLV), a purchase's
`discount` and coupon code (a journey's offer cost). Emptied, erasing one customer would
change the project's revenue and a journey's ROI, and docs/privacy.md promises every report
still adds up. An amount is not personal data; a name, an address or a free text may be. So an
erased event keeps only:

- `value`, `revenue`, `amount`, `discount`: a number, or text that reads as one
  (nurture.store.json_values' NUMBER_PATTERN, the rule every report reads them by);
- `currency`: a three-letter code;
- a coupon code (`coupon`, `code`, `coupon_code`, `discount_code`) that a journey of the
  project declares on a send step (`offer: {code: …}`) — a code shared by every buyer; a code
  nobody declared may be one issued to this person alone, and goes.

Everything else goes, whatever its name. Pure: no database, tested table-driven.
"""
from __future__ import annotations

import math
import re
from typing import Any, Collection, Mapping

from nurture.store.json_values import number_of_text

AMOUNT_KEYS = ("value", "revenue", "amount", "discount")
CODE_KEYS = ("coupon", "code", "coupon_code", "discount_code")  # as the report's offers read them
_CURRENCY = re.compile(r"[A-Za-z]{3}")


def _is_amount(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return number_of_text(value) is not None


def kept_properties(properties: Any, declared_codes: Collection[str] = ()) -> dict:
    """The properties an erased event keeps (see the module docstring). `declared_codes`: the
    project's offer codes, case-folded."""
    if not isinstance(properties, Mapping):
        return {}
    kept: dict = {}
    for key in AMOUNT_KEYS:
        if key in properties and _is_amount(properties[key]):
            kept[key] = properties[key]
    currency = properties.get("currency")
    if isinstance(currency, str) and _CURRENCY.fullmatch(currency.strip()):
        kept["currency"] = currency
    for key in CODE_KEYS:
        code = properties.get(key)
        if isinstance(code, str) and code.strip().casefold() in declared_codes:
            kept[key] = code
    return kept


def declared_codes(project: Any) -> frozenset[str]:
    """The offer codes the project's journeys declare on their send steps, case-folded."""
    from nurture.compiler import compile_journey
    codes = set()
    for spec in project.journeys.values():
        plan = compile_journey(spec)
        for node in plan.nodes.values():
            offer = node.step.send.offer if node.kind == "send" else None
            if offer is not None and offer.code:
                codes.add(offer.code.strip().casefold())
    return frozenset(codes)

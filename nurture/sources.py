"""Lead sources: where a contact came from. This module owns reading a marketing touch — the
UTM parameters (`utm_source`, `utm_medium`, `utm_campaign`, `utm_content`, `utm_term`) and the
ad platforms' click ids (`gclid`, `gbraid`, `wbraid`, `msclkid`, `fbclid`, `ttclid`,
`li_fat_id`) — out of a tracked event's properties or a contact import's columns (pure:
`extract_touch`), and keeping each contact's `first` and `last` touch in `contact_touch`
(`record_event_touches` for tracked events, inside the ingest's transaction;
`record_import_touches` for `import contacts`). A click id without `utm_source` implies the
platform as source and medium (`CLICK_IDS`), and the click id itself is kept on the touch, for
sending conversions back to the platform. The rules are written up in docs/events.md, "Lead
source: UTM parameters and click ids". Nothing a contact sends is trusted: only text is read,
trimmed, cleaned of control characters and capped in length.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from nurture.runtime.sql import chunks, prebuilt, texts_in, write_many
from nurture.store.tables import event_t, touch_t

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
# click id -> the (source, medium) it implies when the event has no utm_source. Order matters:
# when an event carries two click ids, the first one listed here is kept.
CLICK_IDS: dict[str, tuple[str, str]] = {
    "gclid": ("google", "cpc"),
    "gbraid": ("google", "cpc"),
    "wbraid": ("google", "cpc"),
    "msclkid": ("bing", "cpc"),
    "fbclid": ("facebook", "paid_social"),  # Facebook adds it to organic links too (see docs/events.md)
    "ttclid": ("tiktok", "paid_social"),
    "li_fat_id": ("linkedin", "paid_social"),
}
# Event properties that may hold the page URL, in the order they are tried. `referrer` is not
# among them on purpose: the UTMs of the page a visitor came *from* are not this visit's source.
URL_PROPERTIES = ("url", "page_url", "landing_page", "page")
TOUCH_KEYS = frozenset(UTM_FIELDS) | frozenset(CLICK_IDS)
_CLICK_KEYS = frozenset(CLICK_IDS)
# A query string without any of these cannot hold a touch: it is not parsed at all.
_MARKERS = re.compile("|".join(("utm_", *CLICK_IDS)))
_LOOKED_AT = TOUCH_KEYS | frozenset(URL_PROPERTIES)

# A UTM value longer than this is cut (a label, not a document); a longer click id is ignored,
# because a cut click id matches nothing at the ad platform.
MAX_VALUE_LENGTH = 200
MAX_CLICK_ID_LENGTH = 500
FIRST, LAST = "first", "last"

_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNSTORABLE = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(" {2,}")


class Touch(NamedTuple):
    """One marketing touch: the lead source of an event (or of an import row). Its fields are
    the columns of `contact_touch` of the same names. (A NamedTuple: one is made per tracked
    event that carries a touch, and a tuple is made several times faster than a frozen dataclass.)"""
    source: Optional[str] = None
    medium: Optional[str] = None
    campaign: Optional[str] = None
    content: Optional[str] = None
    term: Optional[str] = None
    click_id_type: Optional[str] = None
    click_id: Optional[str] = None


class Extraction(NamedTuple):
    """What `extract_touch` found: the touch (None: the event is not a touch) and the UTM
    parameters and click ids read from the page URL that the properties did not carry, to be
    added to the stored properties under their standard names."""
    touch: Optional[Touch]
    from_url: Mapping[str, str]


NO_TOUCH = Extraction(None, {})


def extract_touch(properties: Any, *, read_url: bool = True) -> Extraction:
    """The touch of an event's properties (or an import row's columns, with `read_url=False`).

    A UTM parameter or click id given as a property of its own wins; the ones missing are read
    from the page URL's query string (the first of URL_PROPERTIES holding a URL; `page` may also
    be an object with a `url`). Only text counts; values are trimmed and cleaned, source and
    medium lowercased. Neither a UTM parameter nor a click id: not a touch."""
    if not isinstance(properties, dict) or properties.keys().isdisjoint(_LOOKED_AT):
        return NO_TOUCH
    found: dict[str, str] = {}
    for key in TOUCH_KEYS.intersection(properties):
        value = _clean(properties[key], key)
        if value is not None:
            found[key] = value
    from_url: dict[str, str] = {}
    if read_url and len(found) < len(TOUCH_KEYS):
        for key, raw in _url_parameters(properties):
            if key in TOUCH_KEYS and key not in found and key not in properties and key not in from_url:
                value = _clean(raw, key)
                if value is not None:
                    from_url[key] = value
        found.update(from_url)
    if not found:
        return NO_TOUCH
    return Extraction(_touch(found), from_url)


def touch_of_columns(record: Mapping[str, Any]) -> Optional[Touch]:
    """The touch of a contact import's row: its UTM and click id columns (no URL is read);
    `lead_source` stands for `utm_source` when the row has no `utm_source` of its own (CRM exports
    call it that)."""
    columns = dict(record)
    if _clean(columns.get("utm_source"), "utm_source") is None and "lead_source" in columns:
        columns["utm_source"] = columns["lead_source"]
    return extract_touch(columns, read_url=False).touch


def _clean(value: Any, key: str) -> Optional[str]:
    """Storable text or None: control characters become spaces (a value may end up in a
    report, a CSV or a header), the ends are trimmed; a value that cannot be stored is ignored."""
    if not isinstance(value, str):
        return None
    if value.isprintable():  # the common case, checked in C: no control character, no surrogate
        text = value.strip()
    else:
        text = _SPACES.sub(" ", _BREAKS.sub(" ", value)).strip()
        if _UNSTORABLE.search(text):
            return None
    if not text:
        return None
    if key in CLICK_IDS:
        return text if len(text) <= MAX_CLICK_ID_LENGTH and " " not in text else None
    text = text[:MAX_VALUE_LENGTH].rstrip()
    return text.lower() if key in ("utm_source", "utm_medium") else text


def _page_url(properties: dict) -> Optional[str]:
    for key in URL_PROPERTIES:
        value = properties.get(key)
        if key == "page" and isinstance(value, dict):
            value = value.get("url")
        if isinstance(value, str) and "?" in value and _looks_like_url(value) and _MARKERS.search(value):
            return value
    return None


def _looks_like_url(text: str) -> bool:
    """An absolute http(s) URL or a path; `page` is also used for page *names* ("Pricing")."""
    head = text.lstrip()[:8].lower()
    return head.startswith(("http://", "https://", "/"))


def _url_parameters(properties: dict) -> list[tuple[str, str]]:
    url = _page_url(properties)
    if url is None:
        return []
    try:
        query = urlsplit(url.strip()).query
    except ValueError:  # e.g. an unbalanced [ in the host: not a URL after all
        return []
    # parse_qsl decodes %-escapes and '+'; bytes that are not UTF-8 become U+FFFD
    return parse_qsl(query, keep_blank_values=False, max_num_fields=None)


def _touch(found: dict[str, str]) -> Touch:
    get = found.get
    source, medium = get("utm_source"), get("utm_medium")
    if _CLICK_KEYS.isdisjoint(found):
        return Touch(source, medium, get("utm_campaign"), get("utm_content"), get("utm_term"))
    click_type = next(name for name in CLICK_IDS if name in found)
    implied_source, implied_medium = CLICK_IDS[click_type]
    # an explicit utm_source wins; its medium is implied only when it names the same platform
    if source is None or source == implied_source:
        medium = medium or implied_medium
    source = source or implied_source
    return Touch(source, medium, get("utm_campaign"), get("utm_content"), get("utm_term"), click_type,
                 found[click_type])


# ---------------------------------------------------------------- the first and last touch


@dataclass(frozen=True)
class TouchCandidate:
    """A touch of a contact at a moment; `event_id` names the event it came from (None: an import)."""
    contact_id: int
    touch: Touch
    occurred_at: datetime
    event_id: Optional[str] = None


def record_event_touches(conn: Connection, candidates: Sequence[TouchCandidate]) -> int:
    """Keep the first and last touch of the contacts of newly stored events, in the caller's
    transaction. `candidates` are in event order. Per contact the earliest (ties: the first in
    order) and the latest (ties: the last in order) candidate are upserted: `first` replaces
    the stored one only when strictly earlier, `last` when later or at the same moment — the
    comparison is in the upsert's own WHERE, so an out-of-order file, a second file and a
    concurrent writer all land on the same answer. Returns how many candidates were offered."""
    if not candidates:
        return 0
    earliest: dict[int, TouchCandidate] = {}
    latest: dict[int, TouchCandidate] = {}
    for c in candidates:
        first = earliest.get(c.contact_id)
        if first is None or c.occurred_at < first.occurred_at:
            earliest[c.contact_id] = c
        last = latest.get(c.contact_id)
        if last is None or c.occurred_at >= last.occurred_at:
            latest[c.contact_id] = c
    pks = _event_pks(conn, {c.event_id for c in (*earliest.values(), *latest.values()) if c.event_id})
    _upsert(conn, [_row(c, FIRST, pks) for c in earliest.values()], only_if="earlier")
    _upsert(conn, [_row(c, LAST, pks) for c in latest.values()], only_if="later_or_same")
    return len(candidates)


def record_import_touches(conn: Connection, touches: Iterable[tuple[int, Touch]], at: datetime) -> int:
    """The touches of an import's rows at the import's time `at`: `first` when the contact has
    none yet, `last` always (the import is the latest word on where the contact came from)."""
    candidates = [TouchCandidate(cid, touch, at) for cid, touch in touches]
    _upsert(conn, [_row(c, FIRST, {}) for c in candidates], only_if="none")
    _upsert(conn, [_row(c, LAST, {}) for c in candidates], only_if="always")
    return len(candidates)


_EVENT_PKS = select(event_t.c.event_id, event_t.c.id).where(texts_in(event_t.c.event_id, ()))  # built once


def _event_pks(conn: Connection, event_ids: set[str]) -> dict[str, int]:
    pks: dict[str, int] = {}
    for part in chunks(sorted(event_ids)):
        pks.update(conn.execute(_EVENT_PKS, {"texts_event_id": list(part)}).all())
    return pks


def _row(c: TouchCandidate, kind: str, pks: Mapping[str, int]) -> dict:
    return {"contact_id": c.contact_id, "touch": kind, **c.touch._asdict(),
            "event_pk": pks.get(c.event_id) if c.event_id else None, "occurred_at": c.occurred_at}


def _upsert(conn: Connection, rows: list[dict], *, only_if: str) -> None:
    """INSERT … ON CONFLICT (contact_id, touch) DO UPDATE … WHERE <the stored one loses>."""
    if not rows:
        return
    postgres = conn.dialect.name == "postgresql"

    def build() -> Any:
        stmt = (postgresql.insert if postgres else sqlite.insert)(touch_t)
        if only_if == "none":
            return stmt.on_conflict_do_nothing(index_elements=["contact_id", "touch"])
        stored, new = touch_t.c.occurred_at, stmt.excluded.occurred_at
        where = {"earlier": new < stored, "later_or_same": new >= stored, "always": None}[only_if]
        return stmt.on_conflict_do_update(
            index_elements=["contact_id", "touch"], where=where,
            set_={k: stmt.excluded[k] for k in ("source", "medium", "campaign", "content", "term", "click_id_type",
                                                "click_id", "event_pk", "occurred_at")})
    stmt = prebuilt(("touch_upsert", only_if, postgres), build)
    for part in chunks(rows, 5000):
        write_many(conn, stmt, list(part))

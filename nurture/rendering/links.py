"""UTM tagging of the links in a rendered message body.

Every http(s) link in a marketing body gets `utm_source=nurture`, `utm_medium=<channel>`,
`utm_campaign=<journey>` and `utm_content=<step id>` — unless the link already carries any
`utm_*` parameter of its own (the marketer's tagging wins, whole), or it points at one of
Nurture's own recipient pages (unsubscribe, preferences, confirmation: those URLs carry a
signed token and must stay exactly as signed).

One regex pass per body: HTML bodies are matched on `href` attributes (where `&` is written
`&amp;`), plain-text and SMS bodies on bare URLs (trailing sentence punctuation is not part of
the link).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence
from urllib.parse import quote

_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])(https?://[^"'\s<>]+)\2""", re.I)
# The same match for the usual lower-case `href` (what the CSS inliner writes): a literal
# first character lets the regex engine skip ahead — ~10x faster than the case-insensitive
# scan; the word boundary before it is checked in the replacement.
_HREF_LOWER = re.compile(r"""(href\s*=\s*)(["'])((?i:https?)://[^"'\s<>]+)\2""")
_WORD = re.compile(r"\w")
_BARE = re.compile(r"""https?://[^\s<>"'\]\)]+""", re.I)
_BARE_LOWER = re.compile(r"""http[sS]?://[^\s<>"'\]\)]+""")  # literal `http`: the fast scan, as for hrefs
_TRAILING = ".,;:!?"
_HAS_UTM = re.compile(r"[?&](?:amp;)?utm_[a-z]+=", re.I)


@lru_cache(maxsize=4096)
def utm_query(channel: str, journey: str, step_id: str) -> str:
    """The query string appended to links of one step (computed once per step, not per link)."""
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in (
        ("utm_source", "nurture"), ("utm_medium", channel), ("utm_campaign", journey), ("utm_content", step_id)))


def _tag(url: str, query: str, amp: str, skip: tuple[str, ...]) -> str:
    if url.startswith(skip):  # per-recipient signed links: never cached, never tagged
        return url
    return _tagged(url, query, amp)


@lru_cache(maxsize=8192)
def _tagged(url: str, query: str, amp: str) -> str:
    """A template's links are the same for every recipient: each is tagged once."""
    if _HAS_UTM.search(url):
        return url
    base, hash_, fragment = url.partition("#")
    if "?" in base:
        sep = "" if base.endswith(("?", "&", "&amp;")) else amp
    else:
        sep = "?"
    tagged = base + sep + (query.replace("&", amp) if amp != "&" else query)
    return tagged + hash_ + fragment


def tag_html(html: str, query: str, skip: Sequence[str] = ()) -> str:
    """Tag every `href="http…"` of an HTML body (autoescaped: `&` is `&amp;`)."""
    skip = tuple(skip)
    if html.count("href") == html.lower().count("href"):  # no HREF / Href spelling anywhere
        def lower(m: re.Match) -> str:
            start = m.start()
            if start and _WORD.match(html, start - 1):  # e.g. `xhref=`: not an href attribute
                return m.group(0)
            return m.group(1) + m.group(2) + _tag(m.group(3), query, "&amp;", skip) + m.group(2)
        return _HREF_LOWER.sub(lower, html)
    return _HREF.sub(lambda m: m.group(1) + m.group(2) + _tag(m.group(3), query, "&amp;", skip) + m.group(2), html)


def tag_text(text: str, query: str, skip: Sequence[str] = ()) -> str:
    """Tag every bare http(s) URL of a plain-text or SMS body."""
    def one(m: re.Match) -> str:
        url = m.group(0)
        stripped = url.rstrip(_TRAILING)
        return _tag(stripped, query, "&", skip) + url[len(stripped):]
    skip = tuple(skip)
    bare = _BARE_LOWER if text.count("http") == text.lower().count("http") else _BARE
    return bare.sub(one, text)

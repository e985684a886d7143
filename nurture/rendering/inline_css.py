"""CSS inlining of template *sources*, once per template file.

premailer costs ~1.4 ms per document; doing it per recipient would cap a tick at a few
hundred messages a second. Instead each template file is inlined once: Jinja tags are swapped
for inert placeholder tokens (libxml2 keeps text tokens in place, even between table rows and
inside <title>), premailer runs over the result, and the tags are put back. Templates that extend a layout are fragments;
they are inlined with the layout's CSS, so `{% extends %}` keeps working.
"""
from __future__ import annotations

import functools
import re

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.S | re.I)
_TOKEN = re.compile(r"<!--NJ(\d+)NJ-->|NJ(\d+)NJ")
_FRAGMENT = re.compile(r'<div data-nurture-fragment="1">(.*)</div>\s*</body>', re.S)


def protect_jinja(source: str, comments: bool = False) -> tuple[str, list[str]]:
    """Swap Jinja tags for inert placeholders: an HTML comment between elements (when
    `comments`), a bare token inside a start tag or everywhere else."""
    tags: list[str] = []
    out: list[str] = []
    pos = 0
    for match in _JINJA.finditer(source):
        before = source[pos:match.start()]
        out.append(before)
        # Inside an element's start tag (an attribute value) a comment is not allowed.
        head = "".join(out)
        in_tag = head.rfind("<") > head.rfind(">")
        tags.append(match.group(0))
        out.append(f"NJ{len(tags) - 1}NJ" if in_tag or not comments else f"<!--NJ{len(tags) - 1}NJ-->")
        pos = match.end()
    out.append(source[pos:])
    return "".join(out), tags


def restore_jinja(html: str, tags: list[str]) -> str:
    return _TOKEN.sub(lambda m: tags[int(m.group(1) or m.group(2))], html)


def stylesheet_of(source: str) -> str:
    return "\n".join(_STYLE.findall(_JINJA.sub("", source)))


@functools.lru_cache(maxsize=512)
def inline_template_source(source: str, extra_css: str = "") -> str:
    """Inline CSS into a Jinja HTML template source, keeping every Jinja tag intact. The
    result depends on the two strings alone, so a process inlines a template once however
    often a project is loaded (`nurture web`'s pages, each journey's flow run, a check)."""
    import premailer  # heavy (cssutils, requests): only loaded when a template is compiled

    protected, tags = protect_jinja(source)
    is_document = "<html" in protected.lower()
    if not is_document:
        if not extra_css.strip() or "<" not in protected:
            return source
        protected = f'<html><body><div data-nurture-fragment="1">{protected}</div></body></html>'
    transformed = premailer.Premailer(
        protected, css_text=extra_css or None, keep_style_tags=False, remove_classes=False,
        strip_important=False, cssutils_logging_level=50, disable_validation=True,
        allow_network=False, disable_leftover_css=False,
    ).transform()
    if not is_document:
        match = _FRAGMENT.search(transformed)
        transformed = match.group(1) if match else transformed
    elif source.lstrip().lower().startswith("<!doctype") and not transformed.lstrip().lower().startswith("<!doctype"):
        transformed = "<!DOCTYPE html>\n" + transformed
    return restore_jinja(transformed, tags)

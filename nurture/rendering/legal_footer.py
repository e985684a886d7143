"""The legal footer of marketing e-mail: a visible unsubscribe link, the preference center and
who sends (policies.yaml `sender:` — company, address, register, represented by, contact; the
German Impressum duty, CAN-SPAM's postal address).

The shipped layout (`templates/layouts/base.html`) has it. A marketing e-mail whose rendered HTML
carries no link to the recipient's unsubscribe page — a custom template that does not extend the
layout — gets this standard footer appended at send time, and so does a text part without the
link (each part is checked on its own: a `.txt` of its own may lack what the HTML has), so no
marketing mail ever leaves without a visible way out; `nurture validate` warns about such a template.
Transactional mail is exempt. Every value is HTML-escaped: the sender's details come from a
file, but a contact's name never reaches the footer. Its words are in the message's locale (the
caller resolves it as templates do: the contact's, else policies.yaml `locale`), English for a
language it has no words for."""
from __future__ import annotations

from html import escape
from typing import Mapping, Optional

from nurture.rendering.i18n import language_of

_WORDS = {
    "en": ("You receive this e-mail because you signed up with us.", "Unsubscribe", "Preferences",
           "Represented by", "Unsubscribe: {url}"),
    "de": ("Sie erhalten diese E-Mail, weil Sie sich bei uns angemeldet haben.", "Abmelden", "Einstellungen",
           "Vertreten durch", "Abmelden: {url}"),
}


def _words(locale: Optional[str]) -> tuple[str, ...]:
    """The footer's words in `locale`'s language (`DE`, `de-AT`, `de_AT` → de), else English."""
    language = (language_of(locale) or "en").split("_")[0]
    return _WORDS.get(language, _WORDS["en"])


def has_unsubscribe_link(html: str, unsubscribe_url: str) -> bool:
    """Whether the rendered HTML links to the recipient's unsubscribe page (an href, visible)."""
    return f'href="{escape(unsubscribe_url)}"' in html or f"href='{escape(unsubscribe_url)}'" in html \
        or f'href="{unsubscribe_url}"' in html


def imprint_line(imprint: Mapping[str, Optional[str]], locale: Optional[str]) -> str:
    words = _words(locale)
    parts = [imprint.get("company"), imprint.get("address"), imprint.get("register")]
    if imprint.get("represented_by"):
        parts.append(f"{words[3]} {imprint['represented_by']}")
    parts.append(imprint.get("contact"))
    return " · ".join(p for p in parts if p)


def footer_html(links: Mapping[str, str], imprint: Mapping[str, Optional[str]], locale: Optional[str]) -> str:
    words = _words(locale)
    line = imprint_line(imprint, locale)
    return ('<div class="nurture-legal-footer" style="max-width:560px;margin:16px auto 0 auto;font-size:12px;'
            'line-height:18px;color:#6b7280;text-align:center;font-family:Helvetica,Arial,sans-serif">'
            f'{escape(words[0])} <a href="{escape(links["unsubscribe"])}" style="color:#6b7280">{escape(words[1])}</a>'
            f' · <a href="{escape(links["preferences"])}" style="color:#6b7280">{escape(words[2])}</a>'
            + (f"<br>{escape(line)}" if line else "") + "</div>")


def footer_text(links: Mapping[str, str], imprint: Mapping[str, Optional[str]], locale: Optional[str]) -> str:
    words = _words(locale)
    line = imprint_line(imprint, locale)
    return "\n\n--\n" + words[0] + "\n" + words[4].format(url=links["unsubscribe"]) + (f"\n{line}" if line else "")


def ensure_footer(html: str, text: str, links: Mapping[str, str], imprint: Mapping[str, Optional[str]],
                  locale: Optional[str]) -> tuple[str, str, bool]:
    """(html, text, appended): the message with the standard footer appended to each part that
    has no unsubscribe link (the HTML: no visible link; the text: no URL); unchanged otherwise."""
    appended = False
    if not has_unsubscribe_link(html, links["unsubscribe"]):
        footer = footer_html(links, imprint, locale)
        at = html.lower().rfind("</body>")
        html = html[:at] + footer + html[at:] if at >= 0 else html + footer
        appended = True
    if links["unsubscribe"] not in text:
        text = text.rstrip() + footer_text(links, imprint, locale) + "\n"
        appended = True
    return html, text, appended

"""The legal footer of marketing e-mail: a visible unsubscribe link, the preference center and
who sends (policies.yaml `sender:` — company, address, register, represented by, contact; the
German Impressum duty, CAN-SPAM's postal address).

The shipped layout (`templates/layouts/base.html`) has it. A marketing e-mail whose rendered HTML
carries no link to the recipient's unsubscribe page — a custom template that does not extend the
layout — gets this standard footer appended at send time, and so does a text part without the
link (each part is checked on its own: a `.txt` of its own may lack what the HTML has), so no
marketing mail ever leaves without a visible way out; `nurture validate` warns about such a template.
Transactional mail is exempt. Every value is HTML-escaped: the sender's details come from a
file, but a contact's name never reaches the footer. Its words are the shipped layout's messages
(`_("Unsubscribe")`, …) in the message's locale (the caller resolves it as templates do:
`Localizer.message_locale`), looked up like the layout's own — the project's catalogs, so a
project that translates its layout into Polish gets a Polish footer too, then the built-in German
(`nurture.rendering.i18n.nurture_words`), else the English source."""
from __future__ import annotations

from html import escape
from typing import Callable, Mapping, Optional

from nurture.rendering.i18n import Catalogs, language_of, nurture_words

# the shipped layout's msgids (templates/layouts/base.html): one translation serves both footers
NOTICE = "You receive this because you signed up with us."
UNSUBSCRIBE = "Unsubscribe"
PREFERENCES = "Preferences"
REPRESENTED_BY = "Represented by %(name)s"


def has_unsubscribe_link(html: str, unsubscribe_url: str) -> bool:
    """Whether the rendered HTML links to the recipient's unsubscribe page (an href, visible)."""
    return f'href="{escape(unsubscribe_url)}"' in html or f"href='{escape(unsubscribe_url)}'" in html \
        or f'href="{unsubscribe_url}"' in html


def imprint_line(imprint: Mapping[str, Optional[str]], words: Callable[..., str]) -> str:
    parts = [imprint.get("company"), imprint.get("address"), imprint.get("register")]
    if imprint.get("represented_by"):
        parts.append(words(REPRESENTED_BY, name=imprint["represented_by"]))
    parts.append(imprint.get("contact"))
    return " · ".join(p for p in parts if p)


def footer_html(links: Mapping[str, str], imprint: Mapping[str, Optional[str]], words: Callable[..., str]) -> str:
    line = imprint_line(imprint, words)
    return ('<div class="nurture-legal-footer" style="max-width:560px;margin:16px auto 0 auto;font-size:12px;'
            'line-height:18px;color:#6b7280;text-align:center;font-family:Helvetica,Arial,sans-serif">'
            f'{escape(words(NOTICE))} <a href="{escape(links["unsubscribe"])}" style="color:#6b7280">'
            f'{escape(words(UNSUBSCRIBE))}</a>'
            f' · <a href="{escape(links["preferences"])}" style="color:#6b7280">{escape(words(PREFERENCES))}</a>'
            + (f"<br>{escape(line)}" if line else "") + "</div>")


def footer_text(links: Mapping[str, str], imprint: Mapping[str, Optional[str]], words: Callable[..., str]) -> str:
    line = imprint_line(imprint, words)
    return f"\n\n--\n{words(NOTICE)}\n{words(UNSUBSCRIBE)}: {links['unsubscribe']}" + (f"\n{line}" if line else "")


def ensure_footer(html: str, text: str, links: Mapping[str, str], imprint: Mapping[str, Optional[str]],
                  locale: Optional[str], catalogs: Optional[Catalogs] = None) -> tuple[str, str, bool]:
    """(html, text, appended): the message with the standard footer appended to each part that
    has no unsubscribe link (the HTML: no visible link; the text: no URL); unchanged otherwise.
    `locale`: the message locale; `catalogs`: the project's (None: the built-in words only)."""
    words = nurture_words(catalogs, language_of(locale))
    appended = False
    if not has_unsubscribe_link(html, links["unsubscribe"]):
        footer = footer_html(links, imprint, words)
        at = html.lower().rfind("</body>")
        html = html[:at] + footer + html[at:] if at >= 0 else html + footer
        appended = True
    if links["unsubscribe"] not in text:
        text = text.rstrip() + footer_text(links, imprint, words) + "\n"
        appended = True
    return html, text, appended

"""The HTML of the recipient pages: the preference center (with the unsubscribe button) and
short message pages (confirmed, expired link, …).

Plain HTML forms, no JavaScript, no cookies, no external assets; accessible: a `lang`
attribute, one `h1` per page, every checkbox with its own `label`, groups in
`fieldset`/`legend`, visible focus, status messages in a `role="status"` region.

Every word is a message in the recipient's language (`PageLanguage`: the message locale of the
contact the link is for — the language of the e-mail it came in — and Nurture's own words in it,
nurture.rendering.i18n.nurture_words); the English msgids are written here and in
nurture.web.app, and their German in nurture/rendering/translations/de.po.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from jinja2 import DictLoader, Environment, select_autoescape
from markupsafe import Markup, escape

from nurture.rendering.i18n import Localizer, nurture_words
from nurture.web.preferences import Preferences

_BASE = """<!DOCTYPE html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ _(title) }}</title>
<style>
  body { font-family: system-ui, Helvetica, Arial, sans-serif; color: #1f2933; background: #f4f5f7; margin: 0; }
  main { max-width: 560px; margin: 32px auto; background: #fff; padding: 24px 32px; border-radius: 8px; }
  h1 { font-size: 1.5rem; margin-top: 0; }
  fieldset { border: 1px solid #cbd2d9; border-radius: 6px; margin: 0 0 16px 0; padding: 12px 16px; }
  legend { font-weight: bold; padding: 0 4px; }
  .option { margin: 8px 0; }
  .option label { margin-left: 6px; }
  .hint { color: #52606d; font-size: 0.9rem; }
  button { font: inherit; padding: 10px 18px; border-radius: 6px; border: 2px solid #1d4ed8; background: #1d4ed8; color: #fff; cursor: pointer; }
  button.secondary { background: #fff; color: #1d4ed8; }
  button:focus, input:focus { outline: 3px solid #f59e0b; outline-offset: 2px; }
  .status { background: #ecfdf5; border: 1px solid #10b981; padding: 8px 12px; border-radius: 6px; }
  .problem { background: #fef2f2; border: 1px solid #ef4444; padding: 8px 12px; border-radius: 6px; }
</style>
</head>
<body>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

_MESSAGE = """{% extends "base.html" %}
{% block main %}
<h1>{{ _(title) }}</h1>
<p class="{{ 'problem' if problem else 'status' }}" role="{{ 'alert' if problem else 'status' }}">{{ _(text) }}</p>
{% endblock %}
"""

_PREFERENCES = """{% extends "base.html" %}
{% block main %}
<h1>{{ _(title) }}</h1>
{% if notices %}<p class="status" role="status" id="notice">{% for n in notices %}{{ " " if not loop.first }}{{ _(n) }}{% endfor %}</p>{% endif %}
<p>{{ _("Preferences for <strong>%(address)s</strong>.", address=prefs.email or prefs.phone) }}</p>
{% if prefs.channels.get(channel) %}
<form method="post" action="{{ action_unsubscribe }}">
  <p><button type="submit" id="unsubscribe">{{ _(UNSUBSCRIBE_ALL.get(channel, UNSUBSCRIBE_ALL["email"])) }}</button></p>
</form>
{% endif %}
<form method="post" action="{{ action_preferences }}">
  <fieldset>
    <legend>{{ _("What we may send you") }}</legend>
    {% for ch in channels %}
    <div class="option">
      <input type="checkbox" id="channel-{{ ch }}" name="channel" value="{{ ch }}"{% if prefs.channels.get(ch) %} checked{% endif %}>
      <label for="channel-{{ ch }}">{{ _(MARKETING[ch]) }}</label>
      {% if (ch == 'sms' and prefs.sms_stopped) or (ch == 'whatsapp' and prefs.whatsapp_stopped) %}<span class="hint">{{ _("(you replied STOP; send START to resume)") }}</span>{% endif %}
    </div>
    {% endfor %}
  </fieldset>
  {% if prefs.topics %}
  <fieldset>
    <legend>{{ _("Topics") }}</legend>
    <p class="hint" id="topics-hint">{{ _("Untick the topics you do not want to hear about.") }}</p>
    {% for topic, wanted in prefs.topics.items() %}
    <div class="option">
      <input type="checkbox" id="topic-{{ loop.index }}" name="topic" value="{{ topic }}" aria-describedby="topics-hint"{% if wanted %} checked{% endif %}>
      <label for="topic-{{ loop.index }}">{{ word(topic | replace('_', ' ') | capitalize) }}</label>
    </div>
    {% endfor %}
  </fieldset>
  {% endif %}
  <p><button type="submit" id="save" class="secondary">{{ _("Save preferences") }}</button></p>
</form>
<p class="hint">{{ _("Service messages about your orders and account are not affected.") }}</p>
{% endblock %}
"""

_CONFIRM = """{% extends "base.html" %}
{% block main %}
<h1>{{ _(title) }}</h1>
<p>{{ _(CONFIRM_WHAT.get(channel, CONFIRM_WHAT["email"])) }}</p>
<form method="post" action="{{ action }}">
  <p><button type="submit" id="confirm">{{ _("Yes, confirm my subscription") }}</button></p>
</form>
<p class="hint">{{ _("Nothing is subscribed until you press it; if you did not ask for this, ignore the e-mail.") }}</p>
{% endblock %}
"""

_env = Environment(loader=DictLoader({"base.html": _BASE, "message.html": _MESSAGE, "preferences.html": _PREFERENCES,
                                      "confirm.html": _CONFIRM}),
                   autoescape=select_autoescape(default=True, default_for_string=True))
# One whole sentence per channel (a translation cannot splice a channel's name into a sentence).
MARKETING = {"email": "Marketing e-mail", "sms": "Marketing text messages (SMS)",
             "whatsapp": "Marketing WhatsApp messages"}
UNSUBSCRIBE_ALL = {"email": "Unsubscribe from all marketing e-mail",
                   "sms": "Unsubscribe from all marketing text messages (SMS)",
                   "whatsapp": "Unsubscribe from all marketing WhatsApp messages"}
UNSUBSCRIBED = {"email": "You are unsubscribed from marketing e-mail.",
                "sms": "You are unsubscribed from marketing text messages (SMS).",
                "whatsapp": "You are unsubscribed from marketing WhatsApp messages."}
CONFIRM_WHAT = {"email": "Press the button to confirm that you want to receive our marketing e-mail.",
                "sms": "Press the button to confirm that you want to receive our marketing text messages (SMS).",
                "whatsapp": "Press the button to confirm that you want to receive our marketing WhatsApp messages."}


def _source_words(message: str, **values: Any) -> str:
    return message % values if values else message


@dataclass(frozen=True)
class PageLanguage:
    """The language of one page: its HTML `lang` (`de-AT`) and its words (`words(msgid,
    **values)`, nurture.rendering.i18n.nurture_words). The default: the English source."""
    lang: str = "en"
    words: Callable[..., str] = field(default=_source_words)

    def gettext(self, message: str, **values: Any) -> Markup:
        """A page's `_()`: the catalog's text is markup (as in the templates), values are escaped."""
        return Markup(self.words(str(message), **{k: escape(v) for k, v in values.items()}))

    def word(self, text: str) -> str:
        """A project's name for something (a journey's `topic:`) in this language, if a catalog
        has it — text, escaped like any value."""
        return self.words(str(text))


ENGLISH = PageLanguage()


def page_language(localizer: Localizer, contact_locale: Optional[str]) -> PageLanguage:
    """The language of a page for a contact whose `locale` is `contact_locale` (None: a link that
    names no known contact): the message locale its e-mails are in (`Localizer.message_locale`:
    the contact's if a catalog serves it, else policies.yaml's, else English)."""
    locale = localizer.message_locale(contact_locale)
    return PageLanguage(locale.replace("_", "-"), nurture_words(localizer.catalogs, locale))


def _render(template: str, language: PageLanguage, **values: Any) -> str:
    title = values.get("title")
    if language.lang != "en" and title and language.words(title) == title:
        # No catalog has this page in that language (a project writing French with no fr.po
        # for Nurture's pages): all of it in the English source, and `lang` says so.
        language = ENGLISH
    return _env.get_template(template).render(_=language.gettext, word=language.word, lang=language.lang,
                                                **values)


def message_page(title: str, text: str, *, problem: bool = False, language: PageLanguage = ENGLISH) -> str:
    """A short page: `title` and `text` are msgids (English), shown in `language`."""
    return _render("message.html", language, title=title, text=text, problem=problem)


def confirm_page(*, base_url: str, token: str, channel: str, language: PageLanguage = ENGLISH) -> str:
    """The double opt-in page a confirmation link opens: a button whose POST confirms (opening the
    link alone changes nothing — mail scanners open links)."""
    return _render("confirm.html", language, title="Confirm your subscription", channel=channel,
                   CONFIRM_WHAT=CONFIRM_WHAT, action=f"{base_url}/confirm/{token}")


def preferences_page(prefs: Preferences, *, base_url: str, token: str, channel: str,
                     notices: Sequence[str] = (), language: PageLanguage = ENGLISH) -> str:
    """The preference center; `notices`: msgids of what just happened, shown as one status line."""
    channels = ["email"] + (["sms", "whatsapp"] if prefs.phone else [])
    return _render(
        "preferences.html", language,
        title="Your e-mail preferences" if channel == "email" else "Your message preferences",
        prefs=prefs, channel=channel, channels=channels, MARKETING=MARKETING, UNSUBSCRIBE_ALL=UNSUBSCRIBE_ALL,
        notices=list(notices), action_unsubscribe=f"{base_url}/u/{token}",
        action_preferences=f"{base_url}/u/{token}/preferences")

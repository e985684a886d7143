"""The HTML of the recipient pages: the preference center (with the unsubscribe button) and
short message pages (confirmed, expired link, …).

Plain HTML forms, no JavaScript, no cookies, no external assets; accessible: a `lang`
attribute, one `h1` per page, every checkbox with its own `label`, groups in
`fieldset`/`legend`, visible focus, status messages in a `role="status"` region.
"""
from __future__ import annotations

from typing import Optional

from jinja2 import DictLoader, Environment, select_autoescape

from nurture.web.preferences import Preferences

_BASE = """<!DOCTYPE html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
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
<h1>{{ title }}</h1>
<p class="{{ 'problem' if problem else 'status' }}" role="{{ 'alert' if problem else 'status' }}">{{ text }}</p>
{% endblock %}
"""

_PREFERENCES = """{% extends "base.html" %}
{% block main %}
<h1>{{ title }}</h1>
{% if notice %}<p class="status" role="status" id="notice">{{ notice }}</p>{% endif %}
<p>Preferences for <strong>{{ prefs.email or prefs.phone }}</strong>.</p>
{% if prefs.channels.get(channel) %}
<form method="post" action="{{ action_unsubscribe }}">
  <p><button type="submit" id="unsubscribe">Unsubscribe from all marketing {{ channel_names[channel] }}</button></p>
</form>
{% endif %}
<form method="post" action="{{ action_preferences }}">
  <fieldset>
    <legend>What we may send you</legend>
    {% for ch in channels %}
    <div class="option">
      <input type="checkbox" id="channel-{{ ch }}" name="channel" value="{{ ch }}"{% if prefs.channels.get(ch) %} checked{% endif %}>
      <label for="channel-{{ ch }}">Marketing {{ channel_names[ch] }}</label>
      {% if (ch == 'sms' and prefs.sms_stopped) or (ch == 'whatsapp' and prefs.whatsapp_stopped) %}<span class="hint">(you replied STOP; send START to resume)</span>{% endif %}
    </div>
    {% endfor %}
  </fieldset>
  {% if prefs.topics %}
  <fieldset>
    <legend>Topics</legend>
    <p class="hint" id="topics-hint">Untick the topics you do not want to hear about.</p>
    {% for topic, wanted in prefs.topics.items() %}
    <div class="option">
      <input type="checkbox" id="topic-{{ loop.index }}" name="topic" value="{{ topic }}" aria-describedby="topics-hint"{% if wanted %} checked{% endif %}>
      <label for="topic-{{ loop.index }}">{{ topic | replace('_', ' ') | capitalize }}</label>
    </div>
    {% endfor %}
  </fieldset>
  {% endif %}
  <p><button type="submit" id="save" class="secondary">Save preferences</button></p>
</form>
<p class="hint">Service messages about your orders and account are not affected.</p>
{% endblock %}
"""

_CONFIRM = """{% extends "base.html" %}
{% block main %}
<h1>{{ title }}</h1>
<p>Press the button to confirm that you want to receive our {{ channel_name }}.</p>
<form method="post" action="{{ action }}">
  <p><button type="submit" id="confirm">Yes, confirm my subscription</button></p>
</form>
<p class="hint">Nothing is subscribed until you press it; if you did not ask for this, ignore the e-mail.</p>
{% endblock %}
"""

_env = Environment(loader=DictLoader({"base.html": _BASE, "message.html": _MESSAGE, "preferences.html": _PREFERENCES,
                                      "confirm.html": _CONFIRM}),
                   autoescape=select_autoescape(default=True, default_for_string=True))
CHANNEL_NAMES = {"email": "e-mail", "sms": "text messages (SMS)", "whatsapp": "WhatsApp messages"}


def message_page(title: str, text: str, *, problem: bool = False, lang: str = "en") -> str:
    return _env.get_template("message.html").render(title=title, text=text, problem=problem, lang=lang)


def confirm_page(*, base_url: str, token: str, channel: str, lang: str = "en") -> str:
    """The double opt-in page a confirmation link opens: a button whose POST confirms (opening the
    link alone changes nothing — mail scanners open links)."""
    return _env.get_template("confirm.html").render(
        title="Confirm your subscription", channel_name=f"marketing {CHANNEL_NAMES.get(channel, channel)}", lang=lang,
        action=f"{base_url}/confirm/{token}")


def preferences_page(prefs: Preferences, *, base_url: str, token: str, channel: str,
                     notice: Optional[str] = None, lang: str = "en") -> str:
    channels = ["email"] + (["sms", "whatsapp"] if prefs.phone else [])
    return _env.get_template("preferences.html").render(
        title="Your e-mail preferences" if channel == "email" else "Your message preferences",
        prefs=prefs, channel=channel, channels=channels, channel_names=CHANNEL_NAMES, notice=notice, lang=lang,
        action_unsubscribe=f"{base_url}/u/{token}", action_preferences=f"{base_url}/u/{token}/preferences")

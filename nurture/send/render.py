"""One claimed message → the OutgoingMessage its channel sends: the template context
(nurture.send.context), the step's prepared templates (CSS inlined and compiled once per step
and tick, so per recipient only Jinja runs), UTM tagging of links (Nurture's own recipient
pages left alone) and, for marketing e-mail, the List-Unsubscribe headers and a visible
unsubscribe link (the standard legal footer where the template has none).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

from nurture.registry import OutgoingMessage
from nurture.rendering.email_message import rfc_message_id
from nurture.rendering.legal_footer import ensure_footer
from nurture.rendering.links import tag_html, tag_text, utm_query
from nurture.runtime.context import Runtime
from nurture.send.context import imprint_of, recipient_links, template_context
from nurture.send.system_mail import SYSTEM_JOURNEYS, render_system_message
from nurture.settings import Settings


def own_page_prefixes(rt: Runtime) -> tuple[str, ...]:
    """Nurture's own recipient pages: signed links that UTM tagging must leave alone."""
    public_url = rt.public_url
    return (f"{public_url}/u/", f"{public_url}/confirm/")


class StepRemoved(KeyError):
    """The message's journey or send step is no longer in the project (removed since queueing)."""


class _SendStep(NamedTuple):
    """What a send step's messages on one channel share, looked up once per batch."""
    template: Any  # PreparedEmail | Template (SMS, WhatsApp)
    utm: str
    own_pages: tuple[str, ...]
    journey: dict
    imprint: dict
    content_sid: Optional[str] = None  # WhatsApp: the approved template outside the session
    content_variables: Optional[dict[str, Any]] = None  # its placeholders: name → compiled Jinja


def _prepared(rt: Runtime, journey: str, step_id: str, channel: str, cache: dict) -> _SendStep:
    key = (journey, step_id, channel)
    if key not in cache:
        try:  # only this lookup means "removed": a KeyError while rendering is the template's
            plan = rt.plan(journey)
            send = plan.nodes[step_id].step.send
        except KeyError:
            raise StepRemoved(f"{journey}.{step_id}") from None
        sid, variables = None, None
        if channel == "email":
            template = rt.templates.prepare_email(send.template, send.subject or "", send.preheader)
        else:
            template = rt.templates.prepare_text(channel, send.template)
            if channel == "whatsapp" and send.content_sid:
                sid = send.content_sid
                variables = {k: rt.templates.string(v) for k, v in (send.content_variables or {}).items()}
        cache[key] = _SendStep(template, utm_query(channel, journey, step_id), own_page_prefixes(rt),
                               {"name": journey, "description": plan.journey.description},
                               imprint_of(rt.project.policies.sender), sid, variables)
    return cache[key]


def render_message(rt: Runtime, row: Any, settings: Settings, cache: Optional[dict] = None,
                   session_open: bool = False) -> OutgoingMessage:
    """Render a loaded message row (nurture.send.deliver's LoadedMessage) with the settings the
    batch read once (`rt.settings`: sender address, public URL, link secret). `cache` keeps the
    prepared send steps between calls. `session_open`: a WhatsApp recipient's 24-hour session
    is open (free text may go; else the step's approved template does). Raises a RenderError for
    a template that cannot be rendered, StepRemoved for a journey or step no longer in the project."""
    from_email = settings.from_email
    if row.journey in SYSTEM_JOURNEYS:  # Nurture's own double opt-in requests: no journey plan
        return render_system_message(rt, row, rfc_message_id(row.id, row.journey, from_email))
    step = _prepared(rt, row.journey, row.step_id, row.channel, {} if cache is None else cache)
    links = recipient_links(settings.links_url, settings.signing_secret, row.contact_id, row.purpose, row.channel)
    context = template_context(row, step.journey, links, step.imprint)
    msg = OutgoingMessage(message_pk=row.id, rfc_message_id=rfc_message_id(row.id, row.journey, from_email),
                          contact_id=row.contact_id, channel=row.channel, journey=row.journey,
                          step_id=row.step_id, purpose=row.purpose, to=row.address or "",
                          created_at=row.created_at, locale=row.locale)
    if row.channel == "email":
        rendered = step.template.render(context)
        msg.subject = rendered.subject
        msg.html = tag_html(rendered.html, step.utm, step.own_pages)
        msg.text = tag_text(rendered.text, step.utm, step.own_pages)
        msg.to_name = " ".join(p for p in (row.first_name, row.last_name) if p)
        if row.purpose == "marketing":
            # no marketing mail leaves without a visible way out (nurture.rendering.legal_footer)
            # in the message's locale and through its catalogs, as the templates resolve them
            localizer = rt.templates.localizer
            msg.html, msg.text, _ = ensure_footer(msg.html, msg.text, links, step.imprint,
                                                  localizer.message_locale(row.locale), localizer.catalogs)
            msg.headers = {"List-Unsubscribe": f"<{links['unsubscribe']}>, <mailto:unsubscribe@{from_email.rpartition('@')[2]}?subject=unsubscribe>",
                           "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    else:
        msg.text = tag_text(step.template.render(context).strip(), step.utm, step.own_pages)
        if step.content_sid and not session_open:
            msg.content_sid = step.content_sid
            msg.content_variables = {k: tag_text(t.render(context).strip(), step.utm, step.own_pages)
                                     for k, t in (step.content_variables or {}).items()}
    return msg

"""Rendering: sandboxed Jinja templates with CSS inlined once per template, and fast,
standards-correct assembly of e-mail messages."""
from nurture.rendering.email_message import build_email_bytes, sms_segments
from nurture.rendering.templates import RenderedEmail, TemplateLibrary

__all__ = ["TemplateLibrary", "RenderedEmail", "build_email_bytes", "sms_segments"]

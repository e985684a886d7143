"""Recipient pages and webhooks (`nurture web`): one-click unsubscribe, the preference center,
double opt-in confirmation, the tracking webhook, and provider webhooks (Twilio, bounces)."""
from nurture.web.app import create_app

__all__ = ["create_app"]

"""`sms.twilio`: SMS through Twilio's Programmable Messaging REST API
(`NURTURE_SMS_BACKEND=twilio`); `whatsapp.twilio`: WhatsApp through the same API
(`NURTURE_WHATSAPP_BACKEND=twilio`, see TwilioWhatsAppChannel).

One `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` per message (form fields `To`,
`From` or `MessagingServiceSid`, `Body`, optional `StatusCallback`; HTTP basic auth with the
account SID and auth token), over one HTTP connection pool per batch. Results per message:
- 201 with a Message resource: `sent`, provider id = the message SID (`SM…`);
- error 21610 (recipient replied STOP): `failed` + an `sms_stop` suppression;
- errors 21211 / 21614 (invalid number, not SMS-capable): `failed`, reason `unreachable`;
- 429 and 503 (Twilio's 20429 "retry according to Retry-After", 20503 "try again a few times
  with exponential back-off"): retried here with exponential backoff (the sleep is injectable
  so tests are fast), then a `retry` result (the engine tries again later);
- 500, 502 and 504: the request may have been processed — Twilio's error 20500 page: sending an
  SMS is not idempotent, and retrying it after a 500 "may send multiple messages" — so, like
  a network error once connected (a read timeout, a reset after the request was sent), it is
  never sent again: `failed`, reason `delivery_unknown` (look it up in Twilio's logs;
  `nurture requeue --reason delivery_unknown` sends it again);
- 401 / 403 (the account SID or auth token is refused) and a connection that cannot be made
  (refused, DNS, connect timeout — after the same backoff): the channel itself is unusable, so
  that message and every later one of the batch are `unavailable` without another request:
  they go back to the queue and the attempt does not count against them;
- any other 4xx: `failed` with Twilio's error code.

Numbers are normalized to E.164 with `phonenumbers` before the call. Settings:
NURTURE_TWILIO_ACCOUNT_SID, NURTURE_TWILIO_AUTH_TOKEN, NURTURE_TWILIO_FROM or
NURTURE_TWILIO_MESSAGING_SERVICE_SID, NURTURE_TWILIO_STATUS_CALLBACK (default:
NURTURE_PUBLIC_URL + /webhooks/twilio when a public URL is set), NURTURE_TWILIO_BASE_URL
(default https://api.twilio.com; tests point it at a local fake). The auth token never appears
in a result or error message: Twilio's error text is passed through `nurture.redaction.redact`
with the token (and the basic-auth encoding of SID and token) before it is recorded.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Callable, Optional, Sequence

import httpx
import phonenumbers
from pydantic import SecretStr

from integrations.http_retry import tls_context
from nurture.redaction import redact, secrets_in
from nurture.registry import Channel, DeliveryResult, IntegrationContext, IntegrationError, OutgoingMessage
from nurture.settings import EnvSettings, Settings, setting

DEFAULT_BASE_URL = "https://api.twilio.com"
STOPPED = {21610}
UNREACHABLE = {21211, 21614}
RETRYABLE_STATUS = {429, 503}  # not processed: safe to send again (module docstring)
IN_DOUBT_STATUS = {500, 502, 504}  # maybe processed: sending again could send twice


class TwilioSettings(EnvSettings):
    """The Twilio account and sender. The auth token is the engine's NURTURE_TWILIO_AUTH_TOKEN
    (`nurture web` checks Twilio's webhook signatures with it too); `status_callback` defaults to
    NURTURE_PUBLIC_URL + /webhooks/twilio when a public URL is set."""
    account_sid: Optional[str] = setting("NURTURE_TWILIO_ACCOUNT_SID", doc="The Twilio account SID (AC…).")
    auth_token: Optional[SecretStr] = None
    from_number: Optional[str] = setting("NURTURE_TWILIO_FROM", doc="The sending number or sender id.")
    messaging_service_sid: Optional[str] = setting(
        "NURTURE_TWILIO_MESSAGING_SERVICE_SID", doc="A Messaging Service (MG…) to send from instead of a number.")
    status_callback: Optional[str] = setting(
        "NURTURE_TWILIO_STATUS_CALLBACK", doc="Where Twilio posts delivery status (unset: <public URL>/webhooks/twilio).")
    base_url: str = setting("NURTURE_TWILIO_BASE_URL", DEFAULT_BASE_URL, doc="Twilio's API address.")
    default_region: Optional[str] = None  # the engine's NURTURE_DEFAULT_COUNTRY (the privacy verbs read it too)

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "TwilioSettings":
        raw = cls.values_in(context.env)
        engine = Settings.from_env(context.env)
        sid, token = raw.get("account_sid"), engine.twilio_auth_token
        if not sid or token is None:
            raise IntegrationError("NURTURE_SMS_BACKEND=twilio needs NURTURE_TWILIO_ACCOUNT_SID and NURTURE_TWILIO_AUTH_TOKEN")
        sender, service = raw.get("from_number"), raw.get("messaging_service_sid")
        if not sender and not service:
            raise IntegrationError("NURTURE_SMS_BACKEND=twilio needs NURTURE_TWILIO_FROM (a Twilio number or sender id) "
                                   "or NURTURE_TWILIO_MESSAGING_SERVICE_SID")
        public = engine.public_url.rstrip("/") if engine.is_set("public_url") else ""
        callback = raw.get("status_callback") or (f"{public}/webhooks/twilio" if public else None)
        return cls(account_sid=sid, auth_token=token, from_number=sender, messaging_service_sid=service,
                   status_callback=callback, base_url=raw.get("base_url", DEFAULT_BASE_URL).rstrip("/"),
                   default_region=engine.default_country)


def to_e164(number: str, region: Optional[str] = None) -> Optional[str]:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


class TwilioSmsChannel(Channel):
    name = "sms.twilio"
    channel = "sms"

    def __init__(self, settings: TwilioSettings, *, attempts: int = 4, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 15.0):
        self.settings = settings
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        self.timeout = timeout
        token = settings.auth_token.get_secret_value()
        basic = base64.b64encode(f"{settings.account_sid}:{token}".encode()).decode()
        self._secrets = secrets_in({}, [token, basic])

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "TwilioSmsChannel":
        return cls(TwilioSettings.from_env(context))

    @property
    def messages_url(self) -> str:
        return f"{self.settings.base_url}/2010-04-01/Accounts/{self.settings.account_sid}/Messages.json"

    def form(self, to: str, m: OutgoingMessage) -> dict[str, str]:
        s = self.settings
        fields = {"To": to, "Body": m.text}
        if s.messaging_service_sid:
            fields["MessagingServiceSid"] = s.messaging_service_sid
        else:
            fields["From"] = s.from_number or ""
        if s.status_callback:
            fields["StatusCallback"] = s.status_callback
        return fields

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        auth = (self.settings.account_sid, self.settings.auth_token.get_secret_value())
        results: list[DeliveryResult] = []
        with httpx.Client(auth=auth, timeout=self.timeout, headers={"Accept": "application/json"},
                          verify=tls_context()) as client:
            for position, m in enumerate(messages):
                result = self._send_one(client, m)
                results.append(result)
                if result.status == "unavailable":  # the next request would fail alike: not sent
                    results.extend(DeliveryResult(x.message_pk, "unavailable", reason=result.reason)
                                   for x in messages[position + 1:])
                    break
        return results

    def _send_one(self, client: httpx.Client, m: OutgoingMessage) -> DeliveryResult:
        to = to_e164(m.to, self.settings.default_region) if m.to else None
        if to is None:
            return DeliveryResult(m.message_pk, "failed", reason="unreachable: not a valid phone number")
        last = "unknown"
        unreachable = False  # the last attempt could not even connect: nothing was handed over
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = client.post(self.messages_url, data=self.form(to, m))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last, unreachable = f"twilio_connect_failed: {type(exc).__name__}", True
                continue
            except httpx.HTTPError as exc:
                # The request may have reached Twilio (a read timeout, a reset after the body was
                # sent): a second POST could send the SMS twice. In doubt, never twice — the
                # operator looks it up in Twilio's logs and re-queues it (`nurture requeue
                # --reason delivery_unknown`). Only a request that never connected is sent again.
                return DeliveryResult(m.message_pk, "failed",
                                      reason=f"delivery_unknown: twilio_network_error: {type(exc).__name__} "
                                             "after the request was sent")
            unreachable = False
            if response.status_code in IN_DOUBT_STATUS:
                return DeliveryResult(m.message_pk, "failed",
                                      reason=f"delivery_unknown: twilio_http_{response.status_code}: Twilio may "
                                             "have sent it (a server error after the request reached it)")
            if response.status_code in RETRYABLE_STATUS:
                last = f"twilio_http_{response.status_code}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isascii() and retry_after.isdigit() and attempt + 1 < self.attempts:
                    self.sleep(min(float(retry_after), 30.0))
                continue
            return self._result(m, response)
        return DeliveryResult(m.message_pk, "unavailable" if unreachable else "retry", reason=last)

    def _result(self, m: OutgoingMessage, response: httpx.Response) -> DeliveryResult:
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if response.status_code in (200, 201) and payload.get("sid"):
            sid = payload["sid"]  # an SMxxxx id; anything else is not kept (it is no id)
            return DeliveryResult(m.message_pk, "sent",
                                  provider_id=sid if isinstance(sid, str) and 0 < len(sid) <= 64 else None)
        code = payload.get("code") if isinstance(payload.get("code"), int) else None  # Twilio's codes are numbers
        message = " ".join((redact(str(payload.get("message") or ""), self._secrets) or "").split())[:200]
        if code in STOPPED:
            return DeliveryResult(m.message_pk, "failed", reason=f"twilio_{code}: recipient unsubscribed (STOP)",
                                  suppress="sms_stop")
        if code in UNREACHABLE:
            return DeliveryResult(m.message_pk, "failed", reason=f"unreachable: twilio_{code}: {message}")
        if response.status_code in (401, 403):
            # Wrong credentials fail every message alike: the channel is unusable until fixed.
            return DeliveryResult(m.message_pk, "unavailable",
                                  reason=f"twilio_auth_failed: twilio_{code or response.status_code}")
        return DeliveryResult(m.message_pk, "failed", reason=f"twilio_{code or response.status_code}: {message}")


class TwilioWhatsAppSettings(EnvSettings):
    """The WhatsApp sender. The account, status callback and API address are the SMS channel's
    (TwilioSettings): one Twilio account serves both."""
    whatsapp_from: Optional[str] = setting(
        "NURTURE_TWILIO_WHATSAPP_FROM", doc="The WhatsApp sender number (E.164, `whatsapp:` prefix optional).")

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "TwilioWhatsAppSettings":
        return cls(**cls.values_in(context.env))

    @classmethod
    def account(cls, context: IntegrationContext) -> TwilioSettings:
        """The Twilio settings the WhatsApp channel sends with: the account of SMS, the
        `whatsapp:` sender (or the Messaging Service) of WhatsApp."""
        raw = TwilioSettings.values_in(context.env)
        engine = Settings.from_env(context.env)
        sid, token = raw.get("account_sid"), engine.twilio_auth_token
        if not sid or token is None:
            raise IntegrationError("NURTURE_WHATSAPP_BACKEND=twilio needs NURTURE_TWILIO_ACCOUNT_SID and "
                                   "NURTURE_TWILIO_AUTH_TOKEN")
        sender, service = cls.from_env(context).whatsapp_from, raw.get("messaging_service_sid")
        if not sender and not service:
            raise IntegrationError("NURTURE_WHATSAPP_BACKEND=twilio needs NURTURE_TWILIO_WHATSAPP_FROM (the WhatsApp "
                                   "sender number) or NURTURE_TWILIO_MESSAGING_SERVICE_SID")
        if sender and not sender.startswith("whatsapp:"):
            sender = f"whatsapp:{sender}"
        public = engine.public_url.rstrip("/") if engine.is_set("public_url") else ""
        callback = raw.get("status_callback") or (f"{public}/webhooks/twilio" if public else None)
        return TwilioSettings(account_sid=sid, auth_token=token, from_number=sender,
                              messaging_service_sid=None if sender else service, status_callback=callback,
                              base_url=raw.get("base_url", DEFAULT_BASE_URL).rstrip("/"),
                              default_region=engine.default_country)


class TwilioWhatsAppChannel(TwilioSmsChannel):
    """`whatsapp.twilio`: the same Messages resource with `whatsapp:`-prefixed addresses
    (Twilio's WhatsApp guide). Inside the contact's 24-hour session the free text goes as `Body`;
    outside it the step's approved template goes as `ContentSid` with `ContentVariables` (a JSON
    object string) and no `Body` — Twilio refuses free text there with error 63016, recorded
    `failed`. Error 63003 / 63024 (not a WhatsApp user, invalid recipient) is `unreachable`;
    the rest (retries, authentication, redaction) as for SMS."""
    name = "whatsapp.twilio"
    channel = "whatsapp"
    UNREACHABLE = {63003, 63024, 21211}

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "TwilioWhatsAppChannel":
        return cls(TwilioWhatsAppSettings.account(context))

    def form(self, to: str, m: OutgoingMessage) -> dict[str, str]:
        fields = super().form(f"whatsapp:{to}", m)
        if m.content_sid:
            del fields["Body"]
            fields["ContentSid"] = m.content_sid
            if m.content_variables:
                fields["ContentVariables"] = json.dumps(m.content_variables, ensure_ascii=False)
        return fields

    def _result(self, m: OutgoingMessage, response: httpx.Response) -> DeliveryResult:
        result = super()._result(m, response)
        if result.suppress == "sms_stop":  # 21610 on WhatsApp: the recipient opted out
            return DeliveryResult(m.message_pk, "failed", reason=result.reason, suppress="whatsapp_stop")
        code = result.reason.partition(":")[0].removeprefix("twilio_") if result.reason else ""
        if result.status == "failed" and code.isascii() and code.isdigit() and int(code) in self.UNREACHABLE:
            return DeliveryResult(m.message_pk, "failed", reason=f"unreachable: {result.reason}")
        return result

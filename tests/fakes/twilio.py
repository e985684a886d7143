"""A local fake of Twilio's Programmable Messaging REST API (2010-04-01), on 127.0.0.1.

It speaks the documented protocol and checks what it receives:
`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP basic auth (account SID + auth
token; the SID must match the one in the path), `application/x-www-form-urlencoded` fields
`To` (E.164), exactly one of `From` / `MessagingServiceSid`, `Body`, optional
`StatusCallback`. Success is `201 Created` with a Message resource (`sid` "SM" + 32 hex,
`status` "queued", …); errors are Twilio's JSON error bodies
(`{"code", "message", "more_info", "status"}`).

WhatsApp (Twilio's WhatsApp guide; error pages 63016, 21654, 21656, 50526): `To` and `From` both
carry the `whatsapp:` prefix; a template goes as `ContentSid` (`HX` + 32 hex digits) with optional
`ContentVariables` (a JSON object string; without a ContentSid: error 21654; not JSON: 21656)
and no `Body`; free text (`Body`) only to a number whose 24-hour customer-service window is open —
`fake.sessions` holds those numbers — else error 63016 "Outside messaging window".

Tests script failures per destination number (`fake.script["+4915…"] = [429, 503, 21610]`:
one entry per request, an HTTP status or a Twilio error code), read `fake.requests`, and
build signed webhook requests (status callbacks, inbound STOP) the way Twilio signs them.
Fault switch: `quote_credentials = True` makes every error body's message quote the basic-auth
credentials the request carried (a provider that echoes a credential back). Two more script
entries: `ACCEPT_THEN_DROP` creates the message and closes the connection without an answer
(the answer lost on the way back), `ODD_SID` answers 201 with a `sid` that is no text, and
`CREATE_THEN_500` creates the message and answers 500 — what Twilio's error 20500 page warns
of ("sending an SMS … not idempotent": a retry after a 500 may send it twice).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qsl

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-f]{32})/Messages\.json$")
ERRORS = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource was not found"),
    20429: (429, "Too Many Requests"),
    21211: (400, "The 'To' number is not a valid phone number."),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' or 'MessagingServiceSid' parameter is required to send a message."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21614: (400, "'To' number is not a valid mobile number"),
    21654: (400, "A ContentSid must be specified if ContentVariables are provided in the request."),
    21656: (400, "The ContentVariables Parameter is invalid."),
    50526: (400, "Invalid content SID"),
    63016: (400, "Outside messaging window. For WhatsApp, use a Message Template instead"),
    63007: (400, "Twilio could not find a Channel with the specified From address"),
}
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
ACCEPT_THEN_DROP = -1  # script entries that are faults, not Twilio answers (module docstring)
ODD_SID = -2
CREATE_THEN_500 = -3


@dataclass
class Received:
    account_sid: str
    auth: tuple[str, str]
    content_type: str
    form: dict[str, str]


@dataclass
class FakeTwilio:
    account_sid: str = "AC" + "0123456789abcdef" * 2
    auth_token: str = "fake-twilio-auth-token-0001"
    script: dict[str, list[int]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    messages: dict[str, dict] = field(default_factory=dict)
    base_url: str = ""
    quote_credentials: bool = False  # error messages quote the credentials the request carried
    sessions: set[str] = field(default_factory=set)  # E.164 numbers with an open WhatsApp window
    _server: Optional[ThreadingHTTPServer] = None

    # -- lifecycle
    def start(self) -> "FakeTwilio":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, payload = fake.handle(self.path, self.headers.get("Authorization", ""),
                                              self.headers.get("Content-Type", ""), raw)
                if status == ACCEPT_THEN_DROP:  # created, and the answer never leaves
                    self.close_connection = True
                    return
                if fake.quote_credentials and status >= 400 and isinstance(payload.get("message"), str):
                    encoded = self.headers.get("Authorization", "").partition(" ")[2]
                    try:
                        received = base64.b64decode(encoded).decode()
                    except ValueError:
                        received = encoded
                    payload = {**payload, "message": f"{payload['message']} (credentials {received}, "
                                                     f"header {encoded})"}
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- the protocol
    @staticmethod
    def error(code: int, status: Optional[int] = None) -> tuple[int, dict]:
        http_status, message = ERRORS.get(code, (status or 400, "Error"))
        return http_status, {"code": code, "message": message,
                             "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": http_status}

    def handle(self, path: str, authorization: str, content_type: str, raw: bytes) -> tuple[int, dict]:
        match = PATH.match(path)
        if not match:
            return self.error(20404)
        scheme, _, encoded = authorization.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            user = password = ""
        if scheme != "Basic" or user != self.account_sid or password != self.auth_token or match["sid"] != user:
            return self.error(20003)
        form = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        self.requests.append(Received(match["sid"], (user, password), content_type, form))
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return 400, {"code": 20001, "message": "Invalid content type", "status": 400}
        to = form.get("To", "")
        whatsapp = to.startswith("whatsapp:")
        number = to.removeprefix("whatsapp:")
        if not E164.match(number):
            return self.error(21211)
        if bool(form.get("From")) == bool(form.get("MessagingServiceSid")):
            return self.error(21603)
        if form.get("From") and form["From"].startswith("whatsapp:") != whatsapp:
            return self.error(63007)  # a WhatsApp message needs a WhatsApp sender, and only it
        if "ContentVariables" in form and not form.get("ContentSid"):
            return self.error(21654)
        if form.get("ContentSid"):
            if not CONTENT_SID.match(form["ContentSid"]):
                return self.error(50526)
            if "ContentVariables" in form:
                try:
                    variables = json.loads(form["ContentVariables"])
                except ValueError:
                    return self.error(21656)
                if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
                    return self.error(21656)
        elif not form.get("Body"):
            return self.error(21602)
        elif whatsapp and number not in self.sessions:
            return self.error(63016)
        to = number if not whatsapp else to
        scripted = self.script.get(number)
        step = scripted.pop(0) if scripted else None
        if step is not None and step >= 0:
            if step < 1000:  # a bare HTTP status (a 5xx from the edge, or 429)
                return (step, self.error(20429)[1]) if step == 429 else (step, {"status": step, "message": "Service unavailable"})
            return self.error(step)
        sid = "SM" + uuid.uuid4().hex
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        resource = {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": form.get("Body", ""),
            "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0",
            "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
            "to": to, "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        self.messages[sid] = {**resource, "status_callback": form.get("StatusCallback")}
        if step == ACCEPT_THEN_DROP:
            return ACCEPT_THEN_DROP, {}
        if step == CREATE_THEN_500:
            return 500, {"code": 20500, "message": "Internal Server Error",
                         "more_info": "https://www.twilio.com/docs/errors/20500", "status": 500}
        if step == ODD_SID:
            return 201, {**resource, "sid": [sid]}
        return 201, resource

    # -- webhooks Twilio would send
    def signature(self, url: str, params: dict[str, str]) -> str:
        """X-Twilio-Signature: HMAC-SHA1(auth token, URL + sorted name+value pairs), base64."""
        data = url + "".join(k + params[k] for k in sorted(params))
        return base64.b64encode(hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()

    def status_callback(self, sid: str, status: str, error_code: Optional[str] = None) -> dict[str, str]:
        m = self.messages[sid]
        params = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "From": m["from"] or "",
                  "MessageSid": sid, "MessageStatus": status, "SmsSid": sid, "SmsStatus": status, "To": m["to"]}
        if error_code:
            params["ErrorCode"] = error_code
        return params

    def inbound(self, from_number: str, body: str, to: str = "+15005550006") -> dict[str, str]:
        sid = "SM" + uuid.uuid4().hex
        return {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "Body": body, "From": from_number,
                "MessageSid": sid, "NumMedia": "0", "NumSegments": "1", "SmsMessageSid": sid, "SmsSid": sid,
                "SmsStatus": "received", "To": to}

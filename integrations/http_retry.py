"""One provider request with the throttle slot, retries and backoff every HTTP destination
shares.

`ProviderClient.call()` takes a slot (`nurture.segments.throttle`), sends, and asks the
destination's `classify(response)` what the answer means: done, retry (after the
provider's Retry-After when it says so, else exponential backoff), or failed. Transport
errors and timeouts are retried too. After the last attempt the call returns a failed
`Attempt` with a reason — never raises — so the caller records it per member. `sleep` is
injectable: tests never really wait. Reasons never contain credentials (no headers, no
request bodies, no URLs with tokens), and a provider that quotes one back (a 401 body echoing
the bearer token) has it masked before anyone reads the answer: `call()` hands `classify` and
the caller a response whose body and headers went through `nurture.redaction.redact` with the
client's `secrets`, so every reason a destination derives from it is clean at the source.
"""
from __future__ import annotations

import functools
import json
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

import httpx

from nurture.redaction import redact, secrets_in
from nurture.segments.throttle import take_slot
from nurture.settings import EnvSettings, setting

DONE, RETRY, FAIL = "done", "retry", "fail"


class RetrySettings(EnvSettings):
    """How often and how patiently the HTTP destinations (HubSpot, Meta, Google, LinkedIn)
    retry a throttled or failed request."""
    max_attempts: int = setting("NURTURE_SYNC_MAX_ATTEMPTS", 5,
                                doc="Attempts per provider request (429, 5xx, network errors) before giving up.")
    backoff_seconds: float = setting("NURTURE_SYNC_BACKOFF_SECONDS", 1.0,
                                     doc="First wait between attempts, doubled each time (at most 120 s); "
                                         "a provider's Retry-After wins.")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RetrySettings":
        return cls.from_mapping(env)


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 120.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, hint: Optional[float]) -> float:
        if hint is not None and math.isfinite(hint):  # (a NaN hint slipped through max and min)
            return min(max(hint, 0.0), self.max_delay)
        return min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RetryPolicy":
        settings = RetrySettings.from_env(env)
        return cls(max_attempts=settings.max_attempts, base_delay=settings.backoff_seconds)


@dataclass(frozen=True)
class Verdict:
    kind: str  # done | retry | fail
    reason: str = ""
    delay: Optional[float] = None  # the provider's own wait hint, in seconds


@dataclass
class Attempt:
    ok: bool
    response: Optional[httpx.Response] = None
    reason: str = ""
    attempts: int = 0
    waits: list[float] = field(default_factory=list)

    def json(self) -> Any:
        try:
            return self.response.json() if self.response is not None else None
        except ValueError:
            return None


def retry_after(response: httpx.Response) -> Optional[float]:
    """The Retry-After header in seconds (delay-seconds or an HTTP date, RFC 9110 §10.2.3);
    None for anything else — "NaN" and "inf" are no delay."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def default_classify(response: httpx.Response) -> Verdict:
    code = response.status_code
    if 200 <= code < 300:
        return Verdict(DONE)
    if code == 429:
        return Verdict(RETRY, "HTTP 429 rate limited", retry_after(response))
    if code >= 500:
        return Verdict(RETRY, f"HTTP {code} server error", retry_after(response))
    return Verdict(FAIL, f"HTTP {code}: {short_body(response)}")


def error_object(response: httpx.Response) -> dict:
    """The `{"error": {...}}` object Google and Meta answer failures with; {} when the body
    is not JSON or carries none."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _redact_json(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [_redact_json(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _redact_json(v, secrets) for k, v in value.items()}
    return value


def _clean_text(text: str, secrets: tuple[str, ...]) -> str:
    clean = redact(text, secrets) or ""
    if "\\" in clean:  # JSON escapes (`\/`, `\u…`) may hide a secret from a plain search
        try:
            data = json.loads(clean)
        except ValueError:
            return clean
        scrubbed_data = _redact_json(data, secrets)
        if scrubbed_data != data:
            return json.dumps(scrubbed_data)
    return clean


def scrubbed(response: httpx.Response, secrets: tuple[str, ...]) -> httpx.Response:
    """`response`, or — when its body or a header quotes one of `secrets` — a copy with every
    occurrence masked (the body re-encoded, so `.text` and `.json()` are clean)."""
    if not secrets:
        return response
    try:
        text = response.text
    except Exception:  # undecodable: nothing of it is quoted in a reason either
        return response
    clean = _clean_text(text, secrets)
    headers = [(k, redact(v, secrets) or "") for k, v in response.headers.multi_items()]
    if clean == text and headers == list(response.headers.multi_items()):
        return response
    encoding = response.encoding or "utf-8"
    headers = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length",
                                                                "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=clean.encode(encoding, "replace"),
                          request=response.request)


def short_body(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The certificates provider calls are verified against (httpx's default: certifi's bundle,
    or SSL_CERT_FILE / SSL_CERT_DIR), loaded once per process and shared by every client:
    loading them costs ~30 ms, and one segment sync opens a client per destination."""
    return httpx.create_ssl_context()


class ProviderClient:
    """An httpx client for one provider, with its throttle name, policy and counters."""

    def __init__(self, provider: str, base_url: str, *, headers: Optional[dict[str, str]] = None,
                 policy: Optional[RetryPolicy] = None, timeout: float = 30.0,
                 classify: Callable[[httpx.Response], Verdict] = default_classify,
                 secrets: Iterable[Optional[str]] = ()):
        self.provider = provider
        self.secrets = secrets_in({}, secrets)  # the credentials this client sends: masked in answers
        self.policy = policy or RetryPolicy()
        self.classify = classify
        self.requests = 0
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers or {}, timeout=timeout,
                                 verify=tls_context())

    def call(self, method: str, url: str, **kwargs: Any) -> Attempt:
        attempt = Attempt(ok=False)
        for n in range(1, self.policy.max_attempts + 1):
            attempt.attempts = n
            take_slot(self.provider)
            self.requests += 1
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                verdict = Verdict(RETRY, f"{type(exc).__name__} talking to {self.provider}")
                response = None
            else:
                response = scrubbed(response, self.secrets)
                verdict = self.classify(response)
            attempt.response = response
            attempt.reason = redact(verdict.reason, self.secrets) or ""
            if verdict.kind == DONE:
                attempt.ok = True
                return attempt
            if verdict.kind == FAIL or n == self.policy.max_attempts:
                break
            wait = self.policy.delay(n, verdict.delay)
            attempt.waits.append(wait)
            self.policy.sleep(wait)
        if attempt.attempts > 1 or attempt.reason.startswith(("HTTP 429", "HTTP 5")):
            attempt.reason = f"{attempt.reason} (gave up after {attempt.attempts} attempts)"
        return attempt

    def close(self) -> None:
        self.http.close()

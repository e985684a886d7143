"""The settings of Nurture: every `NURTURE_*` environment variable is declared once, as a field of
a settings model — the engine's own here (`Settings`, and `WebSettings` for what only `nurture
web` reads), each integration's beside it in its own module (`SmtpSettings` in
integrations/smtp.py …). docs/settings.md documents every one of them; tests/test_settings.py
checks that the two agree and that nothing reads a `NURTURE_*` name no model declares.

A model is read from an environment mapping — the process environment, or the `env` a Runtime
or IntegrationContext carries (tests pass their own) — with `from_env`, never from os.environ
behind the caller's back. An empty value counts as unset. Secret fields are `SecretStr`: their
repr and str show `**********`, and the value is unwrapped only where it is used.

This module also says where things are (the project directory, its data directory, the
database URL) and how to show a database URL without its password.
"""
from __future__ import annotations

import os
import re
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional
from zoneinfo import available_timezones

from pydantic import (BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_serializer, field_validator,
                      model_validator)

from nurture.email_address import ascii_address
from nurture.redaction import secrets_in

DATABASE_URL_ENV = "NURTURE_DATABASE_URL"
# Lets a deployment or served flow run start on a new, empty database (they refuse by default:
# an empty database is almost always a worker without NURTURE_DATABASE_URL).
CREATE_DATABASE_ENV = "NURTURE_CREATE_DATABASE"

# The built-in secret of development runs (file outbox, demo): public, so links signed with it
# are forgeable. Mail that leaves the machine is never signed with it (nurture.tokens).
DEVELOPMENT_SECRET = "nurture-development-secret-change-me"
DEVELOPMENT_URL = "http://localhost:8000"
DEFAULT_FROM_EMAIL = "hello@example.com"
DEFAULT_MAX_BODY = 1024 * 1024

# Query parameters of a database URL whose values are secrets: password, libpq's sslpassword (the
# client key's passphrase), any *secret*, *token*, api key. Not sslkey, sslcert or passfile: paths.
_SECRET_QUERY_KEY = re.compile(r"passw(or)?d|pwd|secret|token|credential|api_?key", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on"}


class SettingsError(ValueError):
    """A setting holds a value that cannot be used; the message names the setting (and shows the
    value unless the setting is secret)."""


class Declared(NamedTuple):
    """One environment variable as a model declares it (what docs/settings.md documents)."""
    name: str
    field: str
    default: Any
    doc: str
    secret: bool
    model: type


def setting(env: str, default: Any = None, *, doc: str) -> Any:
    """A field read from the environment variable `env` (see EnvSettings)."""
    return Field(default, validation_alias=env, description=doc)


_ENV_NAMES: dict[type, dict[str, str]] = {}


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


class EnvSettings(BaseModel):
    """Base of every settings model. A field declared with `setting("NURTURE_…", default,
    doc=…)` is read from that variable; a field without one is filled in by the model's own
    `from_env` (a value taken from another model, or one derived from others). Models are
    frozen: build a new one to change a value."""
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """field name → environment variable, for the fields this model declares."""
        names = _ENV_NAMES.get(cls)
        if names is None:
            names = _ENV_NAMES[cls] = {name: f.validation_alias for name, f in cls.model_fields.items()
                                       if isinstance(f.validation_alias, str)}
        return names

    @classmethod
    def declared(cls) -> list[Declared]:
        """The environment variables this model declares, in field order."""
        return [Declared(env, name, cls.model_fields[name].get_default(call_default_factory=True),
                         cls.model_fields[name].description or "", _is_secret(cls.model_fields[name].annotation), cls)
                for name, env in cls.env_names().items()]

    @classmethod
    def values_in(cls, env: Mapping[str, str]) -> dict[str, str]:
        """field name → the raw value of its variable in `env`, for the variables set (non-empty)."""
        out = {}
        for name, var in cls.env_names().items():
            value = env.get(var)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_mapping(cls, env: Mapping[str, str], **fields: Any):
        """The model from the variables set in `env` (plus `fields`, by field name)."""
        try:
            return cls.model_validate({**cls.values_in(env), **fields})
        except ValidationError as exc:
            raise SettingsError(cls._explain(exc)) from None

    @classmethod
    def _explain(cls, exc: ValidationError) -> str:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = cls.env_names().get(field, field)
            secret = field in cls.model_fields and _is_secret(cls.model_fields[field].annotation)
            shown = "" if secret else f" (not {error.get('input')!r})"
            problems.append(f"{name}: {error['msg']}{shown}")
        return "; ".join(problems)

    def is_set(self, field: str) -> bool:
        """Was the field given a value (its variable set, non-empty), rather than left at its default?"""
        return field in self.model_fields_set


class Settings(EnvSettings):
    """The engine's own settings (the integrations' live with each integration). Every field
    takes any string, so reading them never fails: a tick must not stop over a typo in a setting
    it does not use (the one number, NURTURE_WEB_MAX_BODY, is WebSettings', read by `nurture web`)."""
    project: Optional[str] = setting(
        "NURTURE_PROJECT", doc="The project directory (journeys/, templates/, …); `--project` sets it.")
    data_dir: Optional[str] = setting(
        "NURTURE_DATA_DIR", doc="Where the SQLite file, the file outbox, handovers, audiences and exports go.")
    database_url: Optional[str] = setting(
        DATABASE_URL_ENV, doc="The database (SQLAlchemy URL): postgresql://USER:PASSWORD@HOST/DB or sqlite:////PATH.")
    create_database: bool = setting(
        CREATE_DATABASE_ENV, False,
        doc="1/true/yes/on lets a deployment or served flow run start on a new, empty database.")
    public_url: str = setting(
        "NURTURE_PUBLIC_URL", DEVELOPMENT_URL,
        doc="The address of `nurture web` that links in messages point to; required by real channels.")
    secret_key: SecretStr = setting(
        "NURTURE_SECRET_KEY", SecretStr(DEVELOPMENT_SECRET),
        doc="Signs unsubscribe, preference and confirmation links; real channels need one (16+ characters).")
    from_email: str = setting("NURTURE_FROM_EMAIL", DEFAULT_FROM_EMAIL,
                              doc="The sender address of e-mail (and the domain of Message-IDs).")
    from_name: Optional[str] = setting("NURTURE_FROM_NAME", doc="The sender name of e-mail.")
    email_backend: str = setting("NURTURE_EMAIL_BACKEND", "file",
                                 doc="The e-mail channel: `email.<backend>` (file, smtp, or a plug-in's).")
    sms_backend: str = setting("NURTURE_SMS_BACKEND", "file",
                               doc="The SMS channel: `sms.<backend>` (file, twilio, or a plug-in's).")
    whatsapp_backend: str = setting("NURTURE_WHATSAPP_BACKEND", "file",
                                    doc="The WhatsApp channel: `whatsapp.<backend>` (file — "
                                        "`.nurture/outbox/whatsapp.jsonl` —, twilio, or a plug-in's).")
    handover_crm: Optional[str] = setting(
        "NURTURE_HANDOVER_CRM", doc="The CRM integration `handover` steps hand MQLs to (unset: a JSONL file).")
    twilio_auth_token: Optional[SecretStr] = setting(
        "NURTURE_TWILIO_AUTH_TOKEN",
        doc="Twilio's auth token: the twilio SMS channel authenticates with it, `nurture web` checks "
            "Twilio's webhook signatures with it.")
    default_country: Optional[str] = setting(
        "NURTURE_DEFAULT_COUNTRY",
        doc="Region (ISO country code) for phone numbers written without +country code: the twilio channel, "
            "a Meta lead's number (when its form has no country), and a number given to `nurture erase` / "
            "`export-contact` / `POST /privacy/erase`.")
    sync_timezone: Optional[str] = setting(
        "NURTURE_SYNC_TIMEZONE", doc="The time zone of the nightly segment-sync schedule.")
    verbose: bool = setting("NURTURE_VERBOSE", False,
                            doc="Any value: Prefect's logs on the console too (run, sync, serve).")
    debug: bool = setting("NURTURE_DEBUG", False, doc="Any value: the CLI shows the traceback of an internal error.")
    no_warm_runner: bool = setting(
        "NURTURE_NO_WARM_RUNNER", False,
        doc="Any value: `nurture run` runs in its own process even when `nurture server start` left a warm runner.")

    @field_validator("verbose", "debug", "no_warm_runner", mode="before")
    @classmethod
    def any_value_turns_on(cls, value: Any) -> bool:
        """Any non-empty value turns it on (`NURTURE_DEBUG=1`, and even `0`)."""
        return bool(value)

    @field_validator("create_database", mode="before")
    @classmethod
    def yes_turns_on(cls, value: Any) -> bool:
        """1, true, yes or on (any case) turn it on; anything else leaves it off."""
        return value if isinstance(value, bool) else str(value).strip().lower() in _TRUE

    @model_validator(mode="before")
    @classmethod
    def sender_written_with_its_name(cls, data: Any) -> Any:
        """`NURTURE_FROM_EMAIL=Shop <shop@example.com>`, the way a From header writes it: the
        address is the sender address (From, Message-IDs, the List-Unsubscribe mailto) and the
        name is the sender name unless NURTURE_FROM_NAME gives one. Used as it stood, it made
        `From: Nurture <Shop <shop@example.com>>` and a Message-ID ending in `example.com>>`.

        The address's domain is kept in its ASCII form (IDNA A-labels: `news@bücher.example` →
        `news@xn--bcher-kva.example`), so that everything built from it — MAIL FROM, the From
        header, Message-IDs, the List-Unsubscribe mailto — is what every mail server takes. (As
        it stood, MAIL FROM could not even be written, and the List-Unsubscribe header went out
        RFC 2047-encoded, which no mailbox provider reads.) A domain IDNA refuses stays as it
        is: `sender_problem` names it, and no e-mail channel sends with it."""
        if not isinstance(data, dict):
            return data
        key = next((k for k in ("from_email", "NURTURE_FROM_EMAIL") if isinstance(data.get(k), str)), None)
        text = data[key].strip() if key else ""
        if "<" in text and text.endswith(">"):
            name, address = parseaddr(text)
            if address.count("@") == 1 and " " not in address:
                data = {**data, key: address}
                if name and not data.get("from_name") and not data.get("NURTURE_FROM_NAME"):
                    data["from_name"] = name
        if key and not data[key].isascii():
            data = {**data, key: ascii_address(data[key])}
        return data

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """The settings in `env` (default: the process environment)."""
        return cls.from_mapping(os.environ if env is None else env)

    # The database URL may hold a password: shown (repr, str, a dump) as describe_database does.
    def __repr_args__(self):
        for name, value in super().__repr_args__():
            yield name, (describe_database(value) if name == "database_url" and value else value)

    @field_serializer("database_url")
    def _shown_database_url(self, value: Optional[str]) -> Optional[str]:
        return describe_database(value) if value else value

    # -- derived values
    def project_dir(self, project: Optional[str | Path] = None) -> Path:
        return Path(project or self.project or Path.cwd()).resolve()

    def data_dir_of(self, root: Path) -> Path:
        """NURTURE_DATA_DIR, or <project>/.nurture."""
        return Path(self.data_dir).resolve() if self.data_dir else root / ".nurture"

    def database_url_of(self, root: Path) -> str:
        """NURTURE_DATABASE_URL, or the embedded SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir_of(root) / 'nurture.db'}"

    @property
    def links_url(self) -> str:
        """The base of recipient links (the public URL without a trailing slash)."""
        return self.public_url.rstrip("/")

    @property
    def signing_secret(self) -> str:
        """The secret links are signed with, unwrapped (the development one when none is set)."""
        return self.secret_key.get_secret_value()

    def sync_zone(self) -> Optional[str]:
        """NURTURE_SYNC_TIMEZONE, checked (None: unset): an IANA time zone name, as Prefect's
        schedules take them. Checked here, where `nurture serve` reads it, not when the settings
        are read: no other command stops over a typo in it."""
        name = self.sync_timezone
        if name and name not in available_timezones():
            raise SettingsError(f"NURTURE_SYNC_TIMEZONE: unknown time zone {name!r} "
                                "(an IANA name such as Europe/Berlin)")
        return name or None

    def sender_problem(self) -> Optional[str]:
        """Why NURTURE_FROM_EMAIL cannot be the sender of e-mail (None when it can): a domain
        that has no IDNA A-label form (a typo, a character no domain may hold) can be written
        neither in MAIL FROM nor in a Message-ID. Checked where e-mail is sent (the runtime
        refuses every e-mail channel with it), not when the settings are read: no other command
        stops over it. (A non-ASCII local part is an address: it needs a server that offers
        SMTPUTF8, which the SMTP channel checks.)"""
        try:
            self.from_email.encode("utf-8")
        except UnicodeEncodeError:  # bytes of another encoding in the environment (surrogate escapes)
            return f"NURTURE_FROM_EMAIL: {self.from_email!r} is not UTF-8 text: write it again in UTF-8"
        domain = self.from_email.rpartition("@")[2]
        if domain.isascii():
            return None
        return (f"NURTURE_FROM_EMAIL: the domain of {self.from_email!r} has no IDNA A-label form (the ASCII form "
                "mail servers take, such as xn--bcher-kva.example for bücher.example): check it for a typo")

    def channel_backend(self, channel: str) -> str:
        """NURTURE_EMAIL_BACKEND / NURTURE_SMS_BACKEND / NURTURE_WHATSAPP_BACKEND: `file` unless set."""
        return {"email": self.email_backend, "sms": self.sms_backend,
                "whatsapp": self.whatsapp_backend}.get(channel, "file")


class WebSettings(EnvSettings):
    """What only `nurture web` reads (the tokens of its webhooks and APIs, its request limit)."""
    ingest_token: Optional[SecretStr] = setting(
        "NURTURE_INGEST_TOKEN", doc="Bearer token of `POST /events` (and of the bounce webhook when "
                                    "NURTURE_WEBHOOK_TOKEN is unset); unset: the endpoint refuses.")
    webhook_token: Optional[SecretStr] = setting(
        "NURTURE_WEBHOOK_TOKEN", doc="Bearer token of `POST /webhooks/bounces`.")
    web_max_body: int = setting("NURTURE_WEB_MAX_BODY", DEFAULT_MAX_BODY,
                                doc="Largest request body `nurture web` accepts, in bytes (larger: 413).")
    privacy_token: Optional[SecretStr] = setting(
        "NURTURE_PRIVACY_TOKEN", doc="Bearer token of `POST /privacy/erase`; unset: the endpoint refuses.")
    hubspot_client_secret: Optional[SecretStr] = setting(
        "NURTURE_HUBSPOT_CLIENT_SECRET",
        doc="The HubSpot app's client secret: `POST /webhooks/hubspot` checks HubSpot's signatures with it.")
    meta_verify_token: Optional[SecretStr] = setting(
        "NURTURE_META_VERIFY_TOKEN",
        doc="The verify token typed into the Meta app's webhook setup: `GET /webhooks/meta/leads` echoes "
            "`hub.challenge` only for it.")
    meta_app_secret: Optional[SecretStr] = setting(
        "NURTURE_META_APP_SECRET",
        doc="The Meta app's secret: `POST /webhooks/meta/leads` checks `X-Hub-Signature-256` with it.")
    instant: bool = setting(
        "NURTURE_INSTANT", True,
        doc="Instant triggers: events posted to `nurture web` start their journeys at once (0/false/off: "
            "at the next tick).")
    write_key: Optional[SecretStr] = setting(
        "NURTURE_WRITE_KEY", doc="Write key of the Segment-compatible API (`POST /v1/track`, `/v1/identify`, "
                                 "`/v1/batch`): HTTP Basic user name, empty password; unset: the endpoints refuse.")

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "WebSettings":
        return cls.from_mapping(os.environ if env is None else env)

    @property
    def bounce_token(self) -> Optional[SecretStr]:
        return self.webhook_token or self.ingest_token


# ------------------------------------------------------------- where things are


def project_root(project: Optional[str | Path] = None, env: Optional[Mapping[str, str]] = None) -> Path:
    return Settings.from_env(env).project_dir(project)


def data_dir(root: Path, env: Optional[Mapping[str, str]] = None) -> Path:
    """NURTURE_DATA_DIR, or <project>/.nurture: the SQLite file, the file outbox, exports."""
    return Settings.from_env(env).data_dir_of(root)


def database_url(root: Path, env: Optional[Mapping[str, str]] = None) -> str:
    """NURTURE_DATABASE_URL, or the embedded SQLite file under <project>/.nurture/."""
    return Settings.from_env(env).database_url_of(root)


def database_url_configured(env: Optional[Mapping[str, str]] = None) -> bool:
    """True when NURTURE_DATABASE_URL is set; False when the project's default SQLite file is used."""
    return Settings.from_env(env).is_set("database_url")


def database_creation_allowed_by_env(env: Optional[Mapping[str, str]] = None) -> bool:
    """NURTURE_CREATE_DATABASE=1 (or true/yes/on)."""
    return Settings.from_env(env).create_database


def _parsed_database_url(url: str) -> Any:
    """SQLAlchemy's URL of `url` as it was meant (None: not one SQLAlchemy reads). An `@` left
    unencoded in the password (`user:pa@ss@host`) ends SQLAlchemy's password at the first `@`
    and puts the rest into the host (`ss@host`), which libpq then fails to resolve: the user
    information runs to the LAST `@` before the host (`database_url_problem` refuses such a
    URL; shown, its password is masked whole)."""
    try:
        from sqlalchemy.engine import make_url
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.host and "@" in parsed.host:
        rest, _, host = parsed.host.rpartition("@")
        if parsed.password is None:
            parsed = parsed.set(username=f"{parsed.username or ''}@{rest}", host=host)
        else:
            parsed = parsed.set(password=f"{parsed.password}@{rest}", host=host)
    return parsed


def describe_database(url: str) -> str:
    """The database URL as it may be shown in logs, artifacts and errors: the password (in the
    authority or as a query parameter) replaced by ***, everything else as configured."""
    parsed = _parsed_database_url(url)
    if parsed is None:  # not a URL SQLAlchemy can read: redact what looks like user:password@ (to the last @)
        return _redact_query(re.sub(r"(://[^:/@?#]*):[^/?#]*@", r"\1:***@", url))
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    if not parsed.query:
        return shown
    pairs = []
    for key, value in parsed.query.items():
        for item in (value if isinstance(value, tuple) else (value,)):
            pairs.append(f"{key}={'***' if _SECRET_QUERY_KEY.search(key) else item}")
    return f"{shown}?{'&'.join(pairs)}"


def database_url_problem(url: str) -> Optional[str]:
    """What makes `url` unusable before any driver sees it, or None: an `@` of the user name
    or password not percent-encoded (the driver would take the rest of the password for the
    host, and say so in its error)."""
    try:
        from sqlalchemy.engine import make_url
        host = make_url(url).host
    except Exception:
        return None
    if host and "@" in host:
        return ("its user name or password holds an '@': write each '@' in them as %40 "
                "(and ':' as %3A, '/' as %2F)")
    return None


def database_secrets(url: str) -> tuple[str, ...]:
    """The secret texts of a database URL — its password (as meant, and as a driver would have
    read it) and secret query parameters — for `redaction.redact` over a driver's error text."""
    parsed = _parsed_database_url(url)
    if parsed is None:
        return ()
    values = [parsed.password, *parsed.password.split("@")] if parsed.password else []
    for key, value in parsed.query.items():
        if _SECRET_QUERY_KEY.search(key):
            values.extend(value if isinstance(value, tuple) else (value,))
    return secrets_in({}, values)


def _redact_query(url: str) -> str:
    base, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        pairs.append(f"{key}{eq}***" if eq and _SECRET_QUERY_KEY.search(key) else pair)
    return f"{base}?{'&'.join(pairs)}"

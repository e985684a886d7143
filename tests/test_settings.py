"""The settings: every `NURTURE_*` variable is declared once by a settings model, documented in
docs/settings.md, and read nowhere else; secrets never show in a printed model; the defaults are
the ones Nurture always had."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from integrations.csv_audience import CsvAudienceSettings
from integrations.file_channels import FileEmailSettings, FileSmsSettings, FileWhatsAppSettings
from integrations.google import GoogleSettings
from integrations.http_retry import RetryPolicy, RetrySettings
from integrations.hubspot import HubSpotSettings
from integrations.linkedin import LinkedInSettings
from integrations.meta import MetaSettings
from integrations.smtp import SmtpSettings
from integrations.tiktok import TikTokSettings
from integrations.twilio import TwilioSettings, TwilioWhatsAppSettings
from nurture.redaction import SECRET_NAME
from nurture.registry import IntegrationContext, IntegrationError, available, channel_for
from nurture.settings import EnvSettings, Settings, SettingsError, WebSettings
from nurture.tokens import link_settings_problem

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "settings.md"

# Every settings model of the engine and the built-in integrations.
MODELS = [Settings, WebSettings, SmtpSettings, TwilioSettings, HubSpotSettings, MetaSettings, GoogleSettings,
          LinkedInSettings, TikTokSettings, CsvAudienceSettings, RetrySettings, FileEmailSettings, FileSmsSettings,
          TwilioWhatsAppSettings, FileWhatsAppSettings]
NAME = re.compile(r"NURTURE_[A-Z0-9_]+")
# String literals that look like a setting but are not one (none today). Each entry: the name
# and why it is not a setting.
NOT_SETTINGS: dict[str, str] = {}


def declared() -> dict[str, object]:
    out = {}
    for model in MODELS:
        for d in model.declared():
            assert d.name not in out, f"{d.name} is declared twice: {out[d.name].model.__name__} and {model.__name__}"
            out[d.name] = d
    return out


def documented() -> dict[str, str]:
    """Setting → its Secret column, from the table of docs/settings.md."""
    rows = re.findall(r"^\| `(NURTURE_[A-Z0-9_]+)` \|.*\| (yes|no) \|\s*$", DOC.read_text(encoding="utf-8"), re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"documented twice: {sorted(n for n in names if names.count(n) > 1)}"
    return dict(rows)


def literals_in(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Every NURTURE_* name in a string literal (docstrings and f-string parts included) of the
    Python files under `folders`: name → the files it appears in."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in NAME.findall(node.value):
                        found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


# ----------------------------------------------------------------- one declaration, one document


def test_every_settings_model_of_nurture_and_its_integrations_is_checked_here():
    available()  # loads every registered integration module

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    ours = {m for m in subclasses(EnvSettings) if m.__module__.partition(".")[0] in ("nurture", "integrations", "flows")}
    assert ours == set(MODELS), f"add to MODELS: {sorted(m.__name__ for m in ours - set(MODELS))}"


def test_docs_settings_lists_exactly_the_declared_settings():
    docs, code = documented(), declared()
    assert sorted(set(code) - set(docs)) == [], "declared in code but missing from docs/settings.md"
    assert sorted(set(docs) - set(code)) == [], "in docs/settings.md but declared by no settings model"


def test_docs_settings_marks_exactly_the_secret_fields_secret():
    docs = documented()
    wrong = {name: (docs[name], d.secret) for name, d in declared().items() if (docs[name] == "yes") != d.secret}
    assert not wrong, f"Secret column disagrees with the model (doc, SecretStr?): {wrong}"


def test_no_code_names_a_setting_that_no_model_declares():
    """Reading a `NURTURE_*` name ad hoc (os.environ.get, env.get, a message that names it) is
    only allowed for a declared setting: a new one is declared in a model and documented."""
    code = declared()
    stray = {name: sorted(files) for name, files in literals_in(("nurture", "flows", "integrations", "bench")).items()
             if name not in code and name not in NOT_SETTINGS}
    assert not stray, f"undeclared NURTURE_* names (declare them in a settings model and docs/settings.md): {stray}"


def test_the_tests_set_only_declared_settings():
    """A typo in a test's env dict would silently test the default."""
    code = declared()
    stray = {name: sorted(files) for name, files in literals_in(("tests",)).items()
             if name not in code and name not in NOT_SETTINGS}
    assert not stray, stray


def test_every_secret_setting_is_masked_by_redaction():
    """nurture.redaction masks the values of settings by name: every secret one must match."""
    unmasked = [name for name, d in declared().items() if d.secret and not SECRET_NAME.search(name)]
    assert not unmasked


# ----------------------------------------------------------------- secrets never print

SENTINELS = {"NURTURE_SECRET_KEY": "sentinel-secret-key-0001", "NURTURE_TWILIO_AUTH_TOKEN": "sentinel-twilio-0002",
             "NURTURE_INGEST_TOKEN": "sentinel-ingest-0003", "NURTURE_WEBHOOK_TOKEN": "sentinel-webhook-0004",
             "NURTURE_PRIVACY_TOKEN": "sentinel-privacy-0005", "NURTURE_HUBSPOT_CLIENT_SECRET": "sentinel-hsapp-0006",
             "NURTURE_SMTP_PASSWORD": "sentinel-smtp-0007", "NURTURE_HUBSPOT_TOKEN": "sentinel-hubspot-0008",
             "NURTURE_META_ACCESS_TOKEN": "sentinel-meta-0009", "NURTURE_GOOGLE_ACCESS_TOKEN": "sentinel-google-0010",
             "NURTURE_LINKEDIN_ACCESS_TOKEN": "sentinel-linkedin-0011", "NURTURE_TIKTOK_ACCESS_TOKEN": "sentinel-tiktok-0013",
             "NURTURE_WRITE_KEY": "sentinel-writekey-0014",
             "NURTURE_META_VERIFY_TOKEN": "sentinel-metaverify-0015", "NURTURE_META_APP_SECRET": "sentinel-metaapp-0016"}
DB_PASSWORD = "sentinel-db-password-0012"
FULL_ENV = {
    **SENTINELS,
    "NURTURE_PROJECT": "/srv/shop", "NURTURE_DATA_DIR": "/srv/shop/data",
    "NURTURE_DATABASE_URL": f"postgresql://nurture:{DB_PASSWORD}@db.internal/nurture",
    "NURTURE_CREATE_DATABASE": "1", "NURTURE_PUBLIC_URL": "https://go.shop.example",
    "NURTURE_FROM_EMAIL": "news@shop.example", "NURTURE_FROM_NAME": "Shop", "NURTURE_EMAIL_BACKEND": "smtp",
    "NURTURE_SMS_BACKEND": "twilio", "NURTURE_WHATSAPP_BACKEND": "twilio",
    "NURTURE_TWILIO_WHATSAPP_FROM": "+4915112345679", "NURTURE_HANDOVER_CRM": "hubspot", "NURTURE_SYNC_TIMEZONE": "Europe/Paris",
    "NURTURE_VERBOSE": "1", "NURTURE_DEBUG": "1", "NURTURE_NO_WARM_RUNNER": "1", "NURTURE_WEB_MAX_BODY": "2048", "NURTURE_INSTANT": "0",
    "NURTURE_SMTP_HOST": "smtp.shop.example", "NURTURE_SMTP_PORT": "2525", "NURTURE_SMTP_SECURITY": "ssl",
    "NURTURE_SMTP_USERNAME": "mailer", "NURTURE_SMTP_TIMEOUT": "10", "NURTURE_SMTP_CA_FILE": "/etc/relay-ca.pem",
    "NURTURE_TWILIO_ACCOUNT_SID": "AC123", "NURTURE_TWILIO_FROM": "+4915112345678",
    "NURTURE_TWILIO_MESSAGING_SERVICE_SID": "MG123", "NURTURE_TWILIO_STATUS_CALLBACK": "https://cb.shop.example/t",
    "NURTURE_TWILIO_BASE_URL": "https://twilio.test", "NURTURE_DEFAULT_COUNTRY": "DE",
    "NURTURE_HUBSPOT_BASE_URL": "https://hubspot.test", "NURTURE_TIKTOK_BASE_URL": "https://tiktok.test", "NURTURE_HUBSPOT_SCORE_PROPERTY": "score",
    "NURTURE_HUBSPOT_TASK_PRIORITY": "low", "NURTURE_META_BASE_URL": "https://meta.test",
    "NURTURE_META_API_VERSION": "v24.0", "NURTURE_GOOGLE_BASE_URL": "https://google.test",
    "NURTURE_LINKEDIN_BASE_URL": "https://linkedin.test", "NURTURE_LINKEDIN_VERSION": "202601",
    "NURTURE_CSV_AUDIENCE_DIR": "/srv/audiences", "NURTURE_SYNC_MAX_ATTEMPTS": "3",
    "NURTURE_SYNC_BACKOFF_SECONDS": "0.5",
}


def every_model_from(env: dict, tmp_path: Path) -> list[EnvSettings]:
    context = IntegrationContext(tmp_path, tmp_path, env)
    return [Settings.from_env(env), WebSettings.from_env(env), RetrySettings.from_env(env)] + \
        [model.from_env(context) for model in MODELS if model not in (Settings, WebSettings, RetrySettings)]


def test_the_full_environment_sets_every_declared_setting():
    assert set(FULL_ENV) == set(declared()), "keep FULL_ENV complete: the secrecy test below uses it"
    assert set(SENTINELS) == {name for name, d in declared().items() if d.secret}


def test_no_secret_appears_when_a_settings_model_is_printed(tmp_path):
    for settings in every_model_from(FULL_ENV, tmp_path):
        shown = " ".join([repr(settings), str(settings), f"{settings}", settings.model_dump_json()])
        leaked = [value for value in [*SENTINELS.values(), DB_PASSWORD] if value in shown]
        assert not leaked, f"{type(settings).__name__} shows {leaked}: {shown}"


def test_secret_fields_are_secret_str_and_unwrap_to_the_configured_value(tmp_path):
    engine, web = Settings.from_env(FULL_ENV), WebSettings.from_env(FULL_ENV)
    assert isinstance(engine.secret_key, SecretStr) and engine.signing_secret == SENTINELS["NURTURE_SECRET_KEY"]
    assert web.ingest_token.get_secret_value() == SENTINELS["NURTURE_INGEST_TOKEN"]
    smtp = SmtpSettings.from_env(IntegrationContext(tmp_path, tmp_path, FULL_ENV))
    assert smtp.password.get_secret_value() == SENTINELS["NURTURE_SMTP_PASSWORD"]
    assert "***" in repr(engine) and "db.internal" in repr(engine)  # the database shown, its password not


def test_a_setting_that_cannot_be_read_is_named_in_the_error():
    with pytest.raises(SettingsError, match="NURTURE_WEB_MAX_BODY") as raised:
        WebSettings.from_env({"NURTURE_WEB_MAX_BODY": "1MB"})
    assert isinstance(raised.value, ValueError)  # what int("1MB") raised before
    with pytest.raises(ValueError, match="NURTURE_SYNC_MAX_ATTEMPTS"):
        RetryPolicy.from_env({"NURTURE_SYNC_MAX_ATTEMPTS": "many"})



@pytest.mark.parametrize("zone", ["Mars/Olympus", "utc", "../../etc/passwd", "posixrules"])
def test_a_bad_sync_timezone_is_named_where_serve_reads_it_and_stops_nothing_else(zone):
    settings = Settings.from_env({"NURTURE_SYNC_TIMEZONE": zone})  # a tick does not stop over it
    with pytest.raises(SettingsError) as raised:
        settings.sync_zone()
    assert str(raised.value) == (f"NURTURE_SYNC_TIMEZONE: unknown time zone {zone!r} "
                                 "(an IANA name such as Europe/Berlin)")
    assert Settings.from_env({"NURTURE_SYNC_TIMEZONE": "America/New_York"}).sync_zone() == "America/New_York"
    assert Settings.from_env({}).sync_zone() is None


# ----------------------------------------------------------------- the defaults, as they always were


def test_engine_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.project_dir() == tmp_path.resolve()
    assert s.data_dir_of(tmp_path) == tmp_path / ".nurture"
    assert s.database_url_of(tmp_path) == f"sqlite:///{tmp_path / '.nurture' / 'nurture.db'}"
    assert s.create_database is False
    assert s.links_url == "http://localhost:8000"
    assert s.signing_secret == "nurture-development-secret-change-me"
    assert s.from_email == "hello@example.com" and s.from_name is None
    assert (s.channel_backend("email"), s.channel_backend("sms")) == ("file", "file")
    assert s.handover_crm is None and s.twilio_auth_token is None and s.sync_timezone is None
    assert s.verbose is False and s.debug is False
    assert link_settings_problem({}) is not None and link_settings_problem(s) == link_settings_problem({})


def test_web_defaults():
    web = WebSettings.from_env({})
    assert (web.ingest_token, web.webhook_token, web.bounce_token, web.web_max_body) == (None, None, None, 1024 * 1024)
    assert (web.privacy_token, web.hubspot_client_secret) == (None, None)
    assert (web.meta_verify_token, web.meta_app_secret) == (None, None)
    only_ingest = WebSettings.from_env({"NURTURE_INGEST_TOKEN": "in-token"})
    assert only_ingest.bounce_token.get_secret_value() == "in-token"  # the bounce webhook falls back to it


def test_an_empty_value_counts_as_unset():
    s = Settings.from_env({"NURTURE_PUBLIC_URL": "", "NURTURE_SECRET_KEY": "", "NURTURE_VERBOSE": ""})
    assert not s.is_set("public_url") and s.links_url == "http://localhost:8000"
    assert not s.is_set("secret_key") and s.verbose is False


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), (" YES ", True), ("on", True), ("0", False),
                                       ("no", False), ("2", False)])
def test_create_database_is_turned_on_by_1_true_yes_or_on(value, on):
    assert Settings.from_env({"NURTURE_CREATE_DATABASE": value}).create_database is on


def test_verbose_and_debug_are_turned_on_by_any_value():
    s = Settings.from_env({"NURTURE_VERBOSE": "0", "NURTURE_DEBUG": "no"})
    assert s.verbose is True and s.debug is True


def test_the_public_url_is_used_without_its_trailing_slash_but_checked_as_given():
    s = Settings.from_env({"NURTURE_PUBLIC_URL": "https://go.shop.example/", "NURTURE_SECRET_KEY": "k" * 20})
    assert s.links_url == "https://go.shop.example" and link_settings_problem(s) is None
    assert "must be an http(s) address" in link_settings_problem({"NURTURE_PUBLIC_URL": "go.shop.example",
                                                                  "NURTURE_SECRET_KEY": "k" * 20})


def test_integration_defaults(tmp_path):
    def ctx(**env):
        return IntegrationContext(tmp_path, tmp_path / "data", env)
    smtp = SmtpSettings.from_env(ctx(NURTURE_SMTP_HOST="relay", NURTURE_FROM_EMAIL="a@b.example"))
    assert (smtp.port, smtp.security, smtp.timeout, smtp.username, smtp.password, smtp.from_name, smtp.ca_file) == \
        (587, "starttls", 30.0, None, None, "", None)
    assert SmtpSettings.from_env(ctx(NURTURE_SMTP_HOST="relay", NURTURE_FROM_EMAIL="a@b.example",
                                     NURTURE_SMTP_SECURITY="SSL")).port == 465
    assert SmtpSettings.from_env(ctx(NURTURE_SMTP_HOST="relay", NURTURE_FROM_EMAIL="a@b.example",
                                     NURTURE_SMTP_SECURITY="none")).port == 25
    twilio = TwilioSettings.from_env(ctx(NURTURE_TWILIO_ACCOUNT_SID="AC1", NURTURE_TWILIO_AUTH_TOKEN="tok",
                                         NURTURE_TWILIO_FROM="+4915112345678"))
    assert (twilio.base_url, twilio.status_callback, twilio.default_region, twilio.messaging_service_sid) == \
        ("https://api.twilio.com", None, None, None)
    with_public = TwilioSettings.from_env(ctx(NURTURE_TWILIO_ACCOUNT_SID="AC1", NURTURE_TWILIO_AUTH_TOKEN="tok",
                                              NURTURE_TWILIO_FROM="+4915112345678",
                                              NURTURE_PUBLIC_URL="https://go.shop.example/"))
    assert with_public.status_callback == "https://go.shop.example/webhooks/twilio"
    hubspot = HubSpotSettings.from_env(ctx(NURTURE_HUBSPOT_TOKEN="pat"))
    assert (hubspot.base_url, hubspot.score_property, hubspot.task_priority) == \
        ("https://api.hubapi.com", "nurture_score", "HIGH")
    assert HubSpotSettings.from_env(ctx(NURTURE_HUBSPOT_TOKEN="pat", NURTURE_HUBSPOT_TASK_PRIORITY="low")).task_priority == "LOW"
    meta = MetaSettings.from_env(ctx(NURTURE_META_ACCESS_TOKEN="t"))
    assert (meta.base_url, meta.api_version) == ("https://graph.facebook.com", "v25.0")
    assert GoogleSettings.from_env(ctx(NURTURE_GOOGLE_ACCESS_TOKEN="t")).base_url == "https://datamanager.googleapis.com"
    linkedin = LinkedInSettings.from_env(ctx(NURTURE_LINKEDIN_ACCESS_TOKEN="t"))
    assert (linkedin.base_url, linkedin.version) == ("https://api.linkedin.com", "202610")
    assert CsvAudienceSettings.from_env(ctx()).folder == tmp_path / "data" / "audiences"
    assert CsvAudienceSettings.from_env(ctx(NURTURE_CSV_AUDIENCE_DIR="/srv/a")).folder == Path("/srv/a")
    email = FileEmailSettings.from_env(ctx())
    assert (email.outbox, email.from_email, email.from_name) == \
        (tmp_path / "data" / "outbox" / "email", "hello@example.com", "Nurture")
    assert FileSmsSettings.from_env(ctx()).path == tmp_path / "data" / "outbox" / "sms.jsonl"
    policy = RetryPolicy.from_env({})
    assert (policy.max_attempts, policy.base_delay) == (5, 1.0)


@pytest.mark.parametrize("model, env, message", [
    (HubSpotSettings, {}, "set NURTURE_HUBSPOT_TOKEN"),
    (MetaSettings, {}, "set NURTURE_META_ACCESS_TOKEN"),
    (GoogleSettings, {}, "set NURTURE_GOOGLE_ACCESS_TOKEN"),
    (LinkedInSettings, {}, "set NURTURE_LINKEDIN_ACCESS_TOKEN"),
    (TwilioSettings, {"NURTURE_TWILIO_ACCOUNT_SID": "AC1"}, "needs NURTURE_TWILIO_ACCOUNT_SID and NURTURE_TWILIO_AUTH_TOKEN"),
    (SmtpSettings, {"NURTURE_SMTP_HOST": "relay"}, "needs NURTURE_FROM_EMAIL"),
    (SmtpSettings, {"NURTURE_SMTP_HOST": "relay", "NURTURE_FROM_EMAIL": "a@b.example", "NURTURE_SMTP_PORT": "x"},
     "must be numbers"),
])
def test_a_missing_or_unusable_credential_is_an_integration_error_naming_the_setting(tmp_path, model, env, message):
    with pytest.raises(IntegrationError, match=message):
        model.from_env(IntegrationContext(tmp_path, tmp_path, env))


def test_the_channel_backend_is_chosen_by_its_setting(tmp_path):
    channel = channel_for("email", IntegrationContext(tmp_path, tmp_path, {}))
    assert channel.name == "email.file" and channel.from_name == "Nurture"
    assert channel_for("sms", IntegrationContext(tmp_path, tmp_path, {"NURTURE_SMS_BACKEND": "file"})).name == "sms.file"

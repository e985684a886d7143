"""`nurture web`: serve the recipient pages and webhooks with uvicorn."""
from __future__ import annotations

import os

import typer

from nurture.cli.invocation import CliError, console, open_project, store
from nurture.settings import Settings

MIN_SECRET_LENGTH = 16


def web(host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
        port: int = typer.Option(8000, "--port", help="Port to listen on"),
        dev: bool = typer.Option(False, "--dev", help="Allow a built-in development secret (never in production)")) -> None:
    """Recipient pages and webhooks: unsubscribe, preferences, double opt-in, events, Twilio, bounces."""
    env = dict(os.environ)
    settings = Settings.from_env(env)
    secret = settings.signing_secret if settings.is_set("secret_key") else ""
    if not secret:
        if not dev:
            raise CliError("NURTURE_SECRET_KEY is not set: links in e-mails are signed with it. Set a long random "
                           "value (e.g. `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`), "
                           "or pass --dev to use an insecure development secret")
        console.print("[yellow]warning:[/yellow] --dev: using the built-in development secret; links are forgeable")
    elif len(secret) < MIN_SECRET_LENGTH:
        raise CliError(f"NURTURE_SECRET_KEY is too short (at least {MIN_SECRET_LENGTH} characters)")
    if not settings.is_set("public_url"):
        if not dev:
            raise CliError("NURTURE_PUBLIC_URL is not set: it is the https address recipients reach this server at "
                           "(links in e-mails are built from it); pass --dev to default to http://HOST:PORT")
        env["NURTURE_PUBLIC_URL"] = f"http://{host}:{port}"
    project = open_project()
    import uvicorn

    from nurture.web import create_app
    app = create_app(store(), project, env)
    console.print(f"serving recipient pages on http://{host}:{port} (public URL {Settings.from_env(env).public_url})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=True)


def register(app: typer.Typer) -> None:
    app.command()(web)

"""Provider clients verify TLS against one certificate store per process: loading certifi's
bundle costs ~30 ms, and a sync opens a client per destination (a tick's Twilio batch one
client each)."""
from __future__ import annotations

import ssl

from integrations.http_retry import ProviderClient, tls_context


def test_every_provider_client_verifies_with_the_one_shared_context():
    clients = [ProviderClient(name, "http://127.0.0.1:9") for name in ("hubspot", "meta")]
    try:
        context = tls_context()
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.cert_store_stats()["x509_ca"] > 0  # a real bundle, not an empty store
        assert all(c.http._transport._pool._ssl_context is context for c in clients)
    finally:
        for c in clients:
            c.http.close()

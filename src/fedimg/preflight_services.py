"""Preflight's checks of the services around AWS, each only when configured: the compose
location's server (``--compose-url``), ResultsDB (``resultsdb.url``) and the message broker
(``--amqp-url``, else the fedora-messaging configuration when ``$FEDORA_MESSAGING_CONF`` names
one). One request each, with a short timeout; URLs are shown without credentials."""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from fedimg.config import Settings
from fedimg.preflight import BLOCKER, NO_REGION, OK, SERVICE_TIMEOUT_S, WARNING, Row


def service_rows(
    settings: Settings, *, compose_url: str | None = None, amqp_url: str | None = None
) -> list[Row]:
    rows = []
    if compose_url:
        rows.append(http_row("compose server", compose_url, BLOCKER, "check --compose-url"))
    if settings.resultsdb.url:
        url = settings.resultsdb.url.rstrip("/") + "/testcases?limit=1"
        # A ResultsDB failure never blocks publishing (report.py): a warning.
        rows.append(http_row("ResultsDB", url, WARNING, "check resultsdb.url"))
    broker = amqp_url or _configured_broker(settings)
    if broker:
        rows.append(broker_row(broker))
    return rows


def safe(url: str) -> str:
    """``url`` without user:password, for output."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def http_row(check: str, url: str, failing: str, fix: str) -> Row:
    """One GET: an answer below 400 is fine; anything else is ``failing``."""
    try:
        with requests.get(url, timeout=SERVICE_TIMEOUT_S, stream=True) as r:
            status = r.status_code
    except requests.RequestException as e:
        return Row(check, NO_REGION, failing, f"{safe(url)}: no answer ({type(e).__name__})", fix)
    if status >= 400:
        return Row(check, NO_REGION, failing, f"{safe(url)} answers HTTP {status}", fix)
    return Row(check, NO_REGION, OK, f"{safe(url)} answers HTTP {status}")


def _configured_broker(settings: Settings) -> str:
    """The AMQP URL of the fedora-messaging configuration, when fedimg publishes and one is set."""
    if not settings.messaging.publish or not os.environ.get("FEDORA_MESSAGING_CONF"):
        return ""
    from fedora_messaging import config

    return str(config.conf["amqp_url"])


def broker_row(url: str) -> Row:
    """Opens and closes one AMQP connection (TLS as fedora-messaging configures it)."""
    import pika

    params = pika.URLParameters(url)
    params.socket_timeout = SERVICE_TIMEOUT_S
    params.blocked_connection_timeout = SERVICE_TIMEOUT_S
    params.connection_attempts = 1
    params.stack_timeout = SERVICE_TIMEOUT_S * 2
    if url.startswith("amqps:"):
        _tls_as_fedora_messaging(params)
    fix = "check the broker URL (--amqp-url or the fedora-messaging configuration)"
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as e:
        # The URL may carry a password: name the error only.
        return Row("broker", NO_REGION, BLOCKER, f"{safe(url)}: {type(e).__name__}", fix)
    return Row("broker", NO_REGION, OK, f"{safe(url)} accepts a connection")


def _tls_as_fedora_messaging(params: Any) -> None:
    """Client certificate and CA from fedora-messaging's ``[tls]``, when it has them."""
    import pika
    from fedora_messaging import config

    tls = config.conf["tls"] if os.environ.get("FEDORA_MESSAGING_CONF") else {}
    context = ssl.create_default_context(cafile=tls.get("ca_cert") or None)
    if tls.get("certfile") and tls.get("keyfile"):
        context.load_cert_chain(tls["certfile"], tls["keyfile"])
        params.credentials = pika.credentials.ExternalCredentials()
    params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)

"""The receivers: each ``[[alerts.webhook]]`` with its URL and key read from the environment
or ``$CREDENTIALS_DIRECTORY`` (like the exchange's credentials), checked once at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from killswitch.config.alerting import AlertsConfig
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import Secret, read_secret

__all__ = ["Receiver", "load_receivers", "secret_parts"]


@dataclass(frozen=True)
class Receiver:
    name: str  # what the queue, the events and /status name it by
    format: str  # "json", "slack" or "pagerduty"
    url: Secret
    routing_key: Secret | None
    events: frozenset[str]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, key: str, env: str) -> None:
    """https://, or http:// to a loopback host; the error never shows the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise ConfigError(key, f"the value of {env} is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(key, f"the value of {env} is not an http(s):// URL")
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(key, f"the URL in {env} must be https:// (http:// only for loopback)")


def load_receivers(
    config: AlertsConfig, environ: Mapping[str, str] | None = None
) -> tuple[Receiver, ...]:
    """Every receiver with its secrets; :class:`ConfigError` naming the key if one is missing."""
    env = os.environ if environ is None else environ
    receivers = []
    for i, hook in enumerate(config.webhooks):
        prefix = f"alerts.webhook[{i}]"
        url = read_secret(hook.url_env, f"{prefix}.url_env", env)
        _check_url(url.reveal(), f"{prefix}.url_env", hook.url_env)
        key = None
        if hook.routing_key_env is not None:
            key = read_secret(hook.routing_key_env, f"{prefix}.routing_key_env", env)
        receivers.append(Receiver(hook.name, hook.format, url, key, frozenset(hook.events)))
    return tuple(receivers)


def secret_parts(receiver: Receiver) -> list[str]:
    """What the log redactor must scrub: the URL, its path and query (the token), the key."""
    url = receiver.url.reveal()
    parts = urlsplit(url)
    values = [url, parts.path + (f"?{parts.query}" if parts.query else "")]
    if parts.query:
        values.append(parts.query)
    if receiver.routing_key is not None:
        values.append(receiver.routing_key.reveal())
    return [v for v in values if len(v) >= 8 and v != "/"]

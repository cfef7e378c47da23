"""``[[alerts.webhook]]`` and ``[metrics]`` (contract §16): typed, checked once at load.

The URL and the PagerDuty routing key are secrets: the config names the
environment variable (or ``$CREDENTIALS_DIRECTORY`` file) that holds them,
never the value.  A receiver is known by its ``name`` (default: its
``url_env``), which is what the alert queue in the state store records.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from killswitch.config.reader import ConfigError, Table, show

__all__ = [
    "DEFAULT_EVENTS",
    "AlertsConfig",
    "MetricsConfig",
    "WebhookConfig",
    "parse_alerts",
    "parse_metrics",
]

DEFAULT_EVENTS = (
    "trigger.fired",
    "kill.completed",
    "kill.stuck",
    "kill.abandoned",
    "exchange.rejected",
    "store.unavailable",
    "store.corrupt",
    "store.write_failed",
    "halt.failed",
    "guard.swept",
    "sentinel.blind",
    "switch.reset",
)
FORMATS = ("json", "slack", "pagerduty")


@dataclass(frozen=True)
class WebhookConfig:
    url_env: str
    name: str
    format: Literal["json", "slack", "pagerduty"] = "json"
    routing_key_env: str | None = None
    events: tuple[str, ...] = DEFAULT_EVENTS


@dataclass(frozen=True)
class AlertsConfig:
    webhooks: tuple[WebhookConfig, ...] = ()
    max_queued: int = 500  # per receiver: a receiver down for a day does not fill the disk
    repeat_after: float = 300.0  # the same event of the same kill alerts again at most this often
    timeout: float = 5.0  # one delivery attempt
    retry_max: float = 300.0  # the backoff between attempts grows to this


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None  # (host, port): GET /metrics over TCP


def _webhook(t: Table) -> WebhookConfig:
    if not t.has("url_env"):
        raise ConfigError(t.key("url_env"), "is required (the variable that holds the URL)")
    url_env = t.string("url_env", "")
    fmt = t.choice("format", "json", FORMATS)
    key_env = t.string("routing_key_env", "") if t.has("routing_key_env") else None
    if fmt == "pagerduty" and key_env is None:
        raise ConfigError(t.key("routing_key_env"), 'is required with format = "pagerduty"')
    if fmt != "pagerduty" and key_env is not None:
        raise ConfigError(t.key("routing_key_env"), 'only applies to format = "pagerduty"')
    events = t.strings("events") if t.has("events") else DEFAULT_EVENTS
    if not events:
        raise ConfigError(t.key("events"), "lists no event (remove the receiver instead)")
    name = t.string("name", url_env)
    t.finish()
    return WebhookConfig(
        url_env=url_env,
        name=name,
        format=fmt,  # type: ignore[arg-type]
        routing_key_env=key_env,
        events=events,
    )


def parse_alerts(root: Table) -> AlertsConfig:
    """``[alerts]`` with its ``[[alerts.webhook]]`` receivers."""
    if not root.has("alerts"):
        return AlertsConfig()
    t = root.table("alerts")
    d = AlertsConfig()
    hooks: list[WebhookConfig] = []
    if t.has("webhook"):
        raw = t.raw("webhook")
        if not isinstance(raw, list) or not all(isinstance(h, dict) for h in raw):
            raise ConfigError(
                t.key("webhook"), f"expected [[alerts.webhook]] tables, got {show(raw)}"
            )
        hooks = [_webhook(Table(h, f"{t.key('webhook')}[{i}]")) for i, h in enumerate(raw)]
    names = [h.name for h in hooks]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(t.key("webhook"), f"two receivers are named {show(name)} (set name)")
    config = AlertsConfig(
        webhooks=tuple(hooks),
        max_queued=t.integer("max_queued", d.max_queued, minimum=10, maximum=1_000_000),
        repeat_after=t.number("repeat_after", d.repeat_after, minimum=0.0),
        timeout=t.number("timeout", d.timeout, positive=True),
        retry_max=t.number("retry_max", d.retry_max, positive=True),
    )
    t.finish()
    return config


def parse_metrics(root: Table) -> MetricsConfig:
    """``[metrics] listen = "HOST:PORT"`` (an IP address; ``[::1]:9464`` for IPv6)."""
    if not root.has("metrics"):
        return MetricsConfig()
    t = root.table("metrics")
    listen = None
    if t.has("listen"):
        text = t.string("listen", "")
        host, sep, port_text = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(host)
            port = int(port_text)
        except ValueError:
            port = -1
        if not sep or not 0 <= port < 65536:  # 0: any free port (metrics.listening says which)
            raise ConfigError(t.key("listen"), f'expected "IP:PORT", got {show(text)}')
        listen = (host, port)
    t.finish()
    return MetricsConfig(listen=listen)

"""The configuration as data: one frozen, typed :class:`Config` and its sections.

Every default lives here, once; :mod:`killswitch.config.load` builds a
:class:`Config` from TOML, checking every value, so the engine never parses a
string.  :func:`reloadable` says what a SIGHUP may change in a running daemon,
:func:`as_dict` shows a config as plain data (``check-config``, ``/status``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from killswitch.config.alerting import AlertsConfig, MetricsConfig

__all__ = [
    "DEFAULT_TERMINAL",
    "CancelAllConfig",
    "ClusterConfig",
    "Config",
    "ConfirmConfig",
    "ControlAccess",
    "ControlConfig",
    "DaemonConfig",
    "ExchangeConfig",
    "FlatConfig",
    "FlattenConfig",
    "GuardConfig",
    "HaltConfig",
    "HeaderNames",
    "HeartbeatTrigger",
    "LogConfig",
    "PnlTrigger",
    "PositionsConfig",
    "Principals",
    "RateLimit",
    "SentinelConfig",
    "SignalTrigger",
    "StateConfig",
    "Target",
    "Triggers",
    "as_dict",
    "reloadable",
]

DEFAULT_TERMINAL = (
    "CANCELLED",
    "EXECUTED",
    "PARTIALLY_EXECUTED",
    "EXPIRED",
    "DISCARDED",
    "FAILED",
    "REJECTED",
)


@dataclass(frozen=True)
class HeaderNames:
    api_key: str = "X-AUTH-APIKEY"
    signature: str = "X-AUTH-SIGNATURE"
    epoch: str = "X-AUTH-EPOCH"


@dataclass(frozen=True)
class ExchangeConfig:
    base_url: str = "https://coinswitch.co"
    signing: Literal["ed25519", "hmac-sha256"] = "ed25519"
    api_key_env: str = "KILLSWITCH_API_KEY"
    api_secret_env: str = "KILLSWITCH_API_SECRET"  # noqa: S105 - the name of a variable, not a secret
    cancel_all_path: str = "/trade/api/v2/futures/cancel_all"
    order_status_path: str = "/trade/api/v2/futures/order"
    open_orders_path: str = "/trade/api/v2/futures/orders/open"
    closed_orders_path: str = "/trade/api/v2/futures/orders/closed"
    time_path: str = "/trade/api/v2/time"
    positions_path: str = "/trade/api/v2/futures/positions"  # contract §12
    place_order_path: str = "/trade/api/v2/futures/order"  # POST; GET is the order status
    clock_sync_interval: float = 60.0
    request_timeout: float = 5.0
    dry_run: bool = False
    headers: HeaderNames = field(default_factory=HeaderNames)


@dataclass(frozen=True)
class RateLimit:
    requests: int
    per_seconds: float
    margin: float = 0.5


@dataclass(frozen=True)
class CancelAllConfig:
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(10, 60.0))
    retry_base: float = 0.2
    retry_max: float = 10.0


@dataclass(frozen=True)
class Target:
    exchange: str
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfirmConfig:
    max_concurrency: int = 64
    first_poll_delay: float = 0.25
    poll_interval: float = 0.25
    max_poll_interval: float = 5.0
    deadline: float = 120.0
    unknown_after: int = 3
    terminal_statuses: frozenset[str] = frozenset(DEFAULT_TERMINAL)
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(20, 60.0))
    use_listings: bool = True  # False: per-id status polls only, no flat proof (bench, old venues)


@dataclass(frozen=True)
class FlatConfig:
    """The flat proof's listings: one sliding window per listing endpoint."""

    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(20, 60.0))
    lookback_days: float = 7.0


@dataclass(frozen=True)
class PositionsConfig:
    """``[positions]`` (contract §12): symbols read after every kill, besides the targets'
    symbols and every symbol the kill's orders were on; the positions endpoint's window."""

    symbols: tuple[str, ...] = ()
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(20, 60.0))


@dataclass(frozen=True)
class FlattenConfig:
    """``[flatten]`` (contract §12): close the positions a kill leaves (opt-in).

    ``max_notional``: USDT per symbol; a larger position is left for a human (0: no limit).
    ``rate_limit``: the place-order endpoint's window."""

    enabled: bool = False
    max_notional: float = 0.0
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(20, 60.0))


@dataclass(frozen=True)
class GuardConfig:
    """While tripped, list the targets every ``interval`` s and sweep what is open."""

    enabled: bool = True
    interval: float = 15.0


@dataclass(frozen=True)
class SignalTrigger:
    enabled: bool = True


@dataclass(frozen=True)
class HeartbeatTrigger:
    enabled: bool = True
    timeout: float = 10.0
    arm_on_start: bool = False


@dataclass(frozen=True)
class PnlTrigger:
    enabled: bool = True
    path: Path = Path("/var/lib/trading/pnl.json")
    threshold: float = -5000.0
    stale_after: float = 30.0


@dataclass(frozen=True)
class Triggers:
    signal: SignalTrigger = field(default_factory=SignalTrigger)
    heartbeat: HeartbeatTrigger = field(default_factory=HeartbeatTrigger)
    pnl: PnlTrigger = field(default_factory=PnlTrigger)


@dataclass(frozen=True)
class Principals:
    """Who holds one right (contract §13): the entries as written, and the uids and
    gids they were resolved to when the config was loaded."""

    entries: tuple[str, ...] = ()  # "strategy", "@risk", "1001"
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ControlAccess:
    """``[control.access]``: each right's principals; root and the daemon's own user hold all."""

    status: Principals = field(default_factory=Principals)
    heartbeat: Principals = field(default_factory=Principals)
    trigger: Principals = field(default_factory=Principals)
    reset: Principals = field(default_factory=Principals)
    reset_approvals: int = 1
    # uid -> user name for every user the entries name or their groups list (for events,
    # resolved at load so the loop never waits on NSS for them).
    names: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = Path("/run/killswitch/control.sock")
    # When the daemon binds the socket itself (not socket-activated); octal, as chmod takes it.
    socket_mode: Literal["0600", "0660", "0666"] = "0600"
    socket_group: int | None = None  # a gid, resolved at load
    approval_window: float = 300.0
    access: ControlAccess | None = None


@dataclass(frozen=True)
class HaltConfig:
    """``[halt]``: the systemd units a kill stops and keeps stopped while tripped (§14)."""

    units: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateConfig:
    path: Path = Path("/var/lib/killswitch/state.db")
    keep_kills: int = 1000  # records of the newest kills kept (§16)


@dataclass(frozen=True)
class LogConfig:
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    buffer_lines: int = 10_000  # held while stdout/stderr's reader is slow; more are dropped


@dataclass(frozen=True)
class DaemonConfig:
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: firm-wide triggers over NATS (contract §11).  ``desk`` None: resolved at
    start from ``$KILLSWITCH_DESK`` (the systemd template sets it to the instance name), else
    the host name."""

    servers: tuple[str, ...]
    firm: str
    credentials_env: str | None = None
    desk: str | None = None
    subject_prefix: str = "killswitch"
    follow: frozenset[str] = frozenset({"firm", "desk"})
    propagate: bool = False
    max_age: float = 30.0
    liveness_interval: float = 0.5  # seconds between this desk's liveness messages (§15)


@dataclass(frozen=True)
class SentinelConfig:
    """``[sentinel]``: this daemon watches another desk's liveness and kills its account when
    the desk falls silent (contract §15).  ``reconnect_grace``: the longest reconnect delay
    the desks are configured with, waited on top of ``timeout`` after the bus comes back."""

    desk: str
    timeout: float = 3.0
    kill_on_leave: bool = False
    reconnect_grace: float = 2.0


@dataclass(frozen=True)
class Config:
    exchange: ExchangeConfig
    cancel_all: CancelAllConfig
    targets: tuple[Target, ...]
    confirm: ConfirmConfig
    triggers: Triggers
    control: ControlConfig
    state: StateConfig
    log: LogConfig
    daemon: DaemonConfig
    flat: FlatConfig = field(default_factory=FlatConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    halt: HaltConfig = field(default_factory=HaltConfig)
    positions: PositionsConfig = field(default_factory=PositionsConfig)
    flatten: FlattenConfig = field(default_factory=FlattenConfig)
    source: Path | None = None
    cluster: ClusterConfig | None = None
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sentinel: SentinelConfig | None = None


def as_dict(value: object) -> Any:
    """The config as plain TOML-like data, for ``check-config`` and ``/status``."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_dict(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [as_dict(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(as_dict(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def reloadable(current: Config, new: Config) -> tuple[Config, list[str]]:
    """What a SIGHUP may change in a running daemon.

    Thresholds, timeouts, targets, confirmation, flat-proof and guard settings
    and logging apply at once.  The exchange connection and credentials, the rate limits (their send
    logs are live), the socket and state paths, the PnL path and turning the PnL
    watcher on need a restart: those keep their running values, and their
    dotted names are returned so the operator is told.
    """
    pnl_on = new.triggers.pnl.enabled and not current.triggers.pnl.enabled
    restart = {
        "exchange": new.exchange != current.exchange,
        "cancel_all": new.cancel_all != current.cancel_all,
        "confirm.rate_limit": new.confirm.rate_limit != current.confirm.rate_limit,
        "flat.rate_limit": new.flat.rate_limit != current.flat.rate_limit,
        "positions.rate_limit": new.positions.rate_limit != current.positions.rate_limit,
        "flatten.rate_limit": new.flatten.rate_limit != current.flatten.rate_limit,
        "control": _socket_of(new.control) != _socket_of(current.control),
        "state": new.state != current.state,
        "triggers.pnl.path": new.triggers.pnl.path != current.triggers.pnl.path,
        "triggers.pnl.enabled": pnl_on,
        "cluster": new.cluster != current.cluster,
        "alerts": new.alerts != current.alerts,
        "metrics": new.metrics != current.metrics,
        "sentinel": new.sentinel != current.sentinel,
    }
    pnl = replace(
        new.triggers.pnl,
        path=current.triggers.pnl.path,
        enabled=new.triggers.pnl.enabled and current.triggers.pnl.enabled,
    )
    applied = replace(
        new,
        exchange=current.exchange,
        cancel_all=current.cancel_all,
        confirm=replace(new.confirm, rate_limit=current.confirm.rate_limit),
        flat=replace(new.flat, rate_limit=current.flat.rate_limit),
        positions=replace(new.positions, rate_limit=current.positions.rate_limit),
        flatten=replace(new.flatten, rate_limit=current.flatten.rate_limit),
        triggers=replace(new.triggers, pnl=pnl),
        # Rights and the approval window apply at once; the socket itself needs a restart.
        control=replace(
            new.control,
            socket=current.control.socket,
            socket_mode=current.control.socket_mode,
            socket_group=current.control.socket_group,
        ),
        state=current.state,
        cluster=current.cluster,
        alerts=current.alerts,
        metrics=current.metrics,
        sentinel=current.sentinel,
    )
    return applied, sorted(key for key, changed in restart.items() if changed)


def _socket_of(control: ControlConfig) -> tuple[Path, str, int | None]:
    return control.socket, control.socket_mode, control.socket_group

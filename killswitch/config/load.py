"""Configuration: TOML parsed once into a frozen, typed object (:mod:`killswitch.config.model`).

Every value is checked here, at load time, so the engine never parses a string.
Errors name the dotted key: ``config error: triggers.pnl.threshold: expected a
number, got 'abc'``.  Building a :class:`Config` has no side effects; secrets are
resolved separately by :mod:`killswitch.exchange.credentials`.
"""

from __future__ import annotations

import ipaddress
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from killswitch.config.access import parse_control, parse_halt
from killswitch.config.alerting import parse_alerts, parse_metrics
from killswitch.config.model import (
    CancelAllConfig,
    ClusterConfig,
    Config,
    ConfirmConfig,
    ControlConfig,
    DaemonConfig,
    ExchangeConfig,
    FlatConfig,
    FlattenConfig,
    GuardConfig,
    HeaderNames,
    HeartbeatTrigger,
    LogConfig,
    PnlTrigger,
    PositionsConfig,
    RateLimit,
    SentinelConfig,
    SignalTrigger,
    StateConfig,
    Target,
    Triggers,
)
from killswitch.config.reader import ConfigError, Table, show

__all__ = [
    "MAX_CLOCK_SYNC_INTERVAL",
    "MAX_LOOKBACK_DAYS",
    "SUBJECT_TOKEN",
    "TARGETS_REQUIRED",
    "load_config",
    "parse_config",
    "pnl_directory_problem",
]

MAX_LOOKBACK_DAYS = 365.0
"""``flat.lookback_days`` at most: each 7-day window costs at least one listing call."""
MAX_CLOCK_SYNC_INTERVAL = 3600.0
"""``exchange.clock_sync_interval`` at most: the sync also keeps the pools warm."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _path(table: Table, name: str, default: Path, base: Path | None) -> Path:
    text = table.string(name, str(default))
    if "\x00" in text:
        raise ConfigError(table.key(name), "must not contain a NUL character")
    try:
        path = Path(text).expanduser()
    except (RuntimeError, KeyError, OSError):  # no such user, or no home directory
        head = text.split("/", 1)[0]
        raise ConfigError(table.key(name), f"cannot expand {show(head)[1:-1]}") from None
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def _url_path(table: Table, name: str, default: str) -> str:
    value = table.string(name, default)
    if not value.startswith("/"):
        raise ConfigError(table.key(name), f"must start with '/', got {show(value)}")
    return value


# --------------------------------------------------------------------------- sections


def _exchange(t: Table) -> ExchangeConfig:
    d = ExchangeConfig()
    base_url = t.string("base_url", d.base_url).rstrip("/")
    try:
        parts = urlsplit(base_url)
        _ = parts.port  # raises ValueError for a port that is not 0-65535
    except ValueError as exc:
        raise ConfigError(t.key("base_url"), f"not a usable URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(t.key("base_url"), f"expected an http(s) URL, got {show(base_url)}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            t.key("base_url"), f"http:// is only allowed for loopback hosts, got {parts.hostname!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(t.key("base_url"), "must not carry credentials, a query or a fragment")
    signing = t.choice("signing", d.signing, ("ed25519", "hmac-sha256"))
    h = t.table("headers")
    headers = HeaderNames(
        api_key=h.string("api_key", d.headers.api_key),
        signature=h.string("signature", d.headers.signature),
        epoch=h.string("epoch", d.headers.epoch),
    )
    h.finish()
    return ExchangeConfig(
        base_url=base_url,
        signing=signing,  # type: ignore[arg-type]  # checked by choice()
        api_key_env=t.string("api_key_env", d.api_key_env),
        api_secret_env=t.string("api_secret_env", d.api_secret_env),
        cancel_all_path=_url_path(t, "cancel_all_path", d.cancel_all_path),
        order_status_path=_url_path(t, "order_status_path", d.order_status_path),
        open_orders_path=_url_path(t, "open_orders_path", d.open_orders_path),
        closed_orders_path=_url_path(t, "closed_orders_path", d.closed_orders_path),
        time_path=_url_path(t, "time_path", d.time_path),
        positions_path=_url_path(t, "positions_path", d.positions_path),
        place_order_path=_url_path(t, "place_order_path", d.place_order_path),
        clock_sync_interval=_at_most(
            t, "clock_sync_interval", d.clock_sync_interval, MAX_CLOCK_SYNC_INTERVAL
        ),
        request_timeout=t.number("request_timeout", d.request_timeout, positive=True),
        dry_run=t.boolean("dry_run", d.dry_run),
        headers=headers,
    )


def _rate_limit(t: Table, default: RateLimit) -> RateLimit:
    limit = RateLimit(
        requests=t.integer("requests", default.requests, maximum=1_000_000),
        per_seconds=t.number("per_seconds", default.per_seconds, positive=True),
        margin=t.number("margin", default.margin, minimum=0.0),
    )
    t.finish()
    return limit


def _cancel_all(t: Table) -> CancelAllConfig:
    d = CancelAllConfig()
    config = CancelAllConfig(
        rate_limit=_rate_limit(t.table("rate_limit"), d.rate_limit),
        retry_base=t.number("retry_base", d.retry_base, positive=True),
        retry_max=t.number("retry_max", d.retry_max, positive=True),
    )
    t.finish()
    return config


TARGETS_REQUIRED: Final = (
    "at least one [[targets]] entry is required (a file without one serves only `killswitch fleet`)"
)


def _targets(root: Table, *, required: bool = True) -> tuple[Target, ...]:
    if not root.has("targets"):
        if not required:
            return ()
        raise ConfigError("targets", TARGETS_REQUIRED)
    raw = root.raw("targets")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("targets", TARGETS_REQUIRED)
    targets: list[Target] = []
    for index, entry in enumerate(raw):
        key = f"targets[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(key, f"expected a table, got {show(entry)}")
        t = Table(entry, key)
        if not t.has("exchange"):
            raise ConfigError(t.key("exchange"), "is required")
        target = Target(exchange=t.string("exchange", ""), symbols=t.strings("symbols"))
        t.finish()
        if target in targets or any(
            o.exchange == target.exchange and not (o.symbols and target.symbols) for o in targets
        ):
            raise ConfigError(key, f"exchange {target.exchange!r} is targeted twice")
        targets.append(target)
    return tuple(targets)


def _confirm(t: Table) -> ConfirmConfig:
    d = ConfirmConfig()
    terminal = t.strings("terminal_statuses") or tuple(d.terminal_statuses)
    poll_interval = t.number("poll_interval", d.poll_interval, positive=True)
    max_poll_interval = t.number(
        "max_poll_interval", max(d.max_poll_interval, poll_interval), positive=True
    )
    if max_poll_interval < poll_interval:
        raise ConfigError(t.key("max_poll_interval"), "must be at least poll_interval")
    config = ConfirmConfig(
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, maximum=4096),
        first_poll_delay=t.number("first_poll_delay", d.first_poll_delay, minimum=0.0),
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        deadline=t.number("deadline", d.deadline, positive=True),
        unknown_after=t.integer("unknown_after", d.unknown_after, maximum=1000),
        terminal_statuses=frozenset(terminal),
        rate_limit=_rate_limit(t.table("rate_limit"), d.rate_limit),
        use_listings=t.boolean("use_listings", d.use_listings),
    )
    t.finish()
    return config


def _at_most(t: Table, name: str, default: float, maximum: float) -> float:
    value = t.number(name, default, positive=True)
    if value > maximum:
        raise ConfigError(t.key(name), f"must be at most {maximum:g}, got {show(value)}")
    return value


def _flat(t: Table) -> FlatConfig:
    d = FlatConfig()
    config = FlatConfig(
        rate_limit=_rate_limit(t.table("rate_limit"), d.rate_limit),
        lookback_days=_at_most(t, "lookback_days", d.lookback_days, MAX_LOOKBACK_DAYS),
    )
    t.finish()
    return config


def _positions(t: Table) -> PositionsConfig:
    d = PositionsConfig()
    symbols = t.strings("symbols")
    for symbol in symbols:
        if not symbol.strip():
            raise ConfigError(t.key("symbols"), "expected symbol names, got an empty string")
    config = PositionsConfig(
        symbols=tuple(dict.fromkeys(symbols)),
        rate_limit=_rate_limit(t.table("rate_limit"), d.rate_limit),
    )
    t.finish()
    return config


def _flatten(t: Table) -> FlattenConfig:
    d = FlattenConfig()
    config = FlattenConfig(
        enabled=t.boolean("enabled", d.enabled),
        max_notional=t.number("max_notional", d.max_notional, minimum=0.0),
        rate_limit=_rate_limit(t.table("rate_limit"), d.rate_limit),
    )
    t.finish()
    return config


def _guard(t: Table) -> GuardConfig:
    d = GuardConfig()
    config = GuardConfig(
        enabled=t.boolean("enabled", d.enabled),
        interval=t.number("interval", d.interval, minimum=1.0),
    )
    t.finish()
    return config


def _triggers(t: Table, base: Path | None) -> Triggers:
    s = t.table("signal")
    signal = SignalTrigger(enabled=s.boolean("enabled", True))
    s.finish()
    h = t.table("heartbeat")
    dh = HeartbeatTrigger()
    heartbeat = HeartbeatTrigger(
        enabled=h.boolean("enabled", dh.enabled),
        timeout=h.number("timeout", dh.timeout, positive=True),
        arm_on_start=h.boolean("arm_on_start", dh.arm_on_start),
    )
    h.finish()
    p = t.table("pnl")
    dp = PnlTrigger()
    pnl = PnlTrigger(
        enabled=p.boolean("enabled", dp.enabled),
        path=_path(p, "path", dp.path, base),
        threshold=p.number("threshold", dp.threshold),
        stale_after=p.number("stale_after", dp.stale_after, minimum=0.0),
    )
    p.finish()
    t.finish()
    return Triggers(signal=signal, heartbeat=heartbeat, pnl=pnl)


SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _token(t: Table, name: str, value: str, *, dotted: bool = False) -> str:
    """A NATS subject token (or, ``dotted``, tokens joined by dots): no wildcards, no spaces."""
    if not all(SUBJECT_TOKEN.fullmatch(part) for part in (value.split(".") if dotted else [value])):
        raise ConfigError(
            t.key(name),
            f"expected letters, digits, '-' or '_'{' (dot-separated)' if dotted else ''}"
            f", got {show(value)}",
        )
    return value


def _cluster(root: Table) -> ClusterConfig | None:
    if not root.has("cluster"):
        return None
    t = root.table("cluster")
    d = ClusterConfig(servers=(), firm="")
    servers = t.strings("servers")
    if not servers:
        raise ConfigError(t.key("servers"), "at least one nats:// or tls:// URL is required")
    for url in servers:
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError as exc:
            raise ConfigError(t.key("servers"), f"not a usable URL: {exc}") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(t.key("servers"), f"expected nats:// or tls:// URLs, got {show(url)}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(
                t.key("servers"), "must not carry credentials (use credentials_env) or a query"
            )
    if len({urlsplit(url).scheme for url in servers}) > 1:
        raise ConfigError(t.key("servers"), "mixes nats:// and tls://: use tls:// for all")
    if not t.has("firm"):
        raise ConfigError(t.key("firm"), "is required")
    firm = _token(t, "firm", t.string("firm", ""))
    desk = _token(t, "desk", t.string("desk", "")) if t.has("desk") else None
    follow = t.strings("follow") if t.has("follow") else tuple(d.follow)
    for entry in follow:
        if entry not in ("firm", "desk"):
            raise ConfigError(t.key("follow"), f'expected "firm" and/or "desk", got {show(entry)}')
    config = ClusterConfig(
        servers=servers,
        firm=firm,
        credentials_env=t.string("credentials_env", "") if t.has("credentials_env") else None,
        desk=desk,
        subject_prefix=_token(
            t, "subject_prefix", t.string("subject_prefix", d.subject_prefix), dotted=True
        ),
        follow=frozenset(follow),
        propagate=t.boolean("propagate", d.propagate),
        max_age=t.number("max_age", d.max_age, positive=True),
        liveness_interval=t.number("liveness_interval", d.liveness_interval, positive=True),
    )
    t.finish()
    return config


def _sentinel(root: Table, cluster: ClusterConfig | None) -> SentinelConfig | None:
    """``[sentinel]`` (contract §15): needs ``[cluster]``; never watches its own desk name."""
    if not root.has("sentinel"):
        return None
    t = root.table("sentinel")
    if cluster is None:
        raise ConfigError("sentinel", "needs a [cluster] table (the bus it watches the desk on)")
    if not t.has("desk"):
        raise ConfigError(t.key("desk"), "is required (the desk this sentinel watches)")
    d = SentinelConfig(desk="")
    desk = _token(t, "desk", t.string("desk", ""))
    if cluster.desk == desk:
        raise ConfigError(
            t.key("desk"),
            f"is this daemon's own cluster.desk {show(desk)}: name the sentinel itself "
            f"differently (for example {show(desk + '-sentinel')})",
        )
    config = SentinelConfig(
        desk=desk,
        timeout=t.number("timeout", d.timeout, positive=True),
        kill_on_leave=t.boolean("kill_on_leave", d.kill_on_leave),
        reconnect_grace=t.number("reconnect_grace", d.reconnect_grace, minimum=0.0),
    )
    t.finish()
    return config


def parse_config(
    data: Mapping[str, Any], *, base: Path | None = None, require_targets: bool = True
) -> Config:
    """Build a :class:`Config` from parsed TOML; relative paths resolve against ``base``.
    ``require_targets=False``: a file without ``[[targets]]`` is accepted (the operator's
    ``ops.toml`` for ``killswitch fleet``); the daemon and the other verbs require them."""
    root = Table(data, "")
    exchange_t = root.table("exchange")
    exchange = _exchange(exchange_t)
    exchange_t.finish()
    cancel_all = _cancel_all(root.table("cancel_all"))
    targets = _targets(root, required=require_targets)
    confirm = _confirm(root.table("confirm"))
    flat = _flat(root.table("flat"))
    guard = _guard(root.table("guard"))
    positions = _positions(root.table("positions"))
    flatten = _flatten(root.table("flatten"))
    triggers = _triggers(root.table("triggers"), base)

    c = root.table("control")
    control = parse_control(c, _path(c, "socket", ControlConfig().socket, base))
    halt = parse_halt(root.table("halt"))
    s = root.table("state")
    state = StateConfig(
        path=_path(s, "path", StateConfig().path, base),
        keep_kills=s.integer("keep_kills", StateConfig().keep_kills, minimum=1, maximum=10**7),
    )
    s.finish()
    lg = root.table("log")
    log = LogConfig(
        format=lg.choice("format", "json", ("json", "console")),  # type: ignore[arg-type]
        level=lg.choice(  # type: ignore[arg-type]
            "level", "info", ("debug", "info", "warning", "error", "critical")
        ),
        buffer_lines=lg.integer("buffer_lines", LogConfig().buffer_lines, maximum=1_000_000),
    )
    lg.finish()
    dm = root.table("daemon")
    daemon = DaemonConfig(shutdown_grace=dm.number("shutdown_grace", 10.0, minimum=0.0))
    dm.finish()
    cluster = _cluster(root)
    alerts, metrics = parse_alerts(root), parse_metrics(root)
    sentinel = _sentinel(root, cluster)
    root.finish()
    if len(str(control.socket).encode()) > 107:
        raise ConfigError("control.socket", "path is longer than a UNIX socket allows (107 bytes)")
    return Config(
        exchange=exchange,
        cancel_all=cancel_all,
        targets=targets,
        confirm=confirm,
        triggers=triggers,
        control=control,
        state=state,
        log=log,
        daemon=daemon,
        flat=flat,
        guard=guard,
        halt=halt,
        positions=positions,
        flatten=flatten,
        cluster=cluster,
        alerts=alerts,
        metrics=metrics,
        sentinel=sentinel,
    )


def pnl_directory_problem(config: Config) -> ConfigError | None:
    """A PnL watch whose directory does not exist or is not a directory, as an error.

    ``load_config`` refuses a path whose directory is not a directory (a file,
    say: a typo no restart fixes).  ``check-config`` also refuses a directory
    that does not exist; ``run`` only warns about that one (``pnl.directory_missing``)
    and polls until it appears, because it legitimately may: the kill switch
    starts before the trading process whose ``StateDirectory=`` creates it.
    """
    pnl = config.triggers.pnl
    if not pnl.enabled:
        return None
    directory = pnl.path.parent
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        return ConfigError("triggers.pnl.path", f"directory {str(directory)!r} does not exist")
    except OSError as exc:
        return ConfigError(
            "triggers.pnl.path", f"directory {str(directory)!r} unusable: {exc.strerror}"
        )
    if not stat.S_ISDIR(mode):
        return ConfigError("triggers.pnl.path", f"{str(directory)!r} is not a directory")
    return None


def load_config(path: Path, *, require_targets: bool = True) -> Config:
    """Read and validate the TOML file at ``path`` (``require_targets``: see parse_config)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", f"{str(path)!r} is not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        # ValueError: an integer over Python's 4300-digit limit; RecursionError: deep nesting.
        raise ConfigError("config", f"{str(path)!r} is not valid TOML: {exc}") from None
    config = parse_config(data, base=path.resolve().parent, require_targets=require_targets)
    problem = pnl_directory_problem(config)
    if problem is not None and "does not exist" not in problem.problem:
        raise problem
    return Config(
        **{f.name: getattr(config, f.name) for f in fields(config) if f.name != "source"},
        source=path.resolve(),
    )

"""Prometheus metrics for ``GET /metrics`` (prometheus-client, own registry)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["Metrics"]

STATES = ("ARMED", "KILLING", "TRIPPED")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.kills = Counter(
            "killswitch_kills", "Kills started, by trigger source", ["source"], registry=r
        )
        self.triggers = Counter(
            "killswitch_triggers",
            "Triggers fired, by source and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.requests = Counter(
            "killswitch_exchange_requests",
            "Exchange requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.orders = Counter(
            "killswitch_orders_final", "Orders by final outcome", ["outcome"], registry=r
        )
        self.ratelimit_waits = Counter(
            "killswitch_ratelimit_waits",
            "Waits imposed by the sliding-window limiter",
            ["endpoint"],
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "killswitch_heartbeat_age_seconds",
            "Seconds since the last heartbeat (-1: none yet)",
            registry=r,
        )
        self.pnl = Gauge("killswitch_pnl", "Last valid PnL reading (NaN: none yet)", registry=r)
        self.pnl_age = Gauge(
            "killswitch_pnl_age_seconds",
            "Seconds since the last valid PnL reading (-1: none)",
            registry=r,
        )
        self.state = Gauge(
            "killswitch_state", "1 for the switch's current state", ["state"], registry=r
        )
        self.store_ok = Gauge(
            "killswitch_store_ok",
            "1 while the state store persists and has no problem to report, else 0",
            registry=r,
        )
        self.store_failures = Counter(
            "killswitch_store_failures",
            "State store failures: unavailable or corrupt at open, writes lost",
            ["kind"],
            registry=r,
        )
        self.ratelimit_available = Gauge(
            "killswitch_ratelimit_available",
            "Requests that could be sent now",
            ["endpoint"],
            registry=r,
        )

    def watch(
        self,
        *,
        heartbeat_age: Callable[[], float | None],
        pnl: Callable[[], float | None],
        pnl_age: Callable[[], float | None],
        state: Callable[[], str],
        available: dict[str, Callable[[], int]],
    ) -> None:
        """Sample live values at scrape time."""
        self.heartbeat_age.set_function(lambda: _or(heartbeat_age(), -1.0))
        self.pnl.set_function(lambda: _or(pnl(), float("nan")))
        self.pnl_age.set_function(lambda: _or(pnl_age(), -1.0))
        for name in STATES:
            self.state.labels(name).set_function(_is_state(state, name))
        for endpoint, fn in available.items():
            self.ratelimit_available.labels(endpoint).set_function(_as_float(fn))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _is_state(state: Callable[[], str], name: str) -> Callable[[], float]:
    return lambda: 1.0 if state() == name else 0.0


def _as_float(fn: Callable[[], int]) -> Callable[[], float]:
    return lambda: float(fn())

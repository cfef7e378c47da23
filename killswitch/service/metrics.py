"""Prometheus metrics for ``GET /metrics`` (prometheus-client, own registry).

Every request the exchange client sent is read at scrape time from the
client's own counts (``killswitch_exchange_requests_sent``: all four endpoints
and the server-time call, by outcome).  The process collector adds ``process_*`` (CPU, memory,
open files) wherever ``/proc/stat`` is readable; the systemd units'
``ProcSubset=pid`` hides it, and then those series are absent (README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from killswitch.logsink import SinkHealth

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
        self.leftovers = Counter(
            "killswitch_leftover_orders",
            "Open orders a flat-proof listing found that no cancel_all answer had named",
            registry=r,
        )
        self.kill_flat = Gauge(
            "killswitch_last_kill_flat",
            "1 when the last kill was proven flat (every target listed empty), else 0",
            registry=r,
        )
        self.kill_stuck = Gauge(
            "killswitch_kill_stuck",
            "1 while a running kill's cancel_all is rejected by the venue (status: stuck)",
            registry=r,
        )
        self.guard_swept = Counter(
            "killswitch_guard_swept_orders",
            "Open orders the tripped guard found and swept",
            registry=r,
        )
        self.self_test_ok = Gauge(
            "killswitch_exchange_self_test_ok",
            "1 when the start-up self-test (key, signature, clock) passed, 0 when it failed,"
            " -1 before it ran",
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

        self.kill_seconds = Histogram(
            "killswitch_kill_duration_seconds",
            "From the trigger to kill.completed (every order resolved)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.flat_seconds = Histogram(
            "killswitch_kill_flat_seconds",
            "From the trigger to kill.flat (every target listed empty)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.clock_offset = Gauge(
            "killswitch_exchange_clock_offset_seconds",
            "The exchange's clock minus ours, from the last server-time call (NaN: none yet)",
            registry=r,
        )
        ProcessCollector(registry=r)

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

    def watch_requests(self, sent: Callable[[], dict[str, dict[str, int]]]) -> None:
        """Every request the exchange client sent, by endpoint (all four, and the server-time
        call) and outcome, read from the client at scrape time."""
        self.registry.register(_RequestsSent(sent))

    def watch_log(self, health: Callable[[], Mapping[str, SinkHealth]]) -> None:
        """Lines stdout/stderr could not take (a slow or gone reader), read at scrape time."""
        self.registry.register(_LogDropped(health))

    def render(self) -> bytes:
        return generate_latest(self.registry)


DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _is_state(state: Callable[[], str], name: str) -> Callable[[], float]:
    return lambda: 1.0 if state() == name else 0.0


def _as_float(fn: Callable[[], int]) -> Callable[[], float]:
    return lambda: float(fn())


class _RequestsSent(Collector):
    def __init__(self, sent: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._sent = sent

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "killswitch_exchange_requests_sent",
            "Requests that left the daemon, by endpoint and outcome (ok or the error kind)",
            labels=["endpoint", "outcome"],
        )
        for endpoint, outcomes in sorted(self._sent().items()):
            for outcome, count in sorted(outcomes.items()):
                family.add_metric([endpoint, outcome], count)
        yield family


class _LogDropped(Collector):
    def __init__(self, health: Callable[[], Mapping[str, SinkHealth]]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "killswitch_log_dropped_lines",
            "Log lines lost because stdout or stderr was full or closed (best-effort log)",
            labels=["stream"],
        )
        pending = GaugeMetricFamily(
            "killswitch_log_pending_lines",
            "Log lines queued for stdout or stderr and not yet written",
            labels=["stream"],
        )
        blocked = GaugeMetricFamily(
            "killswitch_log_blocked_seconds",
            "How long the write to stdout or stderr in progress has waited (0: none waits)",
            labels=["stream"],
        )
        for name, health in sorted(self._health().items()):
            dropped.add_metric([name], health.dropped)
            pending.add_metric([name], health.pending)
            blocked.add_metric([name], health.blocked_s or 0.0)
        yield dropped
        yield pending
        yield blocked

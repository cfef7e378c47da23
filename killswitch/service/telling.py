"""Telling people (contract §16): the alerts, the kill's journal and the TCP metrics listener.

Built from the config with the daemon's other parts, opened once the state
store is (both keep tables there), run beside the kill: the alerts' senders
are a task of their own, the journal and the alerts read the event stream
through log listeners (:func:`killswitch.log.add_listener`), and the
listener on ``[metrics] listen`` serves only ``GET /metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from structlog.typing import FilteringBoundLogger

from killswitch.alerts import Alerter, Receiver, load_receivers
from killswitch.alerts.receivers import secret_parts
from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.log import add_listener, redactor
from killswitch.record.journal import Journal
from killswitch.service.metrics_http import MetricsListener
from killswitch.store.retention import prune_kills
from killswitch.store.state import StateStore

__all__ = ["Telling"]


class Telling:
    def __init__(
        self,
        config: Config,
        receivers: tuple[Receiver, ...] | None,
        store: StateStore,
        clock: Clock,
        log: FilteringBoundLogger,
        *,
        registry: CollectorRegistry,
        current_kill: Callable[[], str | None],
        render: Callable[[], bytes],
        last_kill: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        receivers = load_receivers(config.alerts) if receivers is None else receivers
        for receiver in receivers:
            redactor.register(secret_parts(receiver))  # the URL, its token, the key
        self._store = store
        self.alerter = Alerter(
            config.alerts,
            receivers,
            store,
            clock,
            log,
            registry=registry,
            current_kill=current_kill,
        )
        self.journal = Journal(store, current_kill)
        self._listeners: list[Callable[[], None]] = []
        self._last_kill = last_kill
        Gauge(
            "killswitch_positions_open",
            "Positions the last kill left open while the switch is not re-armed"
            " (-1: they could not be read; 0 once reset)",
            registry=registry,
        ).set_function(self._positions_open)
        listen = config.metrics.listen
        self.metrics_listener = None if listen is None else MetricsListener(*listen, render, log)

    def listen(self) -> None:
        """Read the event stream from now on (before the store opens: its problems alert)."""
        if not self._listeners:
            self._listeners.append(add_listener(self.journal.listen))
            if self.alerter.enabled:
                self._listeners.append(add_listener(self.alerter.listen))

    def open(self, last_kill: str | None) -> None:
        """The store is open: the alert queue and the journal restore and create their tables."""
        self.alerter.open(last_kill)
        self.journal.open(last_kill)

    def kill_recorded(self, keep_kills: int) -> None:
        """A kill ended: the store keeps the records of the newest ``keep_kills`` (queued)."""
        prune_kills(self._store, keep_kills)

    def _positions_open(self) -> float:
        last = self._last_kill()
        if last is None:
            return 0.0
        if last.get("exposure_read") is False:
            return -1.0
        return float(last.get("positions_open") or 0)

    def status(self) -> dict[str, Any]:
        """``GET /status`` additions: ``alerts`` by receiver name (never a URL)."""
        return {"alerts": self.alerter.status()} if self.alerter.enabled else {}

    def close(self) -> None:
        """Stop reading the event stream (the daemon is stopping)."""
        for remove in self._listeners:
            remove()
        self._listeners = []

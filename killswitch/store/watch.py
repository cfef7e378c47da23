"""The daemon's side of a failing state store (contract §9): say so, and try again.

``store.unavailable`` / ``store.corrupt`` (critical, with the path and the
problem) when the store as found cannot be used; ``store.write_failed``
(critical) when writes are lost later, at most once every ``log_every``
seconds, the next one carrying ``suppressed``; ``store.recovered`` once it
works again.  Metrics ``killswitch_store_ok`` and ``killswitch_store_failures``
follow, and the daemon refreshes systemd's ``STATUS=``.  While no database
could be opened, :meth:`StoreWatch.run` tries again every ``retry_every``
seconds; when it succeeds, the switch's current latch is written to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from killswitch.clock import Clock
from killswitch.log import get_logger
from killswitch.store.state import StateStore, StoreProblem

__all__ = ["StoreMetrics", "StoreWatch"]


class StoreMetrics(Protocol):
    """The store's two metrics (the service's :class:`~killswitch.service.metrics.Metrics`
    has them): ``store/`` imports nothing from ``service/``."""

    store_ok: Gauge
    store_failures: Counter


class StoreWatch:
    def __init__(
        self,
        store: StateStore,
        prom: StoreMetrics,
        clock: Clock,
        *,
        on_change: Callable[[], None] = lambda: None,
        retry_every: float = 10.0,
        log_every: float = 10.0,
    ) -> None:
        self.store = store
        self.prom = prom
        self.clock = clock
        self.on_change = on_change
        self.retry_every = retry_every
        self.log_every = log_every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged_at: float | None = None
        self._suppressed = 0
        self._was_ok = True
        self._log = get_logger()
        store.writer.on_error = self._from_writer(self._write_failed)
        store.writer.on_change = self._from_writer(self._changed)
        prom.store_ok.set_function(lambda: 1.0 if store.health()["ok"] else 0.0)

    def _from_writer(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` runs on the loop (the store calls from its writer thread)."""

        def call(*args: Any) -> None:
            loop = self._loop
            if loop is None:
                fn(*args)
                return
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed: last resort, from here
                fn(*args)

        return call

    def open(self, loop: asyncio.AbstractEventLoop) -> StoreProblem | None:
        """Open the store; a problem is logged here and returned (the caller fails closed)."""
        self._loop = loop
        problem = self.store.open()
        if problem is not None:
            self._problem(problem)
            self._was_ok = False
        return problem

    def _problem(self, problem: StoreProblem) -> None:
        self.prom.store_failures.labels(problem.kind).inc()
        self._log.critical(
            f"store.{problem.kind}",
            path=problem.path,
            problem=problem.problem,
            moved_to=problem.moved_to,
            persisting=self.store.persisting,
            note="the switch stays TRIPPED until an operator resets it",
        )

    def _write_failed(self, error: BaseException, lost: int) -> None:
        self.prom.store_failures.labels("write").inc(lost)
        now = self.clock.monotonic()
        if self._logged_at is not None and now - self._logged_at < self.log_every:
            self._suppressed += 1
            return
        self._logged_at = now
        fields: dict[str, Any] = {"suppressed": self._suppressed} if self._suppressed else {}
        self._suppressed = 0
        self._log.critical(
            "store.write_failed",
            path=str(self.store.path),
            error=type(error).__name__,
            detail=str(error),
            writes_lost=lost,
            **fields,
        )

    def _changed(self) -> None:
        health = self.store.health()
        if health["ok"] and not self._was_ok:
            self._log.warning("store.recovered", path=str(self.store.path))
        self._was_ok = bool(health["ok"])
        self.on_change()

    async def run(self, latch: Callable[[], tuple[bool, str | None]]) -> None:
        """While no database is open, try again every ``retry_every`` s; then write ``latch()``."""
        while True:
            await self.clock.sleep(self.retry_every)
            if self.store.persisting:
                continue
            before = self.store.problem
            if await asyncio.wrap_future(self.store.retry()):
                tripped, kill_id = latch()
                self.store.set_latch(tripped, kill_id)
            elif self.store.problem is not None and self.store.problem != before:
                self._problem(self.store.problem)

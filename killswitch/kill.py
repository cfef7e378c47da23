"""One kill: ``cancel_all`` on every target, then confirm every returned order.

The sweeps (one ``cancel_all`` per target, or per symbol of a scoped target)
go out concurrently; each is retried with capped exponential backoff and
jitter until the exchange acknowledges it, every attempt paid through the
sliding-window limiter inside the client.  Order ids are handed to the
confirmer as each acknowledgement arrives, so polling starts while other
sweeps are still in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from killswitch.clock import Clock
from killswitch.config import Config, Target
from killswitch.confirm import Confirmer, ConfirmResult, RateGate, StatusSource
from killswitch.errors import ExchangeError
from killswitch.log import get_logger
from killswitch.store import StateStore

__all__ = ["CancelSource", "KillPlan", "KillRunner", "plan_sweeps"]


class CancelSource(StatusSource, Protocol):
    async def cancel_all(self, exchange: str, symbol: str | None = None) -> list[str]: ...


def plan_sweeps(targets: tuple[Target, ...]) -> list[tuple[str, str | None]]:
    """One unscoped sweep per target without symbols, else one per symbol."""
    sweeps: list[tuple[str, str | None]] = []
    for target in targets:
        if target.symbols:
            sweeps.extend((target.exchange, s) for s in target.symbols)
        else:
            sweeps.append((target.exchange, None))
    return sweeps


@dataclass
class KillPlan:
    kill_id: str
    source: str
    reason: str
    sweeps: list[tuple[str, str | None]]
    known_orders: dict[str, str] = field(default_factory=dict)  # resumed: id -> last status
    first_polled: dict[str, float] = field(default_factory=dict)  # resumed: id -> wall time
    resumed: bool = False
    announce: Callable[[], None] | None = None  # events and records deferred past the first send


class KillRunner:
    """Executes kills; owns no state between them beyond what it reports."""

    def __init__(
        self,
        config: Config,
        exchange: CancelSource,
        store: StateStore,
        clock: Clock,
        *,
        on_outcome: Callable[[str, str], None] | None = None,
        status_gate: RateGate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.status_gate = status_gate
        self.config = config
        self.exchange = exchange
        self.store = store
        self.clock = clock
        self.on_outcome = on_outcome
        self.confirmer: Confirmer | None = None
        self._rng = rng or random.Random()
        self._log = get_logger()

    def _backoff(self, attempt: int) -> float:
        cap = min(
            self.config.cancel_all.retry_max, self.config.cancel_all.retry_base * 2 ** (attempt - 1)
        )
        return self._rng.uniform(cap / 2, cap)  # "equal jitter": never 0, never in lockstep

    async def _sweep(
        self, plan: KillPlan, exchange: str, symbol: str | None, confirmer: Confirmer
    ) -> None:
        structlog.contextvars.bind_contextvars(exchange=exchange, symbol=symbol)
        attempt = 0
        while True:
            attempt += 1
            try:
                order_ids = await self.exchange.cancel_all(exchange, symbol)
            except ExchangeError as exc:
                delay = self._backoff(attempt)
                self._log.error(
                    "cancel_all.failed",
                    attempt=attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    detail=exc.detail,
                    retry_in=round(delay, 3),
                )
                if self.on_outcome is not None:
                    self.on_outcome("cancel_all", exc.kind)
                await self.clock.sleep(delay)
                continue
            if self.on_outcome is not None:
                self.on_outcome("cancel_all", "accepted")
            confirmer.add(order_ids)
            self.store.sweep_acked(plan.kill_id, exchange, symbol, order_ids, self.clock.time())
            self._log.info("cancel_all.accepted", order_count=len(order_ids), attempt=attempt)
            return

    async def run(self, plan: KillPlan) -> dict[str, Any]:
        """Run ``plan`` to ``kill.completed``; returns the summary that was logged."""
        started = self.clock.monotonic()
        structlog.contextvars.bind_contextvars(kill_id=plan.kill_id)
        try:
            return await self._run(plan, started)
        finally:
            structlog.contextvars.unbind_contextvars("kill_id")

    async def _run(self, plan: KillPlan, started: float) -> dict[str, Any]:
        kill_id = plan.kill_id

        def persist(order_id: str, status: str) -> None:
            self.store.order_status(kill_id, order_id, status, self.clock.time())

        confirmer = Confirmer(
            self.exchange,
            self.config.confirm,
            self.clock,
            log=self._log,
            on_status=persist,
            gate=self.status_gate,
        )
        self.confirmer = confirmer
        for order_id, status in plan.known_orders.items():
            # A resumed order keeps its deadline from its first poll before the restart.
            confirmer.add_known(order_id, status, first_polled_at=plan.first_polled.get(order_id))
        async with asyncio.TaskGroup() as tg:
            sweeps = [
                tg.create_task(self._sweep(plan, exchange, symbol, confirmer))
                for exchange, symbol in plan.sweeps
            ]
            # Let every sweep put its first request on the wire before anything else
            # runs: a sweep's first step queues aiohttp's body-writing task, the second
            # yield lets that task send.  (Only latency depends on this; if a step
            # yields sooner, the bookkeeping below simply runs a little earlier.)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if plan.announce is not None:
                plan.announce()
            if plan.resumed:
                self._log.info(
                    "kill.resumed",
                    pending_orders=sum(
                        1
                        for s in plan.known_orders.values()
                        if s not in self.config.confirm.terminal_statuses
                    ),
                    pending_sweeps=len(plan.sweeps),
                    source=plan.source,
                )
            else:
                self._log.info(
                    "kill.started", source=plan.source, reason=plan.reason, sweeps=len(sweeps)
                )
            confirming = tg.create_task(confirmer.run())
            for sweep in sweeps:
                await sweep
            confirmer.close()
            result = await confirming
        summary = self._summary(plan, result, started)
        self._log.info("kill.completed", **summary)
        self.store.complete_kill(kill_id, self.clock.time(), summary)
        return summary

    def _summary(self, plan: KillPlan, result: ConfirmResult, started: float) -> dict[str, Any]:
        return {
            "source": plan.source,
            "reason": plan.reason,
            "orders": len(result.statuses),
            "cancelled": result.cancelled,
            "filled": result.filled,
            "other": result.other,
            "unknown": result.unknown,
            "unconfirmed": result.unconfirmed,
            "polls": result.polls,
            "duration_ms": round((self.clock.monotonic() - started) * 1000, 1),
            "resumed": plan.resumed,
        }

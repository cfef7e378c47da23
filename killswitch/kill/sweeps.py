"""The sweeps of a kill: ``cancel_all`` until the exchange acknowledges it.

The sweeps (one ``cancel_all`` per target, or per symbol of a scoped target)
go out concurrently; each is retried until the exchange acknowledges it, every
attempt paid through the sliding-window limiter inside the client.  How a
failed attempt is retried depends on what the failure says (contract §2):

- 429: at once (the client has already deferred the endpoint's limiter);
- 5xx, timeout, lost connection, unreadable 200: the outcome is unknown (the
  cancel may have happened): capped exponential backoff with jitter, and the
  target is marked *lost*, so the flat proof also looks for orders the lost
  answer would have named;
- 401 or another 4xx: ``exchange.rejected`` and a slow, growing cadence
  (:data:`~killswitch.kill.plan.REJECT_FIRST` s doubling to
  :data:`~killswitch.kill.plan.REJECT_MAX` s), forever; the kill is *stuck*
  (``status`` says why) until it succeeds or an operator ends it.

Order ids are handed to the confirmer as each acknowledgement arrives.

The kill is announced (:meth:`Sweeper._announce`: ``trigger.fired``,
``kill.started``, the durable record) once its first requests have left, at
the first answer or after :data:`~killswitch.kill.plan.ANNOUNCE_WITHIN`,
whichever comes first, and always before anything about it is written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.errors import ExchangeError, RateLimited
from killswitch.kill.confirm import Confirmer
from killswitch.kill.plan import (
    REJECT_FIRST,
    REJECT_MAX,
    CancelSource,
    KillPlan,
    SweepKey,
    Unit,
    error_message,
    outcome_unknown,
)
from killswitch.store.state import StateStore

__all__ = ["Sweeper"]


class Sweeper:
    """The sweeps of :class:`~killswitch.kill.runner.KillRunner` (which sets these)."""

    config: Config
    exchange: CancelSource
    store: StateStore
    clock: Clock
    on_outcome: Callable[[str, str], None] | None
    stuck: dict[SweepKey, dict[str, Any]]
    _rng: random.Random
    _log: FilteringBoundLogger
    _answered: set[str]  # ids some cancel_all answer named
    _announced: asyncio.Event  # set by _announce, once per run

    def _announce(self, plan: KillPlan) -> None:
        """Once per run: the plan's announcement (its events and durable record, which
        the kill's own records follow in the store's queue), then ``kill.started``."""
        if self._announced.is_set():
            return
        self._announced.set()
        if plan.announce is not None:
            plan.announce()
        if plan.started_at is None:
            plan.started_at = self.clock.time()
        if plan.resumed:
            terminal = self.config.confirm.terminal_statuses
            self._log.info(
                "kill.resumed",
                pending_orders=sum(1 for s in plan.known_orders.values() if s not in terminal),
                pending_sweeps=len(plan.sweeps),
                source=plan.source,
                by_proof=plan.by_proof,
            )
        else:
            self._log.info(
                "kill.started", source=plan.source, reason=plan.reason, sweeps=len(plan.sweeps)
            )

    def stuck_info(self) -> dict[str, Any] | None:
        """Why the running kill cannot finish (a ``cancel_all`` the venue keeps rejecting)."""
        if not self.stuck:
            return None
        now = self.clock.monotonic()
        sweeps = [
            {
                "exchange": exchange,
                "symbol": symbol,
                "why": info["why"],
                "http_status": info["http_status"],
                "since": info["since"],
                "attempts": info["attempts"],
                "next_retry_in": round(max(0.0, info["next_retry_at"] - now), 3),
            }
            for (exchange, symbol), info in sorted(self.stuck.items(), key=lambda kv: str(kv[0]))
        ]
        first = sweeps[0]
        return {
            "why": first["why"],
            "http_status": first["http_status"],
            "since": min(s["since"] for s in sweeps),
            "next_retry_in": min(s["next_retry_in"] for s in sweeps),
            "sweeps": sweeps,
        }

    # ------------------------------------------------------------------ sweeps

    def _backoff(self, attempt: int) -> float:
        cap = min(
            self.config.cancel_all.retry_max, self.config.cancel_all.retry_base * 2 ** (attempt - 1)
        )
        return self._rng.uniform(cap / 2, cap)  # "equal jitter": never 0, never in lockstep

    async def _sweep(
        self, plan: KillPlan, unit: Unit, exchange: str, symbol: str | None, confirmer: Confirmer
    ) -> list[str]:
        """``cancel_all`` until acknowledged; the ids it named."""
        structlog.contextvars.bind_contextvars(exchange=exchange, symbol=symbol)
        key = (exchange, symbol)
        attempt = rejected = 0
        while True:
            attempt += 1
            try:
                order_ids = await self.exchange.cancel_all(exchange, symbol)
            except ExchangeError as exc:
                self._announce(plan)
                delay, rejected = self._failed(plan, unit, key, exc, attempt, rejected)
                await self.clock.sleep(delay)
                continue
            self._announce(plan)
            if self.stuck.pop(key, None) is not None:
                self._log.warning("kill.unstuck", attempts=attempt)
            if self.on_outcome is not None:
                self.on_outcome("cancel_all", "accepted")
            confirmer.add(order_ids)
            unit.named.update(dict.fromkeys(order_ids))
            self._answered.update(order_ids)
            self.store.sweep_acked(plan.kill_id, exchange, symbol, order_ids, self.clock.time())
            self._log.info("cancel_all.accepted", order_count=len(order_ids), attempt=attempt)
            return order_ids

    def _failed(
        self,
        plan: KillPlan,
        unit: Unit,
        key: SweepKey,
        exc: ExchangeError,
        attempt: int,
        rejected: int,
    ) -> tuple[float, int]:
        """Log a failed ``cancel_all``; the delay before the next attempt, and how many
        attempts in a row the venue rejected."""
        if self.on_outcome is not None:
            self.on_outcome("cancel_all", exc.kind)
        message = error_message(exc)
        unknown = outcome_unknown(exc)
        if isinstance(exc, RateLimited):
            delay = 0.0  # the client deferred the limiter: the next attempt waits there
        elif unknown:
            delay = self._backoff(attempt)
            if not unit.lost:
                unit.lost = True
                self.store.sweep_lost(plan.kill_id, key[0], key[1])
        else:
            rejected += 1
            delay = min(REJECT_FIRST * 2 ** (rejected - 1), REJECT_MAX)
            self._log.error(
                "exchange.rejected",
                endpoint="cancel_all",
                http_status=exc.status,
                message=message,
                error=exc.kind,
                attempt=attempt,
                retry_in=round(delay, 3),
            )
            info = self.stuck.setdefault(key, {"since": self.clock.time()})
            info.update(
                why=message or str(exc),
                http_status=exc.status,
                attempts=rejected,
                next_retry_at=self.clock.monotonic() + delay,
            )
        self._log.error(
            "cancel_all.failed",
            attempt=attempt,
            error=exc.kind,
            http_status=exc.status,
            detail=exc.detail,
            message=message,
            outcome_unknown=unknown,
            retry_in=round(delay, 3),
        )
        return delay, rejected

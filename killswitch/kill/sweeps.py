"""The sweeps of a kill: ``cancel_all`` until the exchange acknowledges it.

The sweeps (one ``cancel_all`` per target, or per symbol of a scoped target)
go out concurrently; each is retried until the exchange acknowledges it, every
attempt paid through the sliding-window limiter inside the client, at the
cadence :mod:`killswitch.kill.retry` gives its failure.  A failure whose outcome
is unknown (5xx, timeout, ...) marks the target *lost*, so the kill also looks
for the orders the lost answer would have named; one the venue refuses (4xx)
is ``exchange.rejected`` and makes the kill *stuck* (``status`` says why) until
it succeeds or an operator ends it.  Order ids go to the confirmer as each
acknowledgement arrives.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import structlog
from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.errors import ExchangeError
from killswitch.kill.context import KillContext, StuckSweep
from killswitch.kill.events import KillEvents
from killswitch.kill.plan import CancelSource, SweepKey, Unit
from killswitch.kill.retry import Failure, Retry
from killswitch.store.state import StateStore

__all__ = ["Sweeper"]


class Sweeper:
    """``cancel_all`` for one key of a kill, until acknowledged."""

    def __init__(
        self,
        config: Callable[[], Config],
        exchange: CancelSource,
        store: StateStore,
        clock: Clock,
        events: KillEvents,
        log: FilteringBoundLogger,
        rng: random.Random,
        announce: Callable[[KillContext], None],
    ) -> None:
        self._config = config
        self._exchange = exchange
        self._store = store
        self._clock = clock
        self._events = events
        self._log = log
        self._rng = rng
        self._announce = announce  # the runner's: once per kill, at its first answer

    def retry(self) -> Retry:
        """The retry policy of one repeated request (sweeps and listings alike)."""
        cfg = self._config().cancel_all
        return Retry(cfg.retry_base, cfg.retry_max, self._rng)

    async def sweep(
        self, ctx: KillContext, unit: Unit, exchange: str, symbol: str | None
    ) -> list[str]:
        """``cancel_all`` until acknowledged; the ids it named."""
        structlog.contextvars.bind_contextvars(exchange=exchange, symbol=symbol)
        key = (exchange, symbol)
        retry = self.retry()
        kill_id = ctx.kill_id

        first = not ctx.announced.is_set()  # one of the plan's first requests

        def sent() -> None:
            nonlocal first
            self._log.info("cancel_all.sent")
            self._events.cancel_all_sent(kill_id, exchange, symbol)
            if first:  # one of the plan's first requests is on the wire
                first = False
                ctx.first_sent += 1
                if ctx.first_sent >= len(ctx.plan.sweeps):
                    ctx.all_sent.set()

        while True:
            try:
                order_ids = await self._exchange.cancel_all(exchange, symbol, on_sent=sent)
            except ExchangeError as exc:
                self._announce(ctx)
                failure = retry.failed(exc)
                self._failed(ctx, unit, key, failure)
                await self._clock.sleep(failure.delay)
                continue
            self._announce(ctx)
            if ctx.stuck.pop(key, None) is not None:
                self._log.warning("kill.unstuck", attempts=retry.attempt + 1)
            self._events.request_done("cancel_all", "accepted")
            ctx.confirmer.add(order_ids)
            unit.named.update(dict.fromkeys(order_ids))
            ctx.answered.update(order_ids)
            self._store.sweep_acked(kill_id, exchange, symbol, order_ids, self._clock.time())
            self._log.info(
                "cancel_all.accepted", order_count=len(order_ids), attempt=retry.attempt + 1
            )
            return order_ids

    def _failed(self, ctx: KillContext, unit: Unit, key: SweepKey, failure: Failure) -> None:
        """Log a failed ``cancel_all``: lost (outcome unknown), refused (stuck), or neither."""
        exc = failure.error
        self._events.request_done("cancel_all", exc.kind)
        if failure.outcome_unknown and not unit.lost:
            unit.lost = True
            self._store.sweep_lost(ctx.kill_id, key[0], key[1])
        if failure.rejected:
            self._log.error(
                "exchange.rejected",
                endpoint="cancel_all",
                http_status=exc.status,
                message=exc.message,
                error=exc.kind,
                attempt=failure.attempt,
                retry_in=round(failure.delay, 3),
            )
            stuck = ctx.stuck.get(key)
            spell_starts = stuck is None
            if stuck is None:
                stuck = ctx.stuck[key] = StuckSweep(
                    key[0], key[1], "", None, self._clock.time(), 0, 0.0
                )
            stuck.why = exc.message or str(exc)
            stuck.http_status = exc.status
            stuck.attempts = failure.rejected
            stuck.next_retry_at = self._clock.monotonic() + failure.delay
            if spell_starts:  # contract v3 §17: an event once per stuck spell, not per retry
                self._log.error(
                    "kill.stuck",
                    why=stuck.why,
                    http_status=exc.status,
                    retry_in=round(failure.delay, 3),
                )
        self._log.error(
            "cancel_all.failed",
            attempt=failure.attempt,
            error=exc.kind,
            http_status=exc.status,
            detail=exc.detail,
            message=exc.message,
            outcome_unknown=failure.outcome_unknown,
            retry_in=round(failure.delay, 3),
        )

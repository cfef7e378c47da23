"""The tripped guard (contract §1, ``[guard]``): keep the account flat until a reset.

While the switch is ``TRIPPED`` (not while ``KILLING``), every
``guard.interval`` seconds the guard lists each target's default window (the
latest orders of the last 7 days, paging while pages are full) and sweeps
whatever it finds open: ``guard.swept`` (exchange, symbol, order_ids), one
``cancel_all`` scoped to each symbol, then the ids are confirmed like a kill's
(``guard.confirmed`` with the outcome counts).  Every request goes through the
client's limiters, so the guard stays inside every budget; a failure waits for
the next run.  A state change (reset, a new kill) cancels a run in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from killswitch.clock import Clock, sleep_or_wake
from killswitch.config.model import Config
from killswitch.exchange.errors import ExchangeError
from killswitch.kill.confirm import Confirmer, RateGate
from killswitch.kill.events import KillEvents, NoEvents
from killswitch.kill.flat import Listings
from killswitch.kill.plan import CancelSource, plan_sweeps
from killswitch.kill.retry import is_rejected
from killswitch.log import get_logger

__all__ = ["Guard"]


class Guard:
    def __init__(
        self,
        config: Callable[[], Config],
        exchange: CancelSource,
        listings: Listings,
        clock: Clock,
        *,
        tripped: Callable[[], bool],
        status_gate: RateGate | None = None,
        events: KillEvents | None = None,
    ) -> None:
        self._events: KillEvents = events or NoEvents()
        self._config = config
        self._exchange = exchange
        self._listings = listings
        self._clock = clock
        self._tripped = tripped
        self._gate = status_gate
        self._changed = asyncio.Event()
        self._log = get_logger(component="guard")
        self.last_run: dict[str, Any] | None = None
        self.runs = 0

    def state_changed(self) -> None:
        """The switch changed state: start or stop guarding."""
        self._changed.set()

    def status(self) -> dict[str, Any]:
        cfg = self._config().guard
        return {
            "enabled": cfg.enabled,
            "interval": cfg.interval,
            "active": cfg.enabled and self._tripped(),
            "runs": self.runs,
            "last_run": self.last_run,
        }

    async def run(self) -> None:
        """Guard while tripped, until cancelled."""
        while True:
            self._changed.clear()
            cfg = self._config().guard
            if not (cfg.enabled and self._tripped()):
                await self._changed.wait()
                continue
            if await sleep_or_wake(self._clock, cfg.interval, self._changed):
                continue  # the state changed: look again
            cycle = asyncio.create_task(self._cycle(), name="guard-run")
            stop = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait({cycle, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not cycle.done():
                    cycle.cancel()
                    self._log.info("guard.interrupted")
                await asyncio.wait({cycle, stop})
            if not cycle.cancelled():
                cycle.result()  # a bug in a run is the daemon's crash, not silence

    async def _cycle(self) -> None:
        """One run: list every target, sweep and confirm what is open."""
        config = self._config()
        started = self._clock.time()
        found: dict[str, int] = {}
        errors: list[str] = []
        confirmer = Confirmer(
            self._exchange,
            config.confirm,
            self._clock,
            gate=self._gate,
            on_wait=self._events.status_gate_waited,
        )
        confirming = asyncio.create_task(confirmer.run())
        try:
            for exchange, symbol in plan_sweeps(config.targets):
                try:
                    listed = await self._listings.list_open(exchange, symbol, deep=False)
                except ExchangeError as exc:
                    errors.append(f"{exchange}/{symbol or '*'}: list: {exc.kind}")
                    self._log.warning(
                        "guard.list_failed",
                        exchange=exchange,
                        symbol=symbol,
                        error=exc.kind,
                        http_status=exc.status,
                        message=exc.message,
                    )
                    continue
                by_symbol: dict[str, list[str]] = {}
                for order_id, order in listed.items():
                    by_symbol.setdefault(symbol or order.symbol, []).append(order_id)
                for sym, ids in sorted(by_symbol.items()):
                    found[sym] = found.get(sym, 0) + len(ids)
                    self._log.warning(
                        "guard.swept", exchange=exchange, symbol=sym, order_ids=sorted(ids)
                    )
                    self._events.guard_swept(len(ids))
                    named = await self._sweep(exchange, sym, errors)
                    confirmer.add([*ids, *named])
            confirmer.close()
            result = await confirming
        finally:
            if not confirming.done():
                confirming.cancel()
        self.runs += 1
        self.last_run = {
            "at": started,
            "duration_ms": round((self._clock.time() - started) * 1000, 1),
            "open": sum(found.values()),
            "by_symbol": found,
            "errors": errors,
            **result.counts(),
        }
        if found:
            self._log.warning("guard.confirmed", **self.last_run)
        else:
            self._log.debug("guard.flat", at=started)

    async def _sweep(self, exchange: str, symbol: str, errors: list[str]) -> list[str]:
        def sent() -> None:
            self._log.info("cancel_all.sent", exchange=exchange, symbol=symbol)
            self._events.cancel_all_sent(None, exchange, symbol)

        try:
            named = await self._exchange.cancel_all(exchange, symbol, on_sent=sent)
        except ExchangeError as exc:
            self._events.request_done("cancel_all", exc.kind)
            errors.append(f"{exchange}/{symbol}: cancel_all: {exc.kind}")
            if is_rejected(exc):
                self._log.error(
                    "exchange.rejected",
                    endpoint="cancel_all",
                    exchange=exchange,
                    symbol=symbol,
                    http_status=exc.status,
                    message=exc.message,
                    error=exc.kind,
                    source="guard",
                )
            self._log.warning(
                "guard.sweep_failed",
                exchange=exchange,
                symbol=symbol,
                error=exc.kind,
                http_status=exc.status,
                message=exc.message,
                note="the next run tries again",
            )
            return []
        self._events.request_done("cancel_all", "accepted")
        return named

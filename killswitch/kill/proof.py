"""The flat proof of a kill: list each target until it lists nothing open.

Once every sweep of a target is answered, the flat proof lists the target
completely (:mod:`killswitch.kill.flat`): an open order an answer named is
confirmed, not swept again; one no answer named is a leftover
(``flat.leftover``), swept again scoped to its symbol and confirmed; the
target is listed again, after a short wait while named orders are still
cancelling, until a listing is empty.  ``kill.flat`` when every target listed
empty.  Ids missing from a complete listing are terminal (*gone*): the kill is
proven without their outcomes, which :mod:`killswitch.kill.classify` learns.
A listing that fails is retried by :mod:`killswitch.kill.retry`'s policy.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Final

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.endpoints import OPEN_ORDERS, ORDER_STATUS
from killswitch.exchange.errors import ExchangeError
from killswitch.kill.context import KillContext
from killswitch.kill.flat import ListedOrder, Listings
from killswitch.kill.plan import LISTING_HOLD, NEW_PER_PAGE, Unit
from killswitch.kill.progress import Budget
from killswitch.kill.sweeps import Sweeper
from killswitch.store.state import StateStore

__all__ = ["RELIST_FIRST", "RELIST_MAX", "FlatProof"]

RELIST_FIRST: Final = 0.5
"""Seconds between the first and second listing of a target while named orders are still
cancelling; doubling from there up to :data:`RELIST_MAX`."""
RELIST_MAX: Final = 5.0


def _relist(wait: float) -> float:
    """The wait before the next listing of a target that still lists named orders open."""
    return min(max(wait * 2, RELIST_FIRST), RELIST_MAX)


class FlatProof:
    """Lists one unit of a kill until it is flat, sweeping leftovers with the :class:`Sweeper`."""

    def __init__(
        self,
        config: Callable[[], Config],
        listings: Listings,
        sweeper: Sweeper,
        store: StateStore,
        clock: Clock,
        log: FilteringBoundLogger,
        budgets: Mapping[str, Budget],
    ) -> None:
        self._config = config
        self._listings = listings
        self._sweeper = sweeper
        self._store = store
        self._clock = clock
        self._log = log
        self._budgets = budgets

    async def prove(self, ctx: KillContext, unit: Unit) -> None:
        """List ``unit`` until it is flat (or what lists open was given up on)."""
        confirmer = ctx.confirmer
        cfg = self._config().confirm
        if unit.sweeps:
            await asyncio.wait(unit.sweeps)
        unit.flat = None
        wait = cfg.first_poll_delay
        pages = 1  # what the last listing cost
        released = False
        while True:
            if self._polls_first(ctx, unit):
                # A listing of this many orders still cancelling would wait minutes for the
                # open-orders window; the status budget confirms them sooner.  List once
                # that is no longer so (what is left fits a page or two).
                if not released:
                    released = True
                    confirmer.release(confirmer.unresolved(unit.named))
                await self._clock.sleep(wait)
                wait = _relist(wait)
                continue
            if self._listings.open_budget() < pages + 1:
                # Listing now would spend the last of the open-orders budget on orders
                # still cancelling: let them finish first (the limiter would wait anyway).
                wait = max(wait, RELIST_MAX)
            await self._clock.sleep(wait)
            listed = await self.list_open(unit)
            pages = max(1, math.ceil(len(listed) / NEW_PER_PAGE))
            ctx.created.update((i, o.created_at) for i, o in listed.items())
            for order_id, order in listed.items():
                if confirmer.knows(order_id):
                    confirmer.observe(order_id, order.status, via="open_orders")
            missing = [i for i in confirmer.unresolved(unit.named) if i not in listed]
            confirmer.hold(missing, LISTING_HOLD)  # the classification will tell
            ctx.gone.update(missing)
            # Open, and no answer named it: a leftover, swept (again) until an answer
            # names it or its deadline gives up on it (unconfirmed).
            leftovers = {
                i: o
                for i, o in listed.items()
                if i not in ctx.answered and confirmer.outcome(i) is None
            }
            if leftovers:
                fresh = not set(leftovers) <= ctx.leftovers
                await self._sweep_leftovers(ctx, unit, leftovers)
                # New leftovers: look again soon.  The same ones again (the venue named
                # none of them): back off, inside the cancel_all budget.
                wait = cfg.first_poll_delay if fresh else _relist(wait)
                continue
            if not listed:
                unit.flat = True
                break
            if not confirmer.unresolved(listed):
                unit.flat = False  # what still lists open was given up on (unconfirmed)
                self._log.warning(
                    "flat.not_proven",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    open=len(listed),
                    order_ids=sorted(listed),
                )
                break
            wait = _relist(wait)
        if unit.flat and all(u.flat for u in ctx.units.values()) and ctx.flat_ms is None:
            ctx.flat_ms = round((self._clock.monotonic() - ctx.started) * 1000, 1)
            self._log.info("kill.flat", duration_ms=ctx.flat_ms)

    def _polls_first(self, ctx: KillContext, unit: Unit) -> bool:
        """True when status polls would confirm the unit's unresolved ids sooner than a
        complete listing of them could be paged (whichever budget confirms more orders per
        second decides; ids a listing already found gone need no page)."""
        lists = self._budgets.get(OPEN_ORDERS)
        polls = self._budgets.get(ORDER_STATUS)
        if lists is None or polls is None:
            return False
        pending = [i for i in ctx.confirmer.unresolved(unit.named) if i not in ctx.gone]
        if len(pending) <= NEW_PER_PAGE:
            return False
        pages = math.ceil(len(pending) / NEW_PER_PAGE) + 1
        return polls.time_for(len(pending)) < lists.time_for(pages)

    async def list_open(self, unit: Unit) -> Mapping[str, ListedOrder]:
        """One complete deep listing of ``unit``, retried until it succeeds."""
        retry = self._sweeper.retry()
        while True:
            try:
                return await self._listings.list_open(unit.exchange, unit.symbol, deep=True)
            except ExchangeError as exc:
                failure = retry.failed(exc)
                self._log.warning(
                    "flat.list_failed",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    attempt=failure.attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    message=exc.message,
                    retry_in=round(failure.delay, 3),
                )
                await self._clock.sleep(failure.delay)

    async def _sweep_leftovers(
        self, ctx: KillContext, unit: Unit, leftovers: Mapping[str, ListedOrder]
    ) -> None:
        """``flat.leftover`` per symbol; sweep each symbol again; confirm the ids."""
        by_symbol: dict[str, list[str]] = {}
        for order_id, order in leftovers.items():
            by_symbol.setdefault(unit.symbol or order.symbol, []).append(order_id)
        sweeps = []
        for symbol, ids in sorted(by_symbol.items()):
            self._log.warning(
                "flat.leftover", exchange=unit.exchange, symbol=symbol, order_ids=sorted(ids)
            )
            ctx.leftovers.update(ids)
            self._store.leftover_sweep(ctx.kill_id, unit.exchange, symbol, ids, self._clock.time())
            ctx.confirmer.add(ids)
            unit.named.update(dict.fromkeys(ids))
            sweeps.append(self._sweeper.sweep(ctx, unit, unit.exchange, symbol))
        await asyncio.gather(*sweeps)

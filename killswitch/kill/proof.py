"""The flat proof of a kill: list each target until it lists nothing open.

Once every sweep of a target is answered, the flat proof lists the target
completely (:mod:`killswitch.kill.flat`): an open order an answer named is
confirmed, not swept again; one no answer named is a leftover
(``flat.leftover``), swept again scoped to its symbol and confirmed; the
target is listed again, after a short wait while named orders are still
cancelling, until a listing is empty.  ``kill.flat`` when every target listed
empty.  Ids missing from a complete listing are terminal: their outcomes come
from closed-order pages (in parallel with status polls when the pages do not
fit the budget), status polls stay the fallback.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Final

from killswitch.exchange.errors import ExchangeError, RateLimited
from killswitch.kill.confirm import Confirmer, RateGate
from killswitch.kill.flat import ListedOrder, Listings
from killswitch.kill.plan import (
    LISTING_HOLD,
    NEW_PER_PAGE,
    REJECT_FIRST,
    REJECT_MAX,
    KillPlan,
    SweepKey,
    Unit,
    error_message,
    outcome_unknown,
)
from killswitch.kill.sweeps import Sweeper

__all__ = ["RELIST_FIRST", "RELIST_MAX", "FlatProof"]

RELIST_FIRST: Final = 0.5
"""Seconds between the first and second listing of a target while named orders are still
cancelling; doubling from there up to :data:`RELIST_MAX`."""
RELIST_MAX: Final = 5.0
RECOVER_SLACK_MS: Final = 2_000  # closed since the kill started, give or take clock error


def _relist(wait: float) -> float:
    """The wait before the next listing of a target that still lists named orders open."""
    return min(max(wait * 2, RELIST_FIRST), RELIST_MAX)


class FlatProof(Sweeper):
    """The flat proof of :class:`~killswitch.kill.runner.KillRunner` (which sets these)."""

    listings: Listings | None
    status_gate: RateGate | None
    _units: dict[SweepKey, Unit]
    _leftovers: set[str]
    _created: dict[str, int]  # created_at (venue ms) of orders a listing showed
    _gone: set[str]  # named ids a complete listing no longer showed
    _started: float
    _flat_ms: float | None

    async def _prove(self, plan: KillPlan, unit: Unit, confirmer: Confirmer) -> None:
        """List ``unit`` until it is flat, sweeping leftovers; then resolve what it named."""
        assert self.listings is not None
        cfg = self.config.confirm
        if unit.sweeps:
            await asyncio.wait(unit.sweeps)
        wait = cfg.first_poll_delay
        pages = 1  # what the last listing cost
        while True:
            if self.listings.open_budget() < pages + 1:
                # Listing now would spend the last of the open-orders budget on orders
                # still cancelling: let them finish first (the limiter would wait anyway).
                wait = max(wait, RELIST_MAX)
            await self.clock.sleep(wait)
            listed = await self._list(unit)
            pages = max(1, math.ceil(len(listed) / NEW_PER_PAGE))
            self._created.update((i, o.created_at) for i, o in listed.items())
            for order_id, order in listed.items():
                if confirmer.knows(order_id):
                    confirmer.observe(order_id, order.status, via="open_orders")
            missing = [i for i in confirmer.unresolved(unit.named) if i not in listed]
            confirmer.hold(missing, LISTING_HOLD)  # the closed pages below will tell
            self._gone.update(missing)
            # Open, and no answer named it: a leftover, swept (again) until an answer
            # names it or its deadline gives up on it (unconfirmed).
            leftovers = {
                i: o
                for i, o in listed.items()
                if i not in self._answered and confirmer.outcome(i) is None
            }
            if leftovers:
                fresh = not set(leftovers) <= self._leftovers
                await self._sweep_leftovers(plan, unit, leftovers, confirmer)
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
        if unit.flat and all(u.flat for u in self._units.values()) and self._flat_ms is None:
            self._flat_ms = round((self.clock.monotonic() - self._started) * 1000, 1)
            self._log.info("kill.flat", duration_ms=self._flat_ms)
        if unit.lost:
            await self._recover(plan, unit, confirmer)
        await self._closed_round(unit, confirmer)

    async def _list(self, unit: Unit) -> Mapping[str, ListedOrder]:
        """One complete deep listing of ``unit``, retried until it succeeds."""
        assert self.listings is not None
        attempt = rejected = 0
        while True:
            attempt += 1
            try:
                return await self.listings.list_open(unit.exchange, unit.symbol, deep=True)
            except ExchangeError as exc:
                if isinstance(exc, RateLimited):
                    delay = 0.0
                elif outcome_unknown(exc):
                    delay = self._backoff(attempt)
                else:
                    rejected += 1
                    delay = min(REJECT_FIRST * 2 ** (rejected - 1), REJECT_MAX)
                self._log.warning(
                    "flat.list_failed",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    attempt=attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    message=error_message(exc),
                    retry_in=round(delay, 3),
                )
                await self.clock.sleep(delay)

    async def _sweep_leftovers(
        self,
        plan: KillPlan,
        unit: Unit,
        leftovers: Mapping[str, ListedOrder],
        confirmer: Confirmer,
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
            self._leftovers.update(ids)
            self.store.leftover_sweep(plan.kill_id, unit.exchange, symbol, ids, self.clock.time())
            confirmer.add(ids)
            unit.named.update(dict.fromkeys(ids))
            sweeps.append(self._sweep(plan, unit, unit.exchange, symbol, confirmer))
        await asyncio.gather(*sweeps)

    async def _recover(self, plan: KillPlan, unit: Unit, confirmer: Confirmer) -> None:
        """A lost answer: count the orders it cancelled (closed since the kill started)."""
        assert self.listings is not None
        assert plan.started_at is not None
        since = self.listings.venue_ms(plan.started_at) - RECOVER_SLACK_MS
        attempt = 0
        while True:
            attempt += 1
            try:
                closed = await self.listings.closed_since(unit.exchange, unit.symbol, since)
                break
            except ExchangeError as exc:
                delay = 0.0 if isinstance(exc, RateLimited) else self._backoff(attempt)
                self._log.warning(
                    "flat.list_failed",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    listing="closed_orders",
                    attempt=attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    message=error_message(exc),
                    retry_in=round(delay, 3),
                )
                await self.clock.sleep(delay)
        found = {i: o for i, o in closed.items() if not confirmer.knows(i)}
        if found:
            by_symbol: dict[str, list[str]] = {}
            for order_id, order in found.items():
                by_symbol.setdefault(order.symbol, []).append(order_id)
            for symbol, ids in sorted(by_symbol.items()):
                self._log.warning(
                    "flat.recovered", exchange=unit.exchange, symbol=symbol, order_ids=sorted(ids)
                )
                self.store.orders_found(plan.kill_id, unit.exchange, symbol, ids, self.clock.time())
            for order_id, order in found.items():
                unit.named[order_id] = None
                confirmer.observe(order_id, order.status, via="closed_orders")

    async def _closed_round(self, unit: Unit, confirmer: Confirmer) -> None:
        """Outcomes of the ids ``unit`` named that are still unresolved.

        Closed-order pages (50 orders a request, newest first) when they fit the
        closed-orders budget now; when they do not, the oldest ids go to status polls
        at the same time, as many as the status budget allows now (both budgets in
        parallel).  Whatever the pages do not find is polled (the closed listing never
        shows EXPIRED, DISCARDED, FAILED or REJECTED).
        """
        assert self.listings is not None
        wanted = confirmer.unresolved(unit.named)
        if len(wanted) < 2:
            confirmer.release(wanted)  # one status request is the cheapest answer
            return
        pages_now = self.listings.closed_budget()
        polls_now = 0 if self.status_gate is None else self.status_gate.available()
        polled: list[str] = []
        if math.ceil(len(wanted) / NEW_PER_PAGE) > pages_now and polls_now > 0:
            # The pages that fit now cover the newest ids, less a page's worth of margin
            # (ids no listing showed have no known age); the oldest go to status polls.
            oldest_first = sorted(wanted, key=lambda i: self._created.get(i, math.inf))
            spill = len(wanted) - max(0, pages_now - 1) * NEW_PER_PAGE
            polled = oldest_first[: min(spill, polls_now)]
            confirmer.release(polled)
        skip = set(polled)
        paged = [i for i in wanted if i not in skip]
        confirmer.hold(paged, LISTING_HOLD * 4)
        try:
            found = await self.listings.find_closed(
                unit.exchange,
                unit.symbol,
                set(paged),
                max_pages=math.ceil(len(paged) / NEW_PER_PAGE) + 1,
            )
        except ExchangeError as exc:
            self._log.warning(
                "flat.list_failed",
                exchange=unit.exchange,
                symbol=unit.symbol,
                listing="closed_orders",
                error=exc.kind,
                http_status=exc.status,
                message=error_message(exc),
            )
            found = {}
        for order_id, order in found.items():
            if order_id in unit.named:
                confirmer.observe(order_id, order.status, via="closed_orders")
        confirmer.release(confirmer.unresolved(paged))

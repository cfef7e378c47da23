"""After the proof: learn the outcome of every order the kill made terminal (contract v3 §1).

A proven kill knows every order it named is terminal, not always how each one
ended (a complete open listing no longer shows it: cancelled, filled, ...).
The classification learns that inside the budgets, after ``kill.completed``
when it cannot be done at once, and ends with ``kill.classified``:

- a lost answer (outcome unknown): the orders closed since the kill started
  are its own (``flat.recovered``);
- the ids still unclassified: closed-order pages (49 new orders a request,
  newest first) and status polls together, split by what each budget
  confirms per second (:func:`split`); the oldest ids go to the polls.
  Whatever the pages do not find is polled (the closed listing never shows
  ``EXPIRED``, ``DISCARDED``, ``FAILED`` or ``REJECTED``).

A listing that fails is retried when its budget allows (the retry policy of
:mod:`killswitch.kill.retry`), never abandoned for per-id polls that cost far
more of the budget.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.exchange.errors import ExchangeError
from killswitch.kill.confirm import RateGate
from killswitch.kill.context import KillContext
from killswitch.kill.flat import ListedOrder, Listings
from killswitch.kill.plan import LISTING_HOLD, NEW_PER_PAGE, Unit
from killswitch.kill.progress import Budget
from killswitch.kill.retry import Retry
from killswitch.store.state import StateStore

__all__ = ["RECOVER_SLACK_MS", "Classifier", "split"]

RECOVER_SLACK_MS: Final = 2_000  # closed since the kill started, give or take clock error
T = TypeVar("T")


def split(n: int, pages_now: int, page_rate: float, polls_now: int, poll_rate: float) -> int:
    """How many of ``n`` ids closed-order pages should look for (the newest); the rest
    are polled.  The split that resolves all ``n`` soonest: the smallest time ``t`` with
    ``49 * (pages_now + t * page_rate) + polls_now + t * poll_rate >= n``."""
    if n <= 0:
        return 0
    at_once = NEW_PER_PAGE * pages_now + polls_now
    pace = NEW_PER_PAGE * page_rate + poll_rate
    t = 0.0 if at_once >= n else (math.inf if pace <= 0 else (n - at_once) / pace)
    if math.isinf(t):
        return n
    pages = math.floor(pages_now + t * page_rate)
    return min(n, NEW_PER_PAGE * pages)


class Classifier:
    """Learns the outcomes a proven kill does not know yet."""

    def __init__(
        self,
        listings: Listings,
        store: StateStore,
        clock: Clock,
        log: FilteringBoundLogger,
        retry: Callable[[], Retry],
        budgets: Mapping[str, Budget],
        status_gate: RateGate | None,
    ) -> None:
        self._listings = listings
        self._store = store
        self._clock = clock
        self._log = log
        self._retry = retry
        self._budgets = budgets  # the refill rates (the daemon's limiters)
        self._gate = status_gate  # the status polls free now

    def free_now(self, ctx: KillContext) -> bool:
        """True when what is left can be asked at once, without waiting on a budget."""
        wanted = len(ctx.confirmer.unresolved())
        lost = sum(1 for u in ctx.units.values() if u.lost)
        pages = lost + sum(
            math.ceil(len(ctx.confirmer.unresolved(u.named)) / NEW_PER_PAGE)
            for u in ctx.units.values()
        )
        polls = 0 if self._gate is None else self._gate.available()
        return wanted == 0 or pages <= self._listings.closed_budget() or wanted <= polls

    async def classify(self, ctx: KillContext) -> None:
        """Recover what lost answers cancelled; then the outcomes of every unit's ids."""
        async with asyncio.TaskGroup() as tg:
            for unit in list(ctx.units.values()):
                tg.create_task(self._unit(ctx, unit), name=f"classify-{unit.key}")

    async def _unit(self, ctx: KillContext, unit: Unit) -> None:
        if unit.lost:
            await self._recover(ctx, unit)
        await self._closed(ctx, unit)

    async def _retried(self, unit: Unit, listing: str, call: Callable[[], Awaitable[T]]) -> T:
        retry = self._retry()
        while True:
            try:
                return await call()
            except ExchangeError as exc:
                failure = retry.failed(exc)
                self._log.warning(
                    "flat.list_failed",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    listing=listing,
                    attempt=failure.attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    message=exc.message,
                    retry_in=round(failure.delay, 3),
                )
                await self._clock.sleep(failure.delay)

    async def _recover(self, ctx: KillContext, unit: Unit) -> None:
        """A lost answer: count the orders it cancelled (closed since the kill started)."""
        assert ctx.plan.started_at is not None
        since = self._listings.venue_ms(ctx.plan.started_at) - RECOVER_SLACK_MS
        closed = await self._retried(
            unit,
            "closed_orders",
            lambda: self._listings.closed_since(unit.exchange, unit.symbol, since),
        )
        confirmer = ctx.confirmer
        found = {i: o for i, o in closed.items() if not confirmer.knows(i)}
        by_symbol: dict[str, list[str]] = {}
        for order_id, order in found.items():
            by_symbol.setdefault(order.symbol, []).append(order_id)
        for symbol, ids in sorted(by_symbol.items()):
            self._log.warning(
                "flat.recovered", exchange=unit.exchange, symbol=symbol, order_ids=sorted(ids)
            )
            self._store.orders_found(ctx.kill_id, unit.exchange, symbol, ids, self._clock.time())
        for order_id, order in found.items():
            unit.named[order_id] = None
            confirmer.observe(order_id, order.status, via="closed_orders")

    async def _closed(self, ctx: KillContext, unit: Unit) -> None:
        """Outcomes of the ids ``unit`` named that are still unresolved: pages and polls."""
        confirmer = ctx.confirmer
        wanted = confirmer.unresolved(unit.named)
        if len(wanted) < 2:
            confirmer.release(wanted)  # one status request is the cheapest answer
            return
        status = self._budgets.get("order_status")
        closed = self._budgets.get("closed_orders")
        paged_n = split(
            len(wanted),
            self._listings.closed_budget(),
            0.0 if closed is None else closed.requests / closed.per_seconds,
            0 if self._gate is None else self._gate.available(),
            0.0 if status is None else status.requests / status.per_seconds,
        )
        # The newest ids to the pages (they list newest first); ids no listing showed have
        # no known age and go to the pages too; the oldest to the polls, released now.
        newest_first = sorted(wanted, key=lambda i: ctx.created.get(i, math.inf), reverse=True)
        paged, polled = newest_first[:paged_n], newest_first[paged_n:]
        confirmer.release(polled)
        if not paged:
            return
        confirmer.hold(paged, LISTING_HOLD * 4)
        found: Mapping[str, ListedOrder] = await self._retried(
            unit,
            "closed_orders",
            lambda: self._listings.find_closed(
                unit.exchange,
                unit.symbol,
                set(confirmer.unresolved(paged)),
                max_pages=math.ceil(len(paged) / NEW_PER_PAGE) + 1,
            ),
        )
        for order_id, order in found.items():
            if order_id in unit.named:
                confirmer.observe(order_id, order.status, via="closed_orders")
        confirmer.release(confirmer.unresolved(paged))

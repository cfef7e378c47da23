"""The strategy that did not stop: a background trader placing orders on the book.

``start({"BTCUSDT": n, ...}, interval)`` places one order per symbol at
once, then one more per symbol that still has some to place every
``interval`` seconds, until every symbol has placed its ``n``.  With
``on_cancel_all`` it waits for the next ``cancel_all`` to be served and
starts right after it: orders placed during a kill, that no cancel answer
named.  Its task belongs to the trader and is
cancelled by :meth:`Trader.stop` (the sim stops it when it stops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from killswitch.sim.book import OrderBook

__all__ = ["Trader"]


@dataclass(slots=True)
class _Plan:
    exchange: str
    remaining: dict[str, int]
    interval: float


class Trader:
    """Places orders on ``book`` in the background; ``placed`` lists every id, in order."""

    def __init__(self, book: OrderBook, sleep: Callable[[float], Awaitable[None]]) -> None:
        self._book = book
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._armed: _Plan | None = None
        self._plan: _Plan | None = None
        self.placed: list[str] = []

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(
        self, orders: dict[str, int], interval: float, exchange: str, *, on_cancel_all: bool = False
    ) -> None:
        """Replace any running plan with this one (``ValueError`` names a bad field)."""
        if not orders or any(n < 0 for n in orders.values()):
            raise ValueError('orders: expected {"SYMBOL": count >= 0, ...}')
        if interval < 0:
            raise ValueError("interval: expected seconds >= 0")
        await self.stop()
        plan = _Plan(exchange, dict(orders), interval)
        if on_cancel_all:
            self._armed = plan
        else:
            self._launch(plan)

    def cancel_all_served(self) -> None:
        """A ``cancel_all`` was just served: an armed plan starts now."""
        plan, self._armed = self._armed, None
        if plan is not None:
            self._launch(plan)

    def _launch(self, plan: _Plan) -> None:
        """Place the first orders now; a task places the rest, one round per interval."""
        self._plan = plan
        if self._place_round(plan):
            self._task = asyncio.get_running_loop().create_task(self._run(plan), name="sim-trader")

    def _place_round(self, plan: _Plan) -> bool:
        """One order for each symbol with some left; whether any are left after."""
        for symbol, left in plan.remaining.items():
            if left > 0:
                self.placed.append(self._book.place(plan.exchange, symbol))
                plan.remaining[symbol] = left - 1
        return any(plan.remaining.values())

    async def _run(self, plan: _Plan) -> None:
        while True:
            await self._sleep(plan.interval)
            if not self._place_round(plan):
                return

    async def stop(self) -> None:
        """Disarm, cancel the task and wait for it; a crash of the task is raised here."""
        self._armed = None
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and (crash := task.exception()) is not None:
            raise crash

    def to_json(self) -> dict[str, Any]:
        plan = self._armed or self._plan
        task = self._task
        crashed = task is not None and task.done() and not task.cancelled() and task.exception()
        return {
            "error": repr(crashed) if crashed else None,
            "running": self.running,
            "armed": self._armed is not None,
            "remaining": dict(plan.remaining) if plan is not None else {},
            "placed": list(self.placed),
        }

"""An in-process venue for the kill engine's unit tests: orders on a virtual clock.

It answers ``cancel_all``, order status and the three listings the engine uses
(:class:`killswitch.kill.flat.Listings`), records every call with its time, and can
be told to fail a call (``faults``), to lose an answer after doing the work,
or to place orders on its own (a strategy that did not stop).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from killswitch.exchange.errors import ExchangeError, OrderNotFound
from tests.fakes import FakeClock

__all__ = ["Listed", "VenueFake"]

WORKING = frozenset({"RAISED", "OPEN", "CANCELLATION_RAISED"})
CLOSED_LISTED = frozenset({"CANCELLED", "EXECUTED", "PARTIALLY_EXECUTED"})


@dataclass(frozen=True)
class Listed:
    order_id: str
    symbol: str
    status: str
    created_at: int = 0
    updated_at: int | None = None


@dataclass
class _Order:
    order_id: str
    symbol: str
    created: float
    status: str = "RAISED"
    final: str = "CANCELLED"  # what a cancel ends in
    done_at: float | None = None  # when CANCELLATION_RAISED becomes ``final``
    closed_at: float | None = None


@dataclass
class Call:
    at: float
    endpoint: str
    detail: object = None


@dataclass
class VenueFake:
    clock: FakeClock
    exchange: str = "EX"
    cancel_delay: float = 0.2
    closed_budget_now: int = 20
    open_budget_now: int = 20
    orders: dict[str, _Order] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # endpoint (or "cancel_all:SYMBOL") -> errors to raise on its next calls;
    # (error, True) = do the work, lose the answer
    faults: dict[str, list[tuple[ExchangeError, bool]]] = field(default_factory=dict)
    on_cancel_all: Callable[[], None] | None = None  # runs after each cancel_all
    name_cancelling: bool = False  # cancel_all also names orders already CANCELLATION_RAISED
    ignore_cancels: int = 0  # the next cancel_all calls answer 200 with no ids, doing nothing
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    # ------------------------------------------------------------------ set-up

    def seed(self, symbol: str, n: int, *, final: str = "CANCELLED") -> list[str]:
        ids = []
        for _ in range(n):
            seq = next(self._ids)
            oid = f"{symbol}-{seq:05}"
            created = self.clock.monotonic() + seq * 0.001  # one ms apart, in seed order
            self.orders[oid] = _Order(oid, symbol, created, final=final)
            ids.append(oid)
        return ids

    def fail(self, endpoint: str, error: ExchangeError, *, count: int = 1, lost: bool = False):  # type: ignore[no-untyped-def]
        self.faults.setdefault(endpoint, []).extend([(error, lost)] * count)

    def _fault(self, endpoint: str) -> tuple[ExchangeError, bool] | None:
        queue = self.faults.get(endpoint)
        return queue.pop(0) if queue else None

    # ------------------------------------------------------------------ truth

    def _tick(self) -> None:
        now = self.clock.monotonic()
        for order in self.orders.values():
            done = order.done_at
            if order.status == "CANCELLATION_RAISED" and done is not None and now >= done:
                order.status = order.final
                order.closed_at = done

    def truth(self) -> dict[str, int]:
        self._tick()
        counts: dict[str, int] = {}
        for order in self.orders.values():
            counts[order.status] = counts.get(order.status, 0) + 1
        return counts

    def count(self, endpoint: str) -> int:
        return sum(1 for c in self.calls if c.endpoint == endpoint)

    def _in_scope(self, order: _Order, symbol: str | None) -> bool:
        return symbol is None or order.symbol == symbol

    def _listed(self, order: _Order) -> Listed:
        closed = None if order.closed_at is None else int(order.closed_at * 1000)
        created = round(order.created * 1000)
        return Listed(order.order_id, order.symbol, order.status, created, closed)

    # ------------------------------------------------------------------ the API

    async def cancel_all(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> list[str]:
        self.calls.append(Call(self.clock.monotonic(), "cancel_all", symbol))
        if on_sent is not None:
            on_sent()
        self._tick()
        fault = self._fault(f"cancel_all:{symbol}") or self._fault("cancel_all")
        if fault is not None and not fault[1]:
            raise fault[0]
        if self.ignore_cancels > 0:
            self.ignore_cancels -= 1
            return []
        named = []
        now = self.clock.monotonic()
        for order in self.orders.values():
            if not self._in_scope(order, symbol):
                continue
            if order.status in ("RAISED", "OPEN"):
                order.status = "CANCELLATION_RAISED"
                order.done_at = now + self.cancel_delay
                named.append(order.order_id)
            elif order.status == "CANCELLATION_RAISED" and self.name_cancelling:
                named.append(order.order_id)
        if self.on_cancel_all is not None:
            self.on_cancel_all()
        if fault is not None:
            raise fault[0]  # the work is done, the answer is lost
        return named

    async def order_status(self, order_id: str) -> Listed:
        self.calls.append(Call(self.clock.monotonic(), "order_status", order_id))
        self._tick()
        fault = self._fault("order_status")
        if fault is not None:
            raise fault[0]
        order = self.orders.get(order_id)
        if order is None:
            raise OrderNotFound("order_status", "404", status=404)
        return self._listed(order)

    async def list_open(
        self, exchange: str, symbol: str | None, *, deep: bool
    ) -> Mapping[str, Listed]:
        self._tick()
        found = {
            o.order_id: self._listed(o)
            for o in self.orders.values()
            if self._in_scope(o, symbol) and o.status in WORKING
        }
        self.calls.append(Call(self.clock.monotonic(), "open_orders", (symbol, deep, len(found))))
        fault = self._fault("open_orders")
        if fault is not None:
            raise fault[0]
        return found

    async def find_closed(
        self, exchange: str, symbol: str | None, wanted: set[str], *, max_pages: int
    ) -> Mapping[str, Listed]:
        self._tick()
        closed = sorted(
            (o for o in self.orders.values() if self._in_scope(o, symbol)),
            key=lambda o: -o.created,
        )
        closed = [o for o in closed if o.status in CLOSED_LISTED]
        shown = closed[: max_pages * 50]
        found = {o.order_id: self._listed(o) for o in shown if o.order_id in wanted}
        last = max((i for i, o in enumerate(shown) if o.order_id in wanted), default=-1)
        pages = max(1, math.ceil((last + 1) / 50)) if len(found) == len(wanted) else max_pages
        for _ in range(pages):
            self.calls.append(Call(self.clock.monotonic(), "closed_orders", symbol))
        if pages > self.closed_budget_now:
            await self.clock.sleep(60.0)  # the rest of the pages wait for the next window
        return found

    async def closed_since(
        self, exchange: str, symbol: str | None, since_ms: int
    ) -> Mapping[str, Listed]:
        self._tick()
        self.calls.append(Call(self.clock.monotonic(), "closed_orders", symbol))
        return {
            o.order_id: self._listed(o)
            for o in self.orders.values()
            if self._in_scope(o, symbol)
            and o.status in CLOSED_LISTED
            and o.closed_at is not None
            and o.closed_at * 1000 >= since_ms
        }

    def venue_ms(self, wall: float) -> int:
        # The fake's "venue clock" is the monotonic clock in ms.
        return int((self.clock.monotonic() - (self.clock.time() - wall)) * 1000)

    def closed_budget(self) -> int:
        return self.closed_budget_now

    def open_budget(self) -> int:
        return self.open_budget_now

"""The order book: working orders, cancellation, and lazily resolved outcomes.

An order sent for cancellation sits in ``CANCELLATION_RAISED`` for a random
delay, then ends ``EXECUTED``, ``PARTIALLY_EXECUTED`` (terminal on futures,
with ``0 < exec_quantity < quantity``), ``EXPIRED`` or ``CANCELLED``.  The
outcome is drawn when the cancel arrives and shown once the (monotonic)
clock passes it.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from killswitch.sim.clock import VenueClock
from killswitch.sim.config import check_behaviour
from killswitch.sim.positions import PositionBook

__all__ = [
    "CLOSED_LISTED",
    "DAY_MS",
    "SEEDABLE",
    "WORKING",
    "Behaviour",
    "Order",
    "OrderBook",
]

DAY_MS = 86_400_000
WORKING = frozenset({"RAISED", "OPEN", "CANCELLATION_RAISED", "EXPIRATION_RAISED"})
SEEDABLE = frozenset({"RAISED", "OPEN"})
CLOSED_LISTED = frozenset({"EXECUTED", "PARTIALLY_EXECUTED", "CANCELLED"})
STOPS = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET"})  # position-level TP/SL orders


@dataclass(slots=True)
class Behaviour:
    """How cancels end; changed at run time by ``POST /_sim/behaviour``."""

    fill_ratio: float
    partial_fill_ratio: float
    expire_ratio: float
    cancel_delay: tuple[float, float]

    def update(self, **changes: Any) -> None:
        """Change the given fields, all or none (``ValueError`` names the bad one)."""
        unknown = set(changes) - set(self.to_json())
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: not a behaviour field")
        new = self.to_json() | {k: v for k, v in changes.items() if v is not None}
        delay = tuple(new["cancel_delay"])
        check_behaviour(
            new["fill_ratio"], new["partial_fill_ratio"], new["expire_ratio"], (delay[0], delay[1])
        )
        self.fill_ratio = new["fill_ratio"]
        self.partial_fill_ratio = new["partial_fill_ratio"]
        self.expire_ratio = new["expire_ratio"]
        self.cancel_delay = (delay[0], delay[1])

    def to_json(self) -> dict[str, Any]:
        return {
            "fill_ratio": self.fill_ratio,
            "partial_fill_ratio": self.partial_fill_ratio,
            "expire_ratio": self.expire_ratio,
            "cancel_delay": list(self.cancel_delay),
        }


@dataclass(slots=True)
class Order:
    """One order.  While cancelling, its status is computed from the clock."""

    order_id: str
    exchange: str
    symbol: str
    side: str
    quantity: int | Decimal
    price: str
    created_at: int  # ms, venue clock
    status: str = "RAISED"
    cancelled_at: int | None = None  # ms, venue clock: when cancel_all reached it
    resolve_at: float | None = None  # monotonic time CANCELLATION_RAISED ends
    resolve_ms: int | None = None  # the same moment on the venue clock
    final_status: str | None = None  # decided when the cancel arrives
    final_exec: int | Decimal = 0
    order_type: str = "LIMIT"
    extra: dict[str, Any] = field(default_factory=dict)  # client_order_id, reduce_only, ...
    settled: bool = False  # its fill has moved the position

    def resolved(self, now: float) -> bool:
        return self.resolve_at is not None and now >= self.resolve_at

    def status_at(self, now: float) -> str:
        if self.resolved(now) and self.final_status is not None:
            return self.final_status
        return self.status

    def to_json(self, now: float) -> dict[str, Any]:
        """The venue's order object; numbers are JSON strings, times integer ms."""
        done = self.resolved(now)
        executed = self.final_exec if done else 0
        if done and self.resolve_ms is not None:
            updated = self.resolve_ms
        else:
            updated = self.cancelled_at if self.cancelled_at is not None else self.created_at
        return {
            "order_id": self.order_id,
            "exchange": self.exchange,
            "symbol": self.symbol,
            "side": self.side,
            "status": self.status_at(now),
            "order_type": self.order_type,
            "quantity": str(self.quantity),
            "exec_quantity": str(executed),
            "price": self.price,
            "avg_execution_price": self.price if executed else "0",
            "created_at": self.created_at,
            "updated_at": updated,
            **self.extra,
        }


class OrderBook:
    """Orders by id; ``clock`` is monotonic, ``venue`` stamps times in ms."""

    def __init__(
        self,
        *,
        behaviour: Behaviour,
        rng: random.Random,
        clock: Callable[[], float],
        venue: VenueClock,
    ) -> None:
        self.behaviour = behaviour
        self._rng = rng
        self._clock = clock
        self._venue = venue
        self.orders: dict[str, Order] = {}
        self.exchanges: set[str] = set()
        self._used_ms: set[int] = set()
        self.positions = PositionBook()

    def _stamp(self, ms: int) -> int:
        """``ms`` or the nearest earlier millisecond no other order was created at."""
        while ms in self._used_ms:
            ms -= 1
        self._used_ms.add(ms)
        return ms

    def _new(
        self, exchange: str, symbol: str, created_at: int, status: str, *, stamp: bool = True
    ) -> Order:
        rng = self._rng
        order_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        order = Order(
            order_id,
            exchange,
            symbol,
            side=rng.choice(("BUY", "SELL")),
            quantity=rng.randint(2, 500),
            price=f"{rng.randint(10_000, 9_999_999) / 100:.2f}",
            created_at=self._stamp(created_at) if stamp else created_at,
            status=status,
        )
        self.orders[order_id] = order
        return order

    def seed(
        self,
        exchange: str,
        orders: dict[str, int],
        status: str = "RAISED",
        age_days: float = 0.0,
        *,
        same_ms: bool = False,
    ) -> list[str]:
        """Create ``count`` working orders per symbol, ``age_days`` old; return their ids.

        Every order gets its own ``created_at``: the batch ends ``age_days``
        before now, one millisecond apart, the last id the newest.  With
        ``same_ms`` the whole batch shares one millisecond instead (more than
        a page of them can never be paged past: inclusive ``to_time``).
        """
        if status not in SEEDABLE:
            raise ValueError(f"status: seeded orders are {sorted(SEEDABLE)}, got {status!r}")
        if age_days < 0:
            raise ValueError("age_days: expected days >= 0")
        self.exchanges.add(exchange)
        newest = self._venue.now_ms() - round(age_days * DAY_MS)
        if same_ms:
            newest = self._stamp(newest)
        total = sum(orders.values())
        ids: list[str] = []
        for symbol, count in orders.items():
            for _ in range(count):
                if same_ms:
                    order = self._new(exchange, symbol, newest, status, stamp=False)
                else:
                    order = self._new(exchange, symbol, newest - (total - 1 - len(ids)), status)
                ids.append(order.order_id)
        return ids

    def place(self, exchange: str, symbol: str) -> str:
        """One new ``RAISED`` order created now (the trader's); its id."""
        self.exchanges.add(exchange)
        return self._new(exchange, symbol, self._venue.now_ms(), "RAISED").order_id

    def shift_times(self, delta_ms: int) -> None:
        """Move every stamped time by ``delta_ms``: the venue's clock was always this far off."""
        for order in self.orders.values():
            order.created_at += delta_ms
            if order.cancelled_at is not None:
                order.cancelled_at += delta_ms
            if order.resolve_ms is not None:
                order.resolve_ms += delta_ms
        self._used_ms = {ms + delta_ms for ms in self._used_ms}

    def cancel_all(
        self, exchange: str, symbol: str | None, spare: frozenset[str] = frozenset()
    ) -> list[str]:
        """Move every working order in scope to CANCELLATION_RAISED; return their ids.

        Orders of a symbol in ``spare`` are left working (a refused symbol).
        """
        now, now_ms = self._clock(), self._venue.now_ms()
        low, high = self.behaviour.cancel_delay
        ids: list[str] = []
        for order in self.orders.values():
            if order.exchange != exchange or (symbol is not None and order.symbol != symbol):
                continue
            if order.symbol in spare or order.status_at(now) not in ("RAISED", "OPEN"):
                continue
            delay = self._rng.uniform(low, high)
            order.status = "CANCELLATION_RAISED"
            order.cancelled_at = now_ms
            order.resolve_at = now + delay
            order.resolve_ms = now_ms + round(delay * 1000)
            if order.order_type in STOPS:
                order.final_status, order.final_exec = "CANCELLED", 0  # nothing to fill
            else:
                order.final_status, order.final_exec = self._outcome(int(order.quantity))
            ids.append(order.order_id)
        return ids

    # -- positions (contract §12) ---------------------------------------------

    def settle(self, now: float | None = None) -> None:
        """Fills of cancels that have resolved move their positions (once each)."""
        now = self._clock() if now is None else now
        for order in self.orders.values():
            if order.settled or not order.resolved(now) or not order.final_exec:
                continue
            order.settled = True
            self.positions.fill(
                order.exchange,
                order.symbol,
                order.side,
                Decimal(order.final_exec),
                Decimal(order.price),
                order.resolve_ms or self._venue.now_ms(),
            )

    def working(self, exchange: str, symbol: str) -> list[Order]:
        """The symbol's working orders now."""
        now = self._clock()
        return [
            o
            for o in self.orders.values()
            if o.exchange == exchange and o.symbol == symbol and o.status_at(now) in WORKING
        ]

    def place_stop(
        self, exchange: str, symbol: str, order_type: str, side: str, trigger_price: str
    ) -> str:
        """A resting position-level TP/SL order (quantity 0, reduce-only); its id."""
        if order_type not in STOPS:
            raise ValueError(f"order_type: expected one of {sorted(STOPS)}")
        self.exchanges.add(exchange)
        order = self._new(exchange, symbol, self._venue.now_ms(), "RAISED")
        order.order_type, order.side, order.quantity = order_type, side, 0
        order.price = "0"
        order.extra = {"trigger_price": trigger_price, "reduce_only": True}
        return order.order_id

    def place_market(
        self,
        exchange: str,
        symbol: str,
        side: str,
        quantity: Decimal,
        *,
        reduce_only: bool,
        client_order_id: str | None,
    ) -> Order:
        """A MARKET order, filled at once at the mark price (reduce-only is clipped)."""
        self.settle()
        now_ms = self._venue.now_ms()
        mark = self.positions.mark(symbol)
        filled = self.positions.fill(
            exchange, symbol, side, quantity, mark, now_ms, reduce_only=reduce_only
        )
        order = self._new(exchange, symbol, now_ms, "EXECUTED" if filled else "CANCELLED")
        order.side, order.quantity, order.final_exec = side, quantity, filled
        order.order_type, order.price, order.settled = "MARKET", str(mark), True
        order.resolve_at, order.final_status = self._clock(), order.status
        extra: dict[str, Any] = {"reduce_only": reduce_only}
        if client_order_id is not None:
            extra["client_order_id"] = client_order_id
        order.extra = extra
        return order

    def _outcome(self, quantity: int) -> tuple[str, int]:
        draw, b = self._rng.random(), self.behaviour
        if draw < b.fill_ratio:
            return "EXECUTED", quantity
        if draw < b.fill_ratio + b.partial_fill_ratio:
            return "PARTIALLY_EXECUTED", self._rng.randint(1, quantity - 1)
        if draw < b.fill_ratio + b.partial_fill_ratio + b.expire_ratio:
            return "EXPIRED", 0
        return "CANCELLED", 0

    def now(self) -> float:
        return self._clock()

    def get(self, order_id: str) -> Order | None:
        return self.orders.get(order_id)

    def forget(self, order_ids: list[str]) -> int:
        """Drop orders as if never placed (status answers 404); the number dropped."""
        return sum(self.orders.pop(order_id, None) is not None for order_id in order_ids)

    def with_status(self, now: float | None = None) -> Iterator[tuple[Order, str]]:
        """Every order with its status at ``now`` (monotonic; default: the clock's now)."""
        now = self._clock() if now is None else now
        for order in self.orders.values():
            yield order, order.status_at(now)

    def by_status(self) -> dict[str, int]:
        return dict(Counter(status for _, status in self.with_status()))

    def truth(self) -> dict[str, Any]:
        """The book's own truth: flat (nothing working), ids still working, final counts."""
        counts = Counter[str]()
        working: list[str] = []
        for order, status in self.with_status():
            if order.order_type == "MARKET":
                continue  # a close a flatten placed, not an order a kill cancels
            counts[status] += 1
            if status in WORKING:
                working.append(order.order_id)
        return {
            "flat": not working,
            "open": working,
            "cancelled": counts["CANCELLED"],
            "executed": counts["EXECUTED"],
            "partially_executed": counts["PARTIALLY_EXECUTED"],
            "expired": counts["EXPIRED"],
        }

"""The order book: open orders, cancellation, and lazily resolved statuses."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OPEN_STATUSES", "Order", "OrderBook"]

OPEN_STATUSES = frozenset({"OPEN", "RAISED", "PARTIALLY_EXECUTED"})


@dataclass(slots=True)
class Order:
    """One order.  While cancelling, its status is computed from the clock."""

    order_id: str
    exchange: str
    symbol: str
    created_at: float  # wall-clock seconds
    status: str = "OPEN"
    resolve_at: float | None = None  # monotonic time CANCELLATION_RAISED ends
    final_status: str | None = None  # CANCELLED or EXECUTED, decided at cancel time

    def status_at(self, now: float) -> str:
        if self.resolve_at is not None and self.final_status is not None and now >= self.resolve_at:
            return self.final_status
        return self.status

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status_at(now),
            "symbol": self.symbol,
            "exchange": self.exchange,
            "created_time": int(self.created_at * 1000),
        }


class OrderBook:
    """Orders by id; ``clock`` is monotonic, ``wall`` is epoch seconds."""

    def __init__(
        self,
        *,
        cancel_delay: tuple[float, float],
        fill_ratio: float,
        rng: random.Random,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._cancel_delay = cancel_delay
        self._fill_ratio = fill_ratio
        self._rng = rng
        self._clock = clock
        self._wall = wall
        self.orders: dict[str, Order] = {}
        self.exchanges: set[str] = set()

    def seed(self, exchange: str, orders: dict[str, int], status: str = "OPEN") -> list[str]:
        """Create ``count`` orders per symbol with ``status``; return their ids."""
        if status not in OPEN_STATUSES:
            raise ValueError(f"status: seeded orders must be open, got {status!r}")
        self.exchanges.add(exchange)
        ids: list[str] = []
        for symbol, count in orders.items():
            for _ in range(count):
                order_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
                self.orders[order_id] = Order(order_id, exchange, symbol, self._wall(), status)
                ids.append(order_id)
        return ids

    def cancel_all(self, exchange: str, symbol: str | None) -> list[str]:
        """Move every open order in scope to CANCELLATION_RAISED; return their ids."""
        now = self._clock()
        low, high = self._cancel_delay
        ids: list[str] = []
        for order in self.orders.values():
            if order.exchange != exchange or (symbol is not None and order.symbol != symbol):
                continue
            if order.status_at(now) not in OPEN_STATUSES:
                continue
            order.status = "CANCELLATION_RAISED"
            order.resolve_at = now + self._rng.uniform(low, high)
            filled = self._rng.random() < self._fill_ratio
            order.final_status = "EXECUTED" if filled else "CANCELLED"
            ids.append(order.order_id)
        return ids

    def get(self, order_id: str) -> Order | None:
        return self.orders.get(order_id)

    def forget(self, order_ids: list[str]) -> int:
        """Drop orders as if never placed (status answers 404); the number dropped."""
        return sum(self.orders.pop(order_id, None) is not None for order_id in order_ids)

    def by_status(self) -> dict[str, int]:
        now = self._clock()
        return dict(Counter(order.status_at(now) for order in self.orders.values()))

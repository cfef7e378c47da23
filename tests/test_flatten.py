"""The flattener against an in-process venue: the outcome of a close is learned before
anything else is sent, and no close is ever larger than the last position read."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from killswitch.config.load import parse_config
from killswitch.exchange.errors import OrderNotFound, ServerError
from killswitch.exchange.positions import PlacedOrder, Position
from killswitch.kill.exposure import Exposure, SymbolExposure
from killswitch.kill.flatten import Flattener
from killswitch.store.state import StateStore
from tests.fakes import FakeClock

CONFIG = parse_config({"targets": [{"exchange": "EXCHANGE_2"}], "flatten": {"enabled": True}})


def _position(size: str, side: str = "LONG") -> Position:
    return Position("BTCUSDT", side, Decimal(size), None, None, Decimal(100), None, None)  # type: ignore[arg-type]


class Venue:
    """Positions that closes move; scripted failures; every request recorded."""

    def __init__(self, size: str) -> None:
        self.position: Position | None = _position(size)
        self.placed: list[Decimal] = []
        self.lose_next = 0  # answers lost (the order never arrives)
        self.late_fill: Decimal | None = None  # lands right after the next close
        self.status_calls = 0

    async def positions(self, exchange: str, symbol: str) -> tuple[Position, ...]:
        return () if self.position is None else (self.position,)

    async def place_close(
        self, exchange: str, symbol: str, side: str, quantity: Decimal, client_order_id: str
    ) -> PlacedOrder:
        if self.lose_next:
            self.lose_next -= 1
            raise ServerError("place_order", "HTTP 502", status=502)
        assert self.position is not None
        assert quantity <= self.position.size  # never more than the position
        self.placed.append(quantity)
        left = self.position.size - quantity
        if self.late_fill is not None:
            left, self.late_fill = left + self.late_fill, None
        self.position = _position(str(left)) if left else None
        return PlacedOrder(f"order-{len(self.placed)}", {})

    async def order_status(self, order_id: str) -> Any:
        self.status_calls += 1
        return SimpleNamespace(status="EXECUTED")

    async def open_orders(self, exchange: str, symbol: str | None = None) -> Any:
        return SimpleNamespace(orders=())

    async def closed_orders(self, exchange: str, symbol: str | None = None) -> Any:
        return SimpleNamespace(orders=())


async def _drive(clock: FakeClock, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    while not task.done():
        await clock.advance(0.5)
    await task


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = StateStore(tmp_path / "state.db")
    store.open()
    yield store
    store.close()


async def _flatten(venue: Venue, store: StateStore) -> SymbolExposure:
    clock = FakeClock()
    flattener = Flattener(lambda: CONFIG, venue, venue, store, clock)
    sym = SymbolExposure("EXCHANGE_2", "BTCUSDT", (_position("5"),), flat_of_orders=True)
    await _drive(clock, flattener.flatten(Exposure("k1", [sym], clock.time())))
    return sym


async def test_a_lost_answer_of_an_order_that_never_arrived_is_sent_again_once_proven(
    store: StateStore,
) -> None:
    """502 and the order is nowhere (listings twice, position unchanged): only then a second
    close, of the same size; the position ends closed, one order placed in all."""
    venue = Venue("5")
    venue.lose_next = 1
    sym = await _flatten(venue, store)
    assert venue.placed == [Decimal(5)]
    assert venue.position is None
    assert sym.flatten == {"outcome": "closed", "closed": 1}
    assert await asyncio.wrap_future(store.flatten_open()) == []


async def test_a_fill_after_the_close_gets_one_more_close_of_what_is_left(
    store: StateStore,
) -> None:
    """The close fills, a late fill leaves 2 more: the first order is proven terminal by its
    status, then one close of 2 (the last read), never of the original 5 again."""
    venue = Venue("5")
    venue.late_fill = Decimal(2)
    await _flatten(venue, store)
    assert venue.placed == [Decimal(5), Decimal(2)]
    assert venue.status_calls == 1
    assert venue.position is None


async def test_a_symbol_not_proven_flat_of_orders_is_never_closed(store: StateStore) -> None:
    """flat_of_orders false: flatten.skipped, no order."""
    venue = Venue("5")
    clock = FakeClock()
    flattener = Flattener(lambda: CONFIG, venue, venue, store, clock)
    sym = SymbolExposure("EXCHANGE_2", "BTCUSDT", (_position("5"),), flat_of_orders=False)
    await _drive(clock, flattener.flatten(Exposure("k1", [sym], clock.time())))
    assert venue.placed == []
    assert sym.flatten is not None
    assert sym.flatten["outcome"] == "skipped"


async def test_an_acknowledged_order_the_venue_then_denies_is_never_sent_twice(
    store: StateStore,
) -> None:
    """The close is acknowledged (an order id) but does not fill, and its status answers 404:
    that is not proof it was never placed, so no second order: flatten.failed, loud."""
    venue = Venue("5")
    placed: list[Decimal] = []

    async def accept_without_filling(
        exchange: str, symbol: str, side: str, quantity: Decimal, client_order_id: str
    ) -> PlacedOrder:
        placed.append(quantity)
        return PlacedOrder("order-1", {})

    async def not_found(order_id: str) -> Any:
        raise OrderNotFound("order_status", "HTTP 404", status=404)

    venue.place_close = accept_without_filling  # type: ignore[method-assign]
    venue.order_status = not_found  # type: ignore[method-assign]
    sym = await _flatten(venue, store)
    assert placed == [Decimal(5)]
    assert sym.flatten is not None
    assert sym.flatten["outcome"] == "failed"
    (left,) = await asyncio.wrap_future(store.flatten_open())
    assert (left.state, left.order_id) == ("unknown", "order-1")

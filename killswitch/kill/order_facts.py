"""What a kill learned of its own orders: each one's symbol and type (contract §12).

``kill.exposure`` reads the positions of every symbol the kill's orders were on
and counts, per symbol, the ``STOP_MARKET`` / ``TAKE_PROFIT_MARKET`` orders it
cancelled.  ``cancel_all`` answers only ids; the listings and status answers the
kill pays for anyway show each order's symbol and type.  :class:`RecordingListings`
and :class:`RecordingStatus` pass those answers through unchanged and tell
:class:`OrderFacts` what they showed: no request of their own, nothing on the
path of ``cancel_all`` (it is the client's own bound method).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from killswitch.kill.flat import ListedOrder, Listings

__all__ = ["STOP_TYPES", "OrderFacts", "RecordingListings", "RecordingStatus", "SymbolKey"]

STOP_TYPES: Final = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET"})
_FILLED: Final = frozenset({"EXECUTED", "PARTIALLY_EXECUTED"})

SymbolKey = tuple[str, str]  # (exchange, symbol)


class SeenOrder(Protocol):
    """An order as a listing or a status answer showed it (``VenueOrder``)."""

    @property
    def order_id(self) -> str: ...

    @property
    def exchange(self) -> str: ...

    @property
    def symbol(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def raw(self) -> Mapping[str, Any]: ...


class OrderFacts:
    """What the kill learned of its orders: symbol and type by id (fed by the recording
    listings and status source the runner is given; costs no request)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str, str, str]] = {}  # id -> exchange, symbol, type, st

    def seen(self, order: SeenOrder) -> None:
        known = self._seen.get(order.order_id)
        exchange = order.exchange or (known[0] if known else "")
        symbol = order.symbol or (known[1] if known else "")
        kind = order.raw.get("order_type")
        order_type = kind if isinstance(kind, str) else (known[2] if known else "")
        self._seen[order.order_id] = (exchange, symbol, order_type, order.status)

    def symbols(self, order_ids: Iterable[str], default_exchange: str) -> list[SymbolKey]:
        keys: dict[SymbolKey, None] = {}
        for order_id in order_ids:
            fact = self._seen.get(order_id)
            if fact is not None and fact[1]:
                keys[(fact[0] or default_exchange, fact[1])] = None
        return list(keys)

    def stops_cancelled(
        self, statuses: Mapping[str, str], default_exchange: str
    ) -> Counter[SymbolKey]:
        """TP/SL orders of the kill not known to have filled, by symbol."""
        counts: Counter[SymbolKey] = Counter()
        for order_id, status in statuses.items():
            fact = self._seen.get(order_id)
            if fact is None or fact[2] not in STOP_TYPES:
                continue
            if (status or fact[3]) in _FILLED:
                continue
            counts[(fact[0] or default_exchange, fact[1])] += 1
        return counts

    def clear(self) -> None:
        self._seen.clear()


class _Client(Protocol):
    async def cancel_all(self, exchange: str, symbol: str | None = None) -> list[str]: ...

    async def order_status(self, order_id: str) -> Any: ...


class RecordingStatus:
    """The runner's exchange: ``cancel_all`` is the client's own; status answers are seen."""

    def __init__(self, client: _Client, facts: OrderFacts) -> None:
        self.cancel_all = client.cancel_all  # the very same bound method: no extra frame
        self._client = client
        self._facts = facts

    async def order_status(self, order_id: str) -> Any:
        order = await self._client.order_status(order_id)
        if hasattr(order, "raw"):
            self._facts.seen(order)
        return order


class RecordingListings:
    """:class:`~killswitch.kill.flat.Listings` that tells :class:`OrderFacts` what it listed."""

    def __init__(self, listings: Listings, facts: OrderFacts) -> None:
        self._listings = listings
        self._facts = facts

    def _saw(self, found: Mapping[str, ListedOrder]) -> Mapping[str, ListedOrder]:
        for order in found.values():
            if hasattr(order, "raw"):
                self._facts.seen(order)  # type: ignore[arg-type]  # a VenueOrder
        return found

    async def list_open(
        self, exchange: str, symbol: str | None, *, deep: bool
    ) -> Mapping[str, ListedOrder]:
        return self._saw(await self._listings.list_open(exchange, symbol, deep=deep))

    async def find_closed(
        self, exchange: str, symbol: str | None, wanted: set[str], *, max_pages: int
    ) -> Mapping[str, ListedOrder]:
        found = await self._listings.find_closed(exchange, symbol, wanted, max_pages=max_pages)
        return self._saw(found)

    async def closed_since(
        self, exchange: str, symbol: str | None, since_ms: int
    ) -> Mapping[str, ListedOrder]:
        return self._saw(await self._listings.closed_since(exchange, symbol, since_ms))

    def venue_ms(self, wall: float) -> int:
        return self._listings.venue_ms(wall)

    def closed_budget(self) -> int:
        return self._listings.closed_budget()

    def open_budget(self) -> int:
        return self._listings.open_budget()

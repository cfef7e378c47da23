"""What the kill engine asks of the venue's listings (contract §1, the flat proof).

:class:`Listings` is the engine's view: a complete open-orders listing of one
target, closed-order pages searched for given ids, the orders closed since a
moment (to find what a lost ``cancel_all`` answer would have named), the
budgets, and the venue's clock.  :class:`VenueListings` implements it over the
exchange client and :mod:`killswitch.exchange.listing` (the one cursor pager);
tests give the engine in-process fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from killswitch.exchange import listing
from killswitch.exchange.client import CLOSED_ORDERS, OPEN_ORDERS, ExchangeClient
from killswitch.log import get_logger

__all__ = ["RECOVER_MAX_PAGES", "ListedOrder", "Listings", "VenueListings"]

RECOVER_MAX_PAGES: Final = 100  # closed_since() reads at most this many pages


class ListedOrder(Protocol):
    """An order as a listing shows it (``VenueOrder``)."""

    @property
    def order_id(self) -> str: ...

    @property
    def symbol(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def created_at(self) -> int: ...


class Listings(Protocol):
    async def list_open(
        self, exchange: str, symbol: str | None, *, deep: bool
    ) -> Mapping[str, ListedOrder]:
        """Every open order of the target, by id (deep: back to ``flat.lookback_days``).

        Raises ``ExchangeError`` when a call fails: the caller retries."""
        ...

    async def find_closed(
        self, exchange: str, symbol: str | None, wanted: set[str], *, max_pages: int
    ) -> Mapping[str, ListedOrder]:
        """The ``wanted`` ids found in at most ``max_pages`` closed-order pages, newest first."""
        ...

    async def closed_since(
        self, exchange: str, symbol: str | None, since_ms: int
    ) -> Mapping[str, ListedOrder]:
        """Orders that reached a closed status at or after ``since_ms`` (venue clock)."""
        ...

    def venue_ms(self, wall: float) -> int:
        """The venue's clock (ms) at local wall-clock time ``wall`` (seconds)."""
        ...

    def closed_budget(self) -> int:
        """Closed-order pages that could be requested now without waiting."""
        ...

    def open_budget(self) -> int:
        """Open-order pages that could be requested now without waiting."""
        ...


class VenueListings:
    """:class:`Listings` over the exchange client's listing calls (contract §2)."""

    def __init__(self, client: ExchangeClient, lookback_days: Callable[[], float]) -> None:
        self._client = client
        self._lookback_days = lookback_days
        self._log = get_logger(component="flat")

    async def list_open(
        self, exchange: str, symbol: str | None, *, deep: bool
    ) -> Mapping[str, ListedOrder]:
        found = await listing.list_open(
            self._client, exchange, symbol, lookback_days=self._lookback_days(), deep=deep
        )
        return found.orders

    async def find_closed(
        self, exchange: str, symbol: str | None, wanted: set[str], *, max_pages: int
    ) -> Mapping[str, ListedOrder]:
        since = self._client.venue_now_ms() - int(self._lookback_days() * listing.DAY_MS)
        return await listing.find_closed(
            self._client, exchange, symbol, wanted, since_ms=since, max_pages=max_pages
        )

    async def closed_since(
        self, exchange: str, symbol: str | None, since_ms: int
    ) -> Mapping[str, ListedOrder]:
        """Closed orders updated at or after ``since_ms`` (at most
        :data:`RECOVER_MAX_PAGES` closed pages of the lookback, newest first)."""
        found, truncated = await listing.closed_since(
            self._client,
            exchange,
            symbol,
            since_ms,
            lookback_days=self._lookback_days(),
            max_pages=RECOVER_MAX_PAGES,
        )
        if truncated:
            self._log.warning(
                "flat.recover_truncated", exchange=exchange, symbol=symbol, pages=RECOVER_MAX_PAGES
            )
        return found

    def venue_ms(self, wall: float) -> int:
        return self._client.venue_now_ms() - int((time.time() - wall) * 1000)

    def closed_budget(self) -> int:
        return self._client.limiters[CLOSED_ORDERS].available()

    def open_budget(self) -> int:
        return self._client.limiters[OPEN_ORDERS].available()

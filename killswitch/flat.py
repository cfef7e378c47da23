"""What the kill engine asks of the venue's listings (contract §1, the flat proof).

:class:`Listings` is the engine's view: a complete open-orders listing of one
target, closed-order pages searched for given ids, the orders closed since a
moment (to find what a lost ``cancel_all`` answer would have named), and the
venue's clock.  :class:`VenueListings` implements it over the exchange client
and :mod:`killswitch.listing`; tests give the engine in-process fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["ListedOrder", "Listings"]


class ListedOrder(Protocol):
    """An order as a listing shows it (``VenueOrder``)."""

    @property
    def order_id(self) -> str: ...

    @property
    def symbol(self) -> str: ...

    @property
    def status(self) -> str: ...


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

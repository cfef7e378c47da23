"""Complete listings of a target's orders, paged and windowed (contract §1, §2; VENUE.md).

The venue's listings answer at most 50 orders a call, newest first by
``created_at``, in windows of at most 7 days; with no times given the answer
is the latest orders of the last 7 days.  ``cursor`` is the ``created_at`` of
the oldest order returned: passed as the next call's (inclusive) ``to_time`` it
pages further back, so the next page may repeat orders already seen —
everything here is de-duplicated by ``order_id``.

Every call goes through the client, hence through that listing's own limiter.
A call that fails raises its :class:`~killswitch.exchange.errors.ExchangeError`: the
caller retries (a partial listing is never presented as complete).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from killswitch.exchange.orders import LISTING_LIMIT, OrderPage, VenueOrder
from killswitch.log import get_logger

__all__ = [
    "DAY_MS",
    "LISTING_LIMIT",
    "WINDOW_MS",
    "Listing",
    "closed_since",
    "find_closed",
    "list_open",
]

DAY_MS: Final = 24 * 3600 * 1000
WINDOW_MS: Final = 7 * DAY_MS
"""The widest window one listing call may ask for."""
OVERLAP_MS: Final = 60_000
"""Older windows start this far inside the default one: our estimate of the venue's
clock may be off by a little, and an overlap costs nothing (ids are de-duplicated)."""


class ListingClient(Protocol):
    async def open_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = ...,
        from_time: int | None = None,
        to_time: int | None = None,
    ) -> OrderPage: ...

    async def closed_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = ...,
        from_time: int | None = None,
        to_time: int | None = None,
        status: str | None = None,
    ) -> OrderPage: ...

    def venue_now_ms(self) -> int: ...


Fetch = Callable[..., Awaitable[OrderPage]]


@dataclass(frozen=True)
class Listing:
    """What one complete open-orders listing of a target found."""

    orders: dict[str, VenueOrder]  # the open ones, by id
    requests: int  # listing calls it took


def _windows(now_ms: int, oldest_ms: int) -> Iterator[tuple[int | None, int | None]]:
    """The default window (no times), then 7-day windows back to ``oldest_ms``."""
    yield None, None
    covered = now_ms - WINDOW_MS  # the default window reaches about this far back
    to = covered + OVERLAP_MS
    # A sliver within OVERLAP_MS of the lookback limit is not worth a request.
    while covered > oldest_ms + OVERLAP_MS:
        frm = max(oldest_ms, to - WINDOW_MS + 1)
        yield frm, to
        covered, to = frm, frm - 1


class _Scan:
    """Pages one listing window after another, newest first, collecting orders by id."""

    def __init__(
        self,
        fetch: Fetch,
        exchange: str,
        symbol: str | None,
        *,
        now_ms: int,
        oldest_ms: int,
        done: Callable[[dict[str, VenueOrder]], bool] = lambda found: False,
        max_pages: int | None = None,
    ) -> None:
        self.fetch = fetch
        self.exchange = exchange
        self.symbol = symbol
        self.now_ms = now_ms
        self.oldest_ms = oldest_ms
        self.done = done
        self.max_pages = max_pages
        self.found: dict[str, VenueOrder] = {}
        self.requests = 0

    async def run(self) -> None:
        for from_time, to_time in _windows(self.now_ms, self.oldest_ms):
            if not await self._window(from_time, to_time):
                return

    async def _window(self, frm: int | None, to: int | None) -> bool:
        """Page one window; False when the whole scan is over."""
        while True:
            if self.max_pages is not None and self.requests >= self.max_pages:
                return False
            page = await self.fetch(
                self.exchange,
                self.symbol,
                limit=LISTING_LIMIT,
                from_time=frm,
                to_time=to,
            )
            self.requests += 1
            new = 0
            for order in page.orders:
                if order.order_id not in self.found:
                    self.found[order.order_id] = order
                    new += 1
            if self.done(self.found):
                return False
            if len(page.orders) < LISTING_LIMIT or page.cursor is None:
                return True  # this window is exhausted
            if page.cursor < self.oldest_ms:
                return False  # paged past the oldest time that matters
            cursor = page.cursor
            if to is not None and cursor >= to and new == 0:
                # A full page that only repeats what was seen, at a cursor that does not
                # move: more than LIMIT orders share the created_at millisecond `to`.
                # Inclusive to_time can never page past them, so step to cursor - 1;
                # the orders at that millisecond beyond the ones shown cannot be listed.
                get_logger(component="listing").warning(
                    "listing.crowded_ms",
                    exchange=self.exchange,
                    symbol=self.symbol,
                    created_at=to,
                )
                cursor = to - 1
            elif to is not None and cursor > to:
                cursor = to  # a cursor after to_time would page forward: never
            if frm is None:  # paging the default window: keep its bounds explicit
                frm = self.now_ms - WINDOW_MS + 1
            if cursor < frm:
                return True
            to = cursor


async def list_open(
    client: ListingClient,
    exchange: str,
    symbol: str | None,
    *,
    lookback_days: float,
    deep: bool = True,
) -> Listing:
    """Every open order of one target, by id.

    ``deep=True``: the default window, then 7-day windows (venue clock) back to
    ``lookback_days``, each paged by cursor while a page is full.  ``deep=False``
    (the guard): the default window only, paging while pages are full.
    """
    now = client.venue_now_ms()
    oldest = now - (int(lookback_days * DAY_MS) if deep else WINDOW_MS)
    scan = _Scan(client.open_orders, exchange, symbol, now_ms=now, oldest_ms=oldest)
    await scan.run()
    return Listing(scan.found, scan.requests)


async def find_closed(
    client: ListingClient,
    exchange: str,
    symbol: str | None,
    wanted: set[str],
    *,
    since_ms: int | None,
    max_pages: int,
) -> dict[str, VenueOrder]:
    """The wanted orders found in the closed-orders listing, by id.

    Pages newest first (by ``created_at``) until every wanted id is found, the
    listing reaches ``since_ms`` (the oldest ``created_at`` that matters; None: the
    default 7-day window), or ``max_pages`` calls were spent.  An order that ended in
    a status the closed listing does not show is simply not found.
    """
    if not wanted or max_pages < 1:
        return {}
    now = client.venue_now_ms()
    oldest = now - WINDOW_MS if since_ms is None else since_ms
    scan = _Scan(
        client.closed_orders,
        exchange,
        symbol,
        now_ms=now,
        oldest_ms=oldest,
        done=lambda found: wanted.issubset(found),
        max_pages=max_pages,
    )
    await scan.run()
    return {i: o for i, o in scan.found.items() if i in wanted}


async def closed_since(
    client: ListingClient,
    exchange: str,
    symbol: str | None,
    since_ms: int,
    *,
    lookback_days: float,
    max_pages: int,
) -> tuple[dict[str, VenueOrder], bool]:
    """Closed orders updated at or after ``since_ms`` (venue clock), by id, and whether
    ``max_pages`` cut the scan short.  Pages the whole lookback, newest first: an order
    closed since then may have been created long before."""
    now = client.venue_now_ms()
    scan = _Scan(
        client.closed_orders,
        exchange,
        symbol,
        now_ms=now,
        oldest_ms=now - int(lookback_days * DAY_MS),
        max_pages=max_pages,
    )
    await scan.run()
    found = {i: o for i, o in scan.found.items() if (o.updated_at or o.created_at) >= since_ms}
    return found, scan.requests >= max_pages

"""Complete listings: windows, cursor paging, de-duplication, and no endless loop.

A small in-memory venue applies the documented listing rules (newest first by
``created_at``, inclusive bounds, at most 50 a page, at most 7 days a window,
the latest 7 days when no time is given) and refuses a call that breaks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import structlog

from killswitch.exchange.errors import RejectedRequest, ServerError
from killswitch.exchange.listing import DAY_MS, WINDOW_MS, find_closed, list_open
from killswitch.exchange.orders import LISTING_LIMIT, OrderPage, VenueOrder

NOW = 1_780_000_000_000


def venue_order(order_id: str, created_at: int, status: str = "RAISED") -> VenueOrder:
    return VenueOrder(order_id, "EXCHANGE_2", "BTCUSDT", status, created_at, None, None, None, {})


@dataclass
class FakeVenue:
    """Listings by the venue's rules; ``calls`` records (endpoint, from_time, to_time)."""

    open: list[VenueOrder] = field(default_factory=list)
    closed: list[VenueOrder] = field(default_factory=list)
    calls: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    fail_on_call: int | None = None

    def venue_now_ms(self) -> int:
        return NOW

    def _page(
        self,
        name: str,
        orders: list[VenueOrder],
        limit: int,
        from_time: int | None,
        to_time: int | None,
    ) -> OrderPage:
        self.calls.append((name, from_time, to_time))
        if self.fail_on_call == len(self.calls):
            raise ServerError(name, "HTTP 502", status=502)
        if not 1 <= limit <= LISTING_LIMIT:
            raise RejectedRequest(name, "limit", status=422)
        hi = NOW if to_time is None else to_time
        lo = hi - WINDOW_MS if from_time is None else from_time
        if hi - lo > WINDOW_MS:
            raise RejectedRequest(name, "window wider than 7 days", status=422)
        inside = [o for o in orders if lo <= o.created_at <= hi]
        inside.sort(key=lambda o: (-o.created_at, o.order_id))
        page = tuple(inside[:limit])
        return OrderPage(page, page[-1].created_at if page else None)

    async def open_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = LISTING_LIMIT,
        from_time: int | None = None,
        to_time: int | None = None,
    ) -> OrderPage:
        return self._page("open", self.open, limit, from_time, to_time)

    async def closed_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = LISTING_LIMIT,
        from_time: int | None = None,
        to_time: int | None = None,
        status: str | None = None,
    ) -> OrderPage:
        return self._page("closed", self.closed, limit, from_time, to_time)


def spread(prefix: str, n: int, newest: int, step: int = 1000) -> list[VenueOrder]:
    return [venue_order(f"{prefix}{i}", newest - i * step) for i in range(n)]


async def test_guard_listing_pages_the_default_window_while_pages_are_full() -> None:
    """deep=False: 120 recent orders take three pages, each found once; no time on the first."""
    venue = FakeVenue(open=spread("o", 120, NOW - 5000))
    listing = await list_open(venue, "EXCHANGE_2", None, lookback_days=30, deep=False)

    assert set(listing.orders) == {f"o{i}" for i in range(120)}
    assert listing.requests == len(venue.calls) == 3
    assert venue.calls[0] == ("open", None, None)
    assert all(to is not None for _, _, to in venue.calls[1:])  # paged by cursor


async def test_guard_listing_does_not_reach_past_the_default_window() -> None:
    """deep=False never asks for an older window: a 10-day-old order stays unseen."""
    venue = FakeVenue(open=[venue_order("old", NOW - 10 * DAY_MS), venue_order("new", NOW - 1)])
    listing = await list_open(venue, "EXCHANGE_2", None, lookback_days=30, deep=False)

    assert set(listing.orders) == {"new"}
    assert listing.requests == 1


async def test_deep_listing_finds_orders_10_and_20_days_old_in_7_day_windows() -> None:
    """deep=True walks 7-day windows back to lookback_days; every call spans at most 7 days."""
    venue = FakeVenue(
        open=[
            venue_order("new", NOW - 1000),
            venue_order("ten", NOW - 10 * DAY_MS),
            venue_order("twenty", NOW - 20 * DAY_MS),
            venue_order("forty", NOW - 40 * DAY_MS),
        ]
    )
    listing = await list_open(venue, "EXCHANGE_2", "BTCUSDT", lookback_days=30)

    assert set(listing.orders) == {"new", "ten", "twenty"}
    windows = [(frm, to) for _, frm, to in venue.calls]
    assert windows[0] == (None, None)
    assert all(
        frm is not None and to is not None and to - frm < WINDOW_MS for frm, to in windows[1:]
    )
    assert min(frm for frm, _ in windows[1:] if frm is not None) == NOW - 30 * DAY_MS
    assert listing.requests == 1 + 4  # default window, then 30 days in 7-day steps


async def test_deep_listing_with_the_default_lookback_is_one_call() -> None:
    """lookback_days = 7 is the default window: one call when a page is not full."""
    venue = FakeVenue(open=spread("o", 3, NOW))
    listing = await list_open(venue, "EXCHANGE_2", None, lookback_days=7)
    assert (len(listing.orders), listing.requests) == (3, 1)


async def test_paging_by_inclusive_cursor_de_duplicates_repeated_orders() -> None:
    """Orders sharing the cursor's millisecond appear on two pages but count once."""
    same_ms = [venue_order(f"s{i}", NOW - 50_000) for i in range(10)]
    venue = FakeVenue(open=spread("o", 45, NOW - 1000) + same_ms + spread("p", 30, NOW - 60_000))
    listing = await list_open(venue, "EXCHANGE_2", None, lookback_days=7, deep=False)

    assert len(listing.orders) == 85
    assert listing.requests == 2


async def test_more_than_a_page_in_one_millisecond_cannot_loop_forever() -> None:
    """60 orders in one ms: the scan steps past that ms (and says so) instead of looping."""
    crowd = [venue_order(f"c{i:02}", NOW - 10_000) for i in range(60)]
    older = spread("old", 5, NOW - 20_000)
    venue = FakeVenue(open=crowd + older)
    with structlog.testing.capture_logs() as events:
        listing = await list_open(venue, "EXCHANGE_2", None, lookback_days=7, deep=False)

    assert len([i for i in listing.orders if i.startswith("c")]) == LISTING_LIMIT
    assert {f"old{i}" for i in range(5)} <= set(listing.orders)
    assert listing.requests == 3
    crowded = [e for e in events if e["event"] == "listing.crowded_ms"]
    assert [e["created_at"] for e in crowded] == [NOW - 10_000]


async def test_a_failing_listing_call_raises() -> None:
    """A failure part-way is raised, never returned as a complete listing."""
    venue = FakeVenue(open=spread("o", 120, NOW), fail_on_call=2)
    with pytest.raises(ServerError):
        await list_open(venue, "EXCHANGE_2", None, lookback_days=7)


async def test_find_closed_stops_once_every_wanted_id_is_found() -> None:
    """find_closed pages newest first and stops as soon as all wanted ids were seen."""
    venue = FakeVenue(closed=spread("x", 200, NOW))
    found = await find_closed(venue, "EXCHANGE_2", None, {"x3", "x60"}, since_ms=None, max_pages=10)

    assert set(found) == {"x3", "x60"}
    assert found["x60"].created_at == NOW - 60_000
    assert len(venue.calls) == 2


async def test_find_closed_respects_max_pages_and_since() -> None:
    """It spends at most max_pages, and stops once the listing is older than since_ms."""
    venue = FakeVenue(closed=spread("x", 200, NOW))
    found = await find_closed(venue, "EXCHANGE_2", None, {"x199"}, since_ms=None, max_pages=2)
    assert found == {}
    assert len(venue.calls) == 2

    venue = FakeVenue(closed=spread("x", 200, NOW))
    found = await find_closed(
        venue, "EXCHANGE_2", None, {"ghost"}, since_ms=NOW - 30_000, max_pages=10
    )
    assert found == {}
    assert len(venue.calls) == 1  # the first page already reached since_ms


async def test_find_closed_reaches_an_older_window_for_an_old_since() -> None:
    """With since_ms 12 days back, an order closed but created 9 days ago is found."""
    venue = FakeVenue(closed=[venue_order("old", NOW - 9 * DAY_MS, "CANCELLED")])
    found = await find_closed(
        venue, "EXCHANGE_2", None, {"old"}, since_ms=NOW - 12 * DAY_MS, max_pages=5
    )
    assert found["old"].status == "CANCELLED"
    assert len(venue.calls) == 2

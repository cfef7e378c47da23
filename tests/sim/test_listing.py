"""The simulated exchange's open- and closed-order listings and their rules (VENUE.md)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeClock
from tests.sim.client import (
    CLOSED,
    WEEK_MS,
    SimFactory,
    cancel_all,
    ids_of,
    listing,
    status_of,
)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 51}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": "50"}, "limit"),
        ({"from_time": 0, "to_time": WEEK_MS + 1}, "from_time/to_time"),
        ({"from_time": 10, "to_time": 9}, "from_time"),
        ({"to_time": "now"}, "to_time"),
        ({"symbol": 1}, "symbol"),
        ({"exchange": "NOPE"}, "exchange"),
        ({"status": "CANCELLED"}, "status"),
    ],
)
async def test_open_listing_refuses_bad_fields_with_422_naming_them(
    make_sim: SimFactory, session: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    """limit over 50, a window over 7 days, a bad time/symbol/exchange/status: 422 naming it."""
    sim, url = await make_sim()

    status, answer, _ = await listing(session, sim, url, **body)

    assert status == 422
    assert answer["message"].startswith(field)


async def test_a_window_of_exactly_seven_days_with_limit_fifty_is_accepted(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """from_time to to_time spanning exactly 7 days and limit=50 are within the rules."""
    sim, url = await make_sim()
    now = sim.clock.now_ms()

    status, _, _ = await listing(session, sim, url, limit=50, from_time=now - WEEK_MS, to_time=now)

    assert status == 200


async def test_default_listing_is_the_latest_fifty_newest_first_with_the_cursor(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """With no times: the 50 newest working orders, newest first; cursor = oldest created_at."""
    sim, url = await make_sim()
    ids = sim.seed({"BTCUSDT": 70})

    status, body, _ = await listing(session, sim, url)
    orders = body["data"]["orders"]
    created = [o["created_at"] for o in orders]

    assert status == 200
    assert [o["order_id"] for o in orders] == ids[::-1][:50]
    assert created == sorted(created, reverse=True)
    assert body["data"]["cursor"] == created[-1]


async def test_bounds_are_inclusive_and_the_next_page_repeats_the_order_at_the_cursor(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """from_time and to_time include orders created exactly then; to_time=cursor repeats one."""
    sim, url = await make_sim()
    ids = sim.seed({"BTCUSDT": 10})
    created = {i: sim.book.orders[i].created_at for i in ids}

    window = (await listing(session, sim, url, from_time=created[ids[2]], to_time=created[ids[6]]))[
        1
    ]
    first = (await listing(session, sim, url, limit=4))[1]
    second = (await listing(session, sim, url, limit=4, to_time=first["data"]["cursor"]))[1]

    assert ids_of(window) == ids[6:1:-1]
    assert ids_of(first) == ids[9:5:-1]
    assert first["data"]["cursor"] == created[ids[6]]
    assert ids_of(second) == ids[6:2:-1]  # ids[6] again: the venue's inclusive to_time


async def test_paging_by_cursor_walks_every_order_once_after_deduplication(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Paging 120 orders by cursor (limit 50) finds all of them, then an empty-cursor page."""
    sim, url = await make_sim()
    seeded = set(sim.seed({"BTCUSDT": 80, "ETHUSDT": 40}))
    seen: list[str] = []
    to_time: int | None = None
    pages = 0

    while True:
        paged: dict[str, Any] = {"to_time": to_time} if to_time else {}
        body = (await listing(session, sim, url, **paged))[1]
        pages += 1
        fresh = [i for i in ids_of(body) if i not in seen]
        seen += fresh
        if not fresh:
            break
        to_time = body["data"]["cursor"]

    assert set(seen) == seeded
    assert len(seen) == 120
    assert pages == 4  # 50 + 49 new + 21 new + one page that only repeats the cursor


async def test_an_empty_page_has_a_null_cursor(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A listing that matches nothing answers no orders and cursor null."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 2})

    body = (await listing(session, sim, url, symbol="ETHUSDT"))[1]

    assert body == {"data": {"orders": [], "cursor": None}}


async def test_symbol_filter_lists_only_that_symbol(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """The optional symbol narrows a listing to that symbol's orders."""
    sim, url = await make_sim()
    eth = sim.seed({"ETHUSDT": 3})
    sim.seed({"BTCUSDT": 4})

    body = (await listing(session, sim, url, symbol="ETHUSDT"))[1]

    assert sorted(ids_of(body)) == sorted(eth)


async def test_orders_older_than_seven_days_only_show_in_an_older_window(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Orders 10 and 20 days old are missing from the default listing and found further back."""
    sim, url = await make_sim()
    recent = sim.seed({"BTCUSDT": 2})
    ten = sim.seed({"BTCUSDT": 3}, age_days=10)
    twenty = sim.seed({"ETHUSDT": 1}, age_days=20)
    now = sim.clock.now_ms()

    default = ids_of((await listing(session, sim, url))[1])
    week_two = ids_of(
        (await listing(session, sim, url, from_time=now - 2 * WEEK_MS, to_time=now - WEEK_MS))[1]
    )
    week_three = ids_of(
        (await listing(session, sim, url, from_time=now - 3 * WEEK_MS, to_time=now - 2 * WEEK_MS))[
            1
        ]
    )
    cancelled = (await cancel_all(session, sim, url))[1]["data"]["orders_ids"]

    assert sorted(default) == sorted(recent)
    assert sorted(week_two) == sorted(ten)
    assert week_three == twenty
    assert sorted(cancelled) == sorted(recent + ten + twenty)  # cancel_all has no window


async def test_cancellation_raised_orders_stay_in_the_open_listing_until_they_resolve(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Orders being cancelled are listed open as CANCELLATION_RAISED, then move to closed."""
    sim, url = await make_sim(cancel_delay=(1.0, 1.0))
    ids = sim.seed({"BTCUSDT": 3})

    await cancel_all(session, sim, url)
    during = (await listing(session, sim, url))[1]["data"]["orders"]
    closed_during = (await listing(session, sim, url, CLOSED))[1]
    await clock.advance(1.0)
    after = (await listing(session, sim, url))[1]
    closed_after = (await listing(session, sim, url, CLOSED))[1]

    assert sorted(o["order_id"] for o in during) == sorted(ids)
    assert {o["status"] for o in during} == {"CANCELLATION_RAISED"}
    assert ids_of(closed_during) == []
    assert ids_of(after) == []
    assert sorted(ids_of(closed_after)) == sorted(ids)


async def test_closed_listing_shows_only_its_three_statuses_and_filters_by_one(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The closed listing shows EXECUTED, PARTIALLY_EXECUTED, CANCELLED; status picks one."""
    sim, url = await make_sim(fill_ratio=0.3, partial_fill_ratio=0.3, seed=11)
    ids = sim.seed({"BTCUSDT": 40})
    working = sim.seed({"ETHUSDT": 2}, status="OPEN")
    await cancel_all(session, sim, url, symbol="BTCUSDT")
    await clock.advance(0.3)
    truth = {i: sim.book.orders[i].status_at(clock.monotonic()) for i in ids}

    everything = (await listing(session, sim, url, CLOSED))[1]
    by_status = {
        s: sorted(ids_of((await listing(session, sim, url, CLOSED, status=s))[1]))
        for s in ("EXECUTED", "PARTIALLY_EXECUTED", "CANCELLED")
    }
    refused, error, _ = await listing(session, sim, url, CLOSED, status="RAISED")

    assert sorted(ids_of(everything)) == sorted(ids)
    assert not set(working) & set(ids_of(everything))
    assert all(by_status[s] == sorted(i for i, t in truth.items() if t == s) for s in by_status)
    assert all(by_status.values())  # the seed gives each outcome at least one order
    assert (refused, error["message"].startswith("status")) == (422, True)


async def test_expired_orders_are_terminal_but_not_in_the_closed_listing(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """expire_ratio=1: cancels end EXPIRED, in neither listing; only their own status shows it."""
    sim, url = await make_sim(expire_ratio=1.0)
    ids = sim.seed({"BTCUSDT": 3})

    await cancel_all(session, sim, url)
    await clock.advance(0.3)
    open_now = ids_of((await listing(session, sim, url))[1])
    closed = ids_of((await listing(session, sim, url, CLOSED))[1])
    status = (await status_of(session, sim, url, ids[0]))[1]["data"]["order"]["status"]

    assert (open_now, closed, status) == ([], [], "EXPIRED")
    assert sim.stats()["expired"] == 3
    assert sim.stats()["open"] == []


async def test_more_than_a_page_in_one_millisecond_cannot_be_paged_past(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """60 orders seeded in one ms: to_time=cursor shows the same 50 again; the other 10 hide."""
    sim, url = await make_sim()
    crowded = sim.seed({"BTCUSDT": 60}, same_ms=True)

    first = (await listing(session, sim, url))[1]
    again = (await listing(session, sim, url, to_time=first["data"]["cursor"]))[1]
    created = {sim.book.orders[i].created_at for i in crowded}

    assert len(created) == 1
    assert first["data"]["cursor"] == created.pop()
    assert ids_of(again) == ids_of(first)
    assert len(set(ids_of(first))) == 50

"""The simulated exchange's bad-day switches: a rejected symbol, fill behaviour, a trader."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeClock
from tests.sim.client import (
    SimFactory,
    admin,
    cancel_all,
    ids_of,
    listing,
)


async def test_a_rejected_symbol_refuses_cancel_all_until_lifted(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """While BTCUSDT is rejected, its cancel_all (and an unscoped one) get 422; lifted, it works."""
    sim, url = await make_sim()
    btc = sim.seed({"BTCUSDT": 2})
    eth = sim.seed({"ETHUSDT": 1})

    switched = await admin(
        session, url, "reject", {"symbol": "BTCUSDT", "status": 422, "message": "symbol: suspended"}
    )
    scoped = await cancel_all(session, sim, url, symbol="BTCUSDT")
    unscoped = await cancel_all(session, sim, url)
    other = (await cancel_all(session, sim, url, symbol="ETHUSDT"))[1]
    refused_meanwhile = sim.stats()["orders"]
    lifted = await admin(session, url, "reject", {"symbol": "BTCUSDT", "status": None})
    after = (await cancel_all(session, sim, url, symbol="BTCUSDT"))[1]

    assert switched["rejected"]["BTCUSDT"]["status"] == 422
    assert (scoped[0], scoped[1]["message"]) == (422, "symbol: suspended")
    assert (unscoped[0], unscoped[1]["message"]) == (422, "symbol: suspended")
    assert other["data"]["orders_ids"] == eth
    assert refused_meanwhile == {"RAISED": 2, "CANCELLATION_RAISED": 1}
    assert lifted == {"rejected": {}}
    assert sorted(after["data"]["orders_ids"]) == sorted(btc)
    assert sim.stats()["rejected"] == {}


async def test_a_rejected_symbol_can_be_spared_by_an_unscoped_cancel_all(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """With unscoped=spare, cancel_all without a symbol cancels the rest, not the rejected one."""
    sim, url = await make_sim()
    btc = sim.seed({"BTCUSDT": 2})
    eth = sim.seed({"ETHUSDT": 2})
    await admin(session, url, "reject", {"symbol": "BTCUSDT", "status": 403, "unscoped": "spare"})

    status, body, _ = await cancel_all(session, sim, url)

    assert status == 200
    assert sorted(body["data"]["orders_ids"]) == sorted(eth)
    assert sorted(sim.stats()["open"]) == sorted(btc + eth)  # ETH cancelling, BTC working


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": 422}, "symbol"),
        ({"symbol": "X", "status": 429}, "status"),
        ({"symbol": "X", "status": 500}, "status"),
        ({"symbol": "X", "status": 422, "unscoped": "maybe"}, "unscoped"),
    ],
)
async def test_reject_switch_refuses_a_bad_request(
    make_sim: SimFactory, session: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    """The reject switch needs a symbol and a 4xx other than 429, else 400 naming the field."""
    _, url = await make_sim()

    status, answer = await admin(session, url, "reject", body)

    assert status == 400
    assert answer["message"].startswith(field)


async def test_behaviour_switch_changes_how_later_cancels_end(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """POST /_sim/behaviour changes the outcome and delay of cancels that arrive after it."""
    sim, url = await make_sim()
    before = sim.seed({"BTCUSDT": 3})
    await cancel_all(session, sim, url)
    after = sim.seed({"ETHUSDT": 3})

    answer = await admin(
        session, url, "behaviour", {"partial_fill_ratio": 1.0, "cancel_delay": [2.0, 2.0]}
    )
    await cancel_all(session, sim, url)
    await clock.advance(1.0)
    halfway = sim.stats()
    await clock.advance(1.0)
    final = {i: sim.book.orders[i].status_at(clock.monotonic()) for i in before + after}

    assert answer == {
        "fill_ratio": 0.0, "partial_fill_ratio": 1.0, "expire_ratio": 0.0,
        "cancel_delay": [2.0, 2.0],
    }  # fmt: skip
    assert sorted(halfway["open"]) == sorted(after)
    assert {final[i] for i in before} == {"CANCELLED"}
    assert {final[i] for i in after} == {"PARTIALLY_EXECUTED"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"fill_ratio": 1.5}, "fill_ratio"),
        ({"fill_ratio": 0.6, "partial_fill_ratio": 0.6}, "fill_ratio + partial_fill_ratio"),
        ({"expire_ratio": "all"}, "expire_ratio"),
        ({"fill_ratio_typo": 0.5}, "fill_ratio_typo"),
        ({"cancel_delay": [1]}, "cancel_delay"),
        ({"cancel_delay": [2, 1]}, "cancel_delay"),
    ],
)
async def test_behaviour_switch_refuses_impossible_values_and_keeps_the_old(
    make_sim: SimFactory, session: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    """An impossible behaviour is 400 naming the field, and nothing changes."""
    sim, url = await make_sim()

    status, answer = await admin(session, url, "behaviour", body)

    assert (status, answer["message"].startswith(field)) == (400, True)
    assert sim.stats()["behaviour"] == {
        "fill_ratio": 0.0, "partial_fill_ratio": 0.0, "expire_ratio": 0.0,
        "cancel_delay": [0.02, 0.3],
    }  # fmt: skip


async def test_trader_places_orders_per_symbol_every_interval_until_done(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The trader places one order per symbol now and every interval, until each has its n."""
    sim, url = await make_sim()

    started = await admin(
        session, url, "trader", {"orders": {"BTCUSDT": 3, "ETHUSDT": 1}, "interval": 5}
    )
    await clock.advance(4.9)
    first = len(sim.trader.placed)
    await clock.advance(0.1)
    second = len(sim.trader.placed)
    await clock.advance(5)
    listed = ids_of((await listing(session, sim, url))[1])
    stats = sim.stats()

    assert (started["remaining"], len(started["placed"])) == ({"BTCUSDT": 2, "ETHUSDT": 0}, 2)
    assert (first, second) == (2, 3)
    assert sorted(listed) == sorted(stats["trader"]["placed"])
    assert stats["trader"]["running"] is False
    assert stats["trader"]["remaining"] == {"BTCUSDT": 0, "ETHUSDT": 0}
    assert sorted(stats["open"]) == sorted(listed)


async def test_trader_armed_on_cancel_all_places_orders_no_answer_named(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """on_cancel_all: nothing until a cancel_all is served, then orders that answer never named."""
    sim, url = await make_sim()
    seeded = sim.seed({"BTCUSDT": 2})
    armed = await admin(
        session,
        url,
        "trader",
        {"orders": {"BTCUSDT": 2}, "interval": 1, "on_cancel_all": True},
    )
    await clock.advance(3)
    before = list(sim.trader.placed)

    named = (await cancel_all(session, sim, url))[1]["data"]["orders_ids"]
    right_after = len(sim.trader.placed)
    await clock.advance(1)
    await clock.advance(0.3)
    stats = sim.stats()

    assert (armed["armed"], armed["running"], before) == (True, False, [])
    assert right_after == 1  # placed as soon as the cancel_all was served
    assert sorted(named) == sorted(seeded)
    assert len(stats["trader"]["placed"]) == 2
    assert not set(named) & set(stats["trader"]["placed"])
    assert sorted(stats["open"]) == sorted(stats["trader"]["placed"])  # the account is not flat
    assert stats["cancelled"] == 2


async def test_trader_stops_on_request_and_with_the_sim(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """{"stop": true} ends the trader's task; a running trader is stopped by sim.stop()."""
    sim, url = await make_sim()
    await admin(session, url, "trader", {"orders": {"BTCUSDT": 100}, "interval": 1})
    await clock.advance(2)

    stopped = await admin(session, url, "trader", {"stop": True})
    await clock.advance(5)
    placed = len(sim.trader.placed)
    await admin(session, url, "trader", {"orders": {"ETHUSDT": 100}, "interval": 1})
    running_before_stop = sim.trader.running
    await sim.stop()
    at_stop = len(sim.trader.placed)
    await clock.advance(5)

    assert stopped["running"] is False
    assert placed == 3
    assert running_before_stop is True
    assert len(sim.trader.placed) == at_stop  # nothing placed once the sim stopped


async def test_trader_refuses_a_bad_plan(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A trader plan without orders, with a negative interval or a bad flag is 400."""
    _, url = await make_sim()

    answers = [
        await admin(session, url, "trader", body)
        for body in (
            {"interval": 1},
            {"orders": {"BTCUSDT": 1}, "interval": -1},
            {"orders": {"BTCUSDT": 1}, "on_cancel_all": "yes"},
        )
    ]

    assert [a[0] for a in answers] == [400, 400, 400]
    assert [a[1]["message"].split(":")[0] for a in answers] == [
        "orders",
        "interval",
        "on_cancel_all",
    ]

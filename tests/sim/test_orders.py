"""The simulated exchange's orders: the venue's order object, cancel_all, status, fills."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from killswitch.sim import SimConfig, SimExchange, sign_headers
from tests.fakes import FakeClock
from tests.sim.client import (
    CANCEL_ALL,
    SimFactory,
    call,
    cancel_all,
    listing,
    status_of,
)


async def test_order_object_has_the_venue_fields_with_string_numbers(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A new order is RAISED with every documented field; numbers are strings, times ms."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})

    _, body, _ = await status_of(session, sim, url, order_id)
    order = body["data"]["order"]

    assert set(order) >= {
        "order_id", "exchange", "symbol", "side", "status", "order_type", "quantity",
        "exec_quantity", "price", "avg_execution_price", "created_at", "updated_at",
    }  # fmt: skip
    assert (order["status"], order["exchange"], order["symbol"]) == (
        "RAISED",
        "EXCHANGE_2",
        "BTCUSDT",
    )
    assert order["side"] in ("BUY", "SELL")
    assert all(isinstance(order[k], str) for k in ("quantity", "exec_quantity", "price"))
    assert int(order["quantity"]) >= 2
    assert (order["exec_quantity"], order["avg_execution_price"]) == ("0", "0")
    assert order["created_at"] == order["updated_at"] == int(clock.time() * 1000)


async def test_cancel_all_names_working_orders_which_then_reach_cancelled(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """cancel_all lists every working order; each is CANCELLATION_RAISED, then CANCELLED."""
    sim, url = await make_sim()
    seeded = sim.seed({"BTCUSDT": 3, "ETHUSDT": 2})
    cancelled_ms = sim.clock.now_ms()

    status, body, _ = await cancel_all(session, sim, url)
    raised = [(await status_of(session, sim, url, i))[1]["data"]["order"] for i in seeded[:2]]
    await clock.advance(0.3)
    final = [(await status_of(session, sim, url, i))[1]["data"]["order"] for i in seeded]
    again = (await cancel_all(session, sim, url))[1]

    assert status == 200
    assert sorted(body["data"]["orders_ids"]) == sorted(seeded)
    assert {o["status"] for o in raised} == {"CANCELLATION_RAISED"}
    assert {o["updated_at"] for o in raised} == {cancelled_ms}
    assert {o["status"] for o in final} == {"CANCELLED"}
    assert all(cancelled_ms <= o["updated_at"] <= cancelled_ms + 300 for o in final)
    assert {o["exec_quantity"] for o in final} == {"0"}
    assert {o["symbol"] for o in final} == {"BTCUSDT", "ETHUSDT"}
    assert again == {"data": {"orders_ids": []}}
    assert sim.stats()["orders"] == {"CANCELLED": 5}
    assert sim.stats()["flat"] is True


async def test_scoped_cancel_all_cancels_only_that_symbol(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """cancel_all with a symbol touches only that symbol's orders."""
    sim, url = await make_sim()
    btc = sim.seed({"BTCUSDT": 2})
    sim.seed({"ETHUSDT": 3}, status="OPEN")

    _, body, _ = await cancel_all(session, sim, url, symbol="BTCUSDT")

    assert sorted(body["data"]["orders_ids"]) == sorted(btc)
    assert sim.stats()["orders"] == {"CANCELLATION_RAISED": 2, "OPEN": 3}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"exchange": "NOPE"}, 422, "exchange"),
        ({}, 422, "exchange"),
        ({"exchange": "EXCHANGE_2", "symbol": 5}, 422, "symbol"),
    ],
)
async def test_cancel_all_with_a_bad_field_is_422_naming_it(
    make_sim: SimFactory,
    session: aiohttp.ClientSession,
    body: dict[str, Any],
    status: int,
    field: str,
) -> None:
    """cancel_all with an unknown exchange or a bad field answers 422 naming it, cancels nothing."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 1})

    answer, error, _ = await call(session, url, sim, "POST", CANCEL_ALL, body)

    assert answer == status
    assert error["message"].startswith(field)
    assert sim.stats()["orders"] == {"RAISED": 1}


async def test_cancel_all_body_that_is_not_json_is_400(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A cancel_all whose body does not parse is a 400 with a message."""
    sim, url = await make_sim()
    headers = {"Content-Type": "application/json"} | sign_headers(
        sim.config, "POST", CANCEL_ALL, epoch_ms=sim.clock.now_ms()
    )

    async with session.post(url + CANCEL_ALL, data="{nope", headers=headers) as resp:
        status, body = resp.status, await resp.json()

    assert (status, body["message"]) == (400, "body is not JSON")


async def test_orders_seeded_on_another_exchange_are_cancelled_there_only(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Seeding another exchange makes it known; cancel_all is per exchange."""
    sim, url = await make_sim()
    other = sim.seed({"BTCUSDT": 1}, exchange="EXCHANGE_1")
    sim.seed({"BTCUSDT": 1})

    _, answer, _ = await call(session, url, sim, "POST", CANCEL_ALL, {"exchange": "EXCHANGE_1"})

    assert answer["data"]["orders_ids"] == other


@pytest.mark.parametrize(("order_id", "status"), [(str(uuid.UUID(int=3)), 404), ("abc", 400)])
async def test_status_of_an_unknown_or_malformed_id(
    make_sim: SimFactory, session: aiohttp.ClientSession, order_id: str, status: int
) -> None:
    """An id never issued answers 404, a malformed one 400, each with a message."""
    sim, url = await make_sim()

    answer, body, _ = await status_of(session, sim, url, order_id)

    assert answer == status
    assert body["message"]


async def test_fill_ratio_one_ends_every_cancelled_order_executed(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """With fill_ratio=1 every order sent for cancellation ends EXECUTED, fully filled."""
    sim, url = await make_sim(fill_ratio=1.0)
    ids = sim.seed({"BTCUSDT": 4})

    await cancel_all(session, sim, url)
    await clock.advance(0.3)
    orders = [(await status_of(session, sim, url, i))[1]["data"]["order"] for i in ids]

    assert {o["status"] for o in orders} == {"EXECUTED"}
    assert all(o["exec_quantity"] == o["quantity"] for o in orders)
    assert all(o["avg_execution_price"] == o["price"] for o in orders)


async def test_partial_fills_are_terminal_with_exec_strictly_inside_the_quantity(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """partial_fill_ratio=1: every cancel ends PARTIALLY_EXECUTED, 0 < exec < qty, and stays."""
    sim, url = await make_sim(partial_fill_ratio=1.0)
    ids = sim.seed({"BTCUSDT": 20})

    await cancel_all(session, sim, url)
    await clock.advance(0.3)
    again = (await cancel_all(session, sim, url))[1]
    orders = [(await status_of(session, sim, url, i))[1]["data"]["order"] for i in ids]
    open_now = (await listing(session, sim, url))[1]

    assert {o["status"] for o in orders} == {"PARTIALLY_EXECUTED"}
    assert all(0 < int(o["exec_quantity"]) < int(o["quantity"]) for o in orders)
    assert again == {"data": {"orders_ids": []}}
    assert open_now["data"] == {"orders": [], "cursor": None}
    assert sim.stats()["partially_executed"] == 20


def test_seeded_orders_are_raised_with_uuid_ids_reproducible_from_the_seed() -> None:
    """Seeding creates RAISED orders with UUID ids and distinct created_at, from the seed."""
    first = SimExchange(SimConfig(seed=1)).seed({"BTCUSDT": 3})
    again = SimExchange(SimConfig(seed=1))

    assert again.seed({"BTCUSDT": 3}) == first
    assert all(uuid.UUID(i).version == 4 for i in first)
    assert again.stats()["orders"] == {"RAISED": 3}
    assert len({o.created_at for o in again.book.orders.values()}) == 3


def test_seed_refuses_statuses_that_are_not_new_and_negative_ages() -> None:
    """Only RAISED or OPEN orders can be seeded, and not from the future."""
    sim = SimExchange(SimConfig())

    with pytest.raises(ValueError, match="status"):
        sim.seed({"BTCUSDT": 1}, status="CANCELLED")
    with pytest.raises(ValueError, match="age_days"):
        sim.seed({"BTCUSDT": 1}, age_days=-1)

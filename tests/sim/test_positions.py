"""The simulated venue's positions and place-order endpoints (VENUE.md's last section)."""

from __future__ import annotations

from decimal import Decimal

import aiohttp

from killswitch.sim.venue import LateFill
from tests.fakes import FakeClock
from tests.sim.client import POSITIONS, STATUS, SimFactory, call, cancel_all, listing

LONG = {"BTCUSDT": {"side": "LONG", "size": "0.5", "entry_price": "60000", "stops": 1}}


def _close(quantity: str, **extra: object) -> dict[str, object]:
    return {
        "exchange": "EXCHANGE_2",
        "symbol": "BTCUSDT",
        "side": "SELL",
        "order_type": "MARKET",
        "quantity": quantity,
        "reduce_only": True,
        "client_order_id": "c-1",
        **extra,
    }


async def test_positions_need_both_parameters_and_answer_a_list(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """exchange and symbol are mandatory (422 naming the field); a symbol without a position
    answers an empty list, one with a position its venue object, numbers as strings."""
    sim, url = await make_sim()
    sim.open_positions(LONG)
    missing, body, _ = await call(session, url, sim, "GET", f"{POSITIONS}?exchange=EXCHANGE_2")
    assert (missing, body["message"]) == (422, "symbol: required")
    q = "?exchange=EXCHANGE_2&symbol="
    _, empty, _ = await call(session, url, sim, "GET", f"{POSITIONS}{q}ETHUSDT")
    assert empty == {"data": []}
    _, held, _ = await call(session, url, sim, "GET", f"{POSITIONS}{q}BTCUSDT")
    (position,) = held["data"]
    assert (position["position_side"], position["position_size"]) == ("LONG", "0.5")
    assert Decimal(position["position_value"]) == Decimal(30000)


async def test_cancel_all_cancels_the_stops_and_a_reduce_only_close_never_flips(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The stop rests as an open STOP_MARKET order until cancel_all cancels it; a reduce-only
    MARKET larger than the position is clipped to it (an overclose, counted), never a flip;
    the close is EXECUTED in the closed listing with its client_order_id."""
    sim, url = await make_sim(cancel_delay=(0.0, 0.0))
    (stop_id,) = sim.open_positions(LONG)["stop_ids"]
    _, shown, _ = await listing(session, sim, url)
    assert [o["order_type"] for o in shown["data"]["orders"]] == ["STOP_MARKET"]
    _, named, _ = await cancel_all(session, sim, url)
    assert named["data"]["orders_ids"] == [stop_id]
    await clock.advance(0.01)
    status, placed, _ = await call(session, url, sim, "POST", STATUS, _close("0.7"))
    assert status == 200
    assert (placed["data"]["status"], placed["data"]["exec_quantity"]) == ("EXECUTED", "0.5")
    truth = sim.stats()["position_truth"]
    assert (truth["positions"], truth["flips"], truth["overcloses"]) == ([], 0, 1)
    _, closed, _ = await listing(session, sim, url, "/trade/api/v2/futures/orders/closed")
    by_type = {o["order_type"]: o for o in closed["data"]["orders"]}
    assert by_type["STOP_MARKET"]["status"] == "CANCELLED"
    assert by_type["MARKET"]["client_order_id"] == "c-1"
    again, refused, _ = await call(session, url, sim, "POST", STATUS, _close("0.5"))
    assert (again, refused["data"]["status"]) == (200, "CANCELLED")  # nothing left to reduce
    assert sim.stats()["position_truth"]["overcloses"] == 2


async def test_a_fill_lands_after_the_cancel_and_reduce_only_can_be_refused(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A late fill armed after cancel_all moves the position once cancel_all is served; the
    reduce_only_refused fault answers 422 and places nothing."""
    sim, url = await make_sim()
    sim.open_positions(LONG)
    sim.venue.late_fills.append(
        LateFill("EXCHANGE_2", "BTCUSDT", "BUY", Decimal("0.2"), "cancel_all")
    )
    await cancel_all(session, sim, url)
    assert sim.book.positions.of("EXCHANGE_2", "BTCUSDT")[0].size == Decimal("0.7")
    sim.inject("place_order", "reduce_only_refused")
    status, body, _ = await call(session, url, sim, "POST", STATUS, _close("0.7"))
    assert (status, body["message"]) == (422, "reduce_only: not supported for MARKET orders")
    assert sim.stats()["position_truth"]["placed"] == []

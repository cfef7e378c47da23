"""The simulated exchange's injected faults, lost acknowledgements included."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from killswitch.sim import SimConfig, SimExchange, sign_headers
from tests.fakes import FakeClock
from tests.sim.client import (
    CANCEL_ALL,
    REQUEST,
    STATUS,
    TIME,
    SimFactory,
    call,
    cancel_all,
    status_of,
    until,
)


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("500", 500, None),
        ("502", 502, None),
        ("503", 503, None),
        ("401", 401, {"error": "unauthorized", "message": "invalid api key or signature"}),
        ("422", 422, {"error": "invalid_field", "message": "symbol: invalid"}),
        ("malformed", 200, "{not json"),
        ("shape", 200, {"data": {"ids": []}}),
    ],
)
async def test_fault_answers_count_requests_then_clears_without_cancelling(
    make_sim: SimFactory, session: aiohttp.ClientSession, kind: str, status: int, body: Any
) -> None:
    """A fault answers exactly `count` cancel_all calls, cancels nothing, then clears."""
    sim, url = await make_sim()
    ids = sim.seed({"BTCUSDT": 2})
    sim.inject("cancel_all", kind, count=2)

    faulted = [await cancel_all(session, sim, url) for _ in range(2)]
    orders_meanwhile = sim.stats()["orders"]
    healthy, healthy_body, _ = await cancel_all(session, sim, url)

    assert [f[0] for f in faulted] == [status, status]
    if body is not None:
        assert faulted[0][1] == body
    assert orders_meanwhile == {"RAISED": 2}
    assert healthy == 200
    assert sorted(healthy_body["data"]["orders_ids"]) == sorted(ids)
    assert [r.fault for r in sim.requests] == [kind, kind, None]
    assert sim.violations("cancel_all") == 0


@pytest.mark.parametrize(
    ("endpoint", "field"), [("open_orders", "limit"), ("order_status", "order_id")]
)
async def test_injected_422_names_a_field_of_that_endpoint_or_the_given_message(
    make_sim: SimFactory, session: aiohttp.ClientSession, endpoint: str, field: str
) -> None:
    """A 422 fault's message names a field of the endpoint; an injected message replaces it."""
    sim, url = await make_sim()
    method, path, body = REQUEST[endpoint]
    sim.inject(endpoint, "422")
    sim.inject(endpoint, "422", message="to_time: out of range")

    first = (await call(session, url, sim, method, path, body))[1]
    second = (await call(session, url, sim, method, path, body))[1]

    assert first["message"].startswith(field)
    assert second["message"] == "to_time: out of range"


@pytest.mark.parametrize(("kind", "retry_after"), [("429", "1"), ("429_bare", None)])
async def test_injected_429_is_recorded_but_not_a_violation(
    make_sim: SimFactory, session: aiohttp.ClientSession, kind: str, retry_after: str | None
) -> None:
    """An injected 429 says Retry-After: 1 (429_bare says nothing); neither is a violation."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})
    sim.inject("order_status", kind, count=1)

    status, body, resp = await status_of(session, sim, url, order_id)
    after = (await status_of(session, sim, url, order_id))[0]

    assert (status, resp.headers.get("Retry-After"), after) == (429, retry_after, 200)
    assert body["message"]
    assert sim.violations("order_status") == 0
    assert sim.stats()["answers"]["order_status"] == {"429": 1, "200": 1}


@pytest.mark.parametrize("endpoint", ["open_orders", "closed_orders", "time"])
async def test_listings_and_the_server_time_take_faults_too(
    make_sim: SimFactory, session: aiohttp.ClientSession, endpoint: str
) -> None:
    """A 503 injected on a listing or the server time answers once, then the endpoint heals."""
    sim, url = await make_sim()
    method, path, body = REQUEST.get(endpoint, ("GET", TIME, None))
    sim.inject(endpoint, "503")

    answers = [(await call(session, url, sim, method, path, body))[0] for _ in range(2)]

    assert answers == [503, 200]
    assert sim.stats()["answers"][endpoint] == {"503": 1, "200": 1}


async def test_lost_ack_502_performs_the_cancel_and_loses_the_answer(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """lost_ack_502: cancel_all answers 502 but the orders are cancelling; a re-send names none."""
    sim, url = await make_sim()
    ids = sim.seed({"BTCUSDT": 3})
    sim.inject("cancel_all", "lost_ack_502")

    status, body, _ = await cancel_all(session, sim, url)
    meanwhile = sim.stats()["orders"]
    again = (await cancel_all(session, sim, url))[1]
    await clock.advance(0.3)

    assert (status, body["message"]) == (502, "bad gateway")
    assert meanwhile == {"CANCELLATION_RAISED": 3}
    assert again == {"data": {"orders_ids": []}}
    assert sim.stats()["cancelled"] == len(ids)
    assert [r.fault for r in sim.requests] == ["lost_ack_502", None]


async def test_lost_ack_timeout_cancels_holds_past_the_client_and_answers_504_later(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """lost_ack_timeout: the cancel happens, the client times out, the held answer is a 504."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 2})
    sim.inject("cancel_all", "lost_ack_timeout", delay=0.2)
    headers = {"Content-Type": "application/json"} | sign_headers(
        sim.config, "POST", CANCEL_ALL, epoch_ms=sim.clock.now_ms()
    )

    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            url + CANCEL_ALL,
            json={"exchange": "EXCHANGE_2"},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    cancelled_while_held = sim.stats()["orders"]
    await until(lambda: sim.requests[0].status is not None, "the held answer goes out")

    assert cancelled_while_held == {"CANCELLATION_RAISED": 2}
    assert sim.requests[0].status == 504


async def test_lost_ack_timeout_on_an_invalid_request_changes_nothing(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A lost acknowledgement only loses the answer: an unsigned cancel_all cancels nothing."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 2})
    sim.inject("cancel_all", "lost_ack_502")

    status, _, _ = await call(
        session, url, sim, "POST", CANCEL_ALL, {"exchange": "EXCHANGE_2"}, headers={}
    )

    assert status == 502
    assert sim.stats()["orders"] == {"RAISED": 2}


async def test_stop_releases_a_held_lost_ack_at_once(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Stopping the sim cuts a lost_ack_timeout hold short: the client gets the 504 now."""
    sim, url = await make_sim()  # slow_seconds: 30 s by default
    sim.seed({"BTCUSDT": 1})
    sim.inject("cancel_all", "lost_ack_timeout")

    pending = asyncio.ensure_future(cancel_all(session, sim, url))
    await until(lambda: sim.stats()["orders"] == {"CANCELLATION_RAISED": 1}, "the cancel")
    await asyncio.wait_for(sim.stop(), timeout=3)

    assert (await asyncio.wait_for(pending, timeout=1))[0] == 504


async def test_timeout_fault_holds_past_the_client_timeout_then_clears(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A timeout fault holds cancel_all past the client's timeout, cancels nothing, answers 504."""
    sim, url = await make_sim(slow_seconds=0.2)
    sim.seed({"BTCUSDT": 1})
    sim.inject("cancel_all", "timeout", count=1)
    headers = {"Content-Type": "application/json"} | sign_headers(
        sim.config, "POST", CANCEL_ALL, epoch_ms=sim.clock.now_ms()
    )

    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            url + CANCEL_ALL,
            json={"exchange": "EXCHANGE_2"},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    await until(lambda: sim.requests[0].status is not None, "the answer after the hold")
    held_answer = sim.requests[0].status
    orders_after_hold = sim.stats()["orders"]
    status, _, _ = await cancel_all(session, sim, url)

    assert held_answer == 504
    assert orders_after_hold == {"RAISED": 1}
    assert status == 200
    assert sim.stats()["requests"]["cancel_all"] == 2


@pytest.mark.parametrize("endpoint", ["order_status", "open_orders"])
async def test_timeout_fault_on_a_read_answers_normally_after_the_hold(
    make_sim: SimFactory, session: aiohttp.ClientSession, endpoint: str
) -> None:
    """A held status read or listing is answered normally once slow_seconds have passed."""
    sim, url = await make_sim(slow_seconds=0.1)
    [order_id] = sim.seed({"BTCUSDT": 1})
    sim.inject(endpoint, "timeout", count=1)
    loop = asyncio.get_running_loop()
    method, path, body = REQUEST[endpoint]
    path = f"{STATUS}?order_id={order_id}" if endpoint == "order_status" else path

    started = loop.time()
    status, answer, _ = await call(session, url, sim, method, path, body)

    assert loop.time() - started >= 0.1
    assert status == 200
    assert order_id in json.dumps(answer)
    assert [r.fault for r in sim.requests] == ["timeout"]


async def test_reset_fault_closes_the_connection_without_an_answer(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A reset fault drops the connection unanswered, cancels nothing, then clears."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 1})
    sim.inject("cancel_all", "reset", count=1)

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await cancel_all(session, sim, url)
    orders_meanwhile = sim.stats()["orders"]
    status, _, _ = await cancel_all(session, sim, url)

    assert orders_meanwhile == {"RAISED": 1}
    assert status == 200
    assert [r.status for r in sim.requests] == [None, 200]


async def test_aiohttp_silently_resends_a_reset_get_and_the_sim_counts_both(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """aiohttp re-sends an idempotent GET once after a reset; the sim sees two arrivals."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})
    sim.inject("order_status", "reset", count=1)

    status, _, _ = await status_of(session, sim, url, order_id)

    assert status == 200
    assert sim.stats()["requests"]["order_status"] == 2


async def test_slow_fault_delays_then_serves_normally(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A slow fault answers after its delay, and the request takes effect."""
    sim, url = await make_sim()
    ids = sim.seed({"BTCUSDT": 1})
    sim.inject("cancel_all", "slow", count=1, delay=0.1)
    loop = asyncio.get_running_loop()

    started = loop.time()
    status, body, _ = await cancel_all(session, sim, url)

    assert loop.time() - started >= 0.1
    assert (status, body["data"]["orders_ids"]) == (200, ids)


def test_inject_rejects_unknown_endpoints_kinds_and_counts() -> None:
    """inject refuses an unknown endpoint, kind, a count below one, or slow without delay."""
    sim = SimExchange(SimConfig())

    cases: list[tuple[tuple[str, str, int], str]] = [
        (("nope", "500", 1), "endpoint"),
        (("cancel_all", "418", 1), "kind"),
        (("cancel_all", "500", 0), "count"),
        (("cancel_all", "slow", 1), "delay"),
    ]
    for args, field in cases:
        with pytest.raises(ValueError, match=field):
            sim.inject(*args)


async def test_stop_releases_a_held_request_quickly(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Stopping the sim cuts a timeout fault's hold short instead of waiting slow_seconds."""
    sim, url = await make_sim()
    sim.inject("cancel_all", "timeout", count=1)

    async def send() -> int:
        async with session.post(url + CANCEL_ALL, json={}) as resp:
            return resp.status

    pending = asyncio.ensure_future(send())
    await until(lambda: bool(sim.requests), "the request's arrival")
    await asyncio.wait_for(sim.stop(), timeout=3)

    assert await asyncio.wait_for(pending, timeout=1) == 504

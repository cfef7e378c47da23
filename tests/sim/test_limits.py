"""The simulated exchange's strict sliding windows, one per limited endpoint."""

from __future__ import annotations

import aiohttp
import pytest

from tests.fakes import FakeClock
from tests.sim.client import (
    CANCEL_ALL,
    OPEN,
    REQUEST,
    SimFactory,
    call,
    cancel_all,
)


@pytest.mark.parametrize(
    ("endpoint", "limit"),
    [
        ("cancel_all", 10),
        ("order_status", 20),
        ("open_orders", 20),
        ("closed_orders", 20),
        ("positions", 20),
        ("place_order", 20),
    ],
)
async def test_each_endpoint_has_its_own_strict_window_at_the_venue_limit(
    make_sim: SimFactory, session: aiohttp.ClientSession, endpoint: str, limit: int
) -> None:
    """The venue's limit passes in 60 s; one more is 429 + Retry-After, a violation there only."""
    sim, url = await make_sim()
    method, path, body = REQUEST[endpoint]
    for other, (m, p, b) in REQUEST.items():  # the other windows are full, and independent
        if other != endpoint:
            for _ in range(sim.config.limit(other)[0]):  # type: ignore[arg-type]
                await call(session, url, sim, m, p, b)

    passed = [(await call(session, url, sim, method, path, body))[0] for _ in range(limit)]
    status, refused, resp = await call(session, url, sim, method, path, body)
    stats = sim.stats()

    assert 429 not in passed
    assert status == 429
    assert refused["message"] == "rate limit exceeded"
    assert resp.headers["Retry-After"] == "60"
    assert stats["violations"] == {e: int(e == endpoint) for e in REQUEST}
    assert stats["peak_in_window"][endpoint] == limit + 1
    assert stats["limits"][endpoint] == {"requests": limit, "per_seconds": 60.0}


async def test_refused_requests_count_in_the_window_and_it_slides(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """401s and 429s fill the window like any request; a slot frees per_seconds after arrival."""
    sim, url = await make_sim(cancel_all_limit=(2, 10.0))
    unsigned: dict[str, str] = {}

    first = (await call(session, url, sim, "POST", CANCEL_ALL, {}, headers=unsigned))[0]
    await clock.advance(4)
    second = (await cancel_all(session, sim, url))[0]
    await clock.advance(5.5)  # t=9.5: arrivals at 0 and 4 fill the window
    third, _, resp = await cancel_all(session, sim, url)
    await clock.advance(4.4)  # t=13.9: 4 and the refused 9.5 still fill it
    fourth = (await cancel_all(session, sim, url))[0]
    await clock.advance(10.0)  # t=23.9: only the refused 13.9 is left
    fifth = (await cancel_all(session, sim, url))[0]

    assert (first, second, third, fourth, fifth) == (401, 200, 429, 429, 200)
    assert resp.headers["Retry-After"] == "5"  # ceil(4 + 10 - 9.5): the 429 itself counts
    assert sim.violations("cancel_all") == 2
    assert sim.windows["cancel_all"].peak == 3


async def test_a_violation_can_be_answered_without_retry_after(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """retry_after_on_violation=False: the 429 for a violation carries no Retry-After."""
    sim, url = await make_sim(cancel_all_limit=(1, 60.0), retry_after_on_violation=False)

    await cancel_all(session, sim, url)
    status, _, resp = await cancel_all(session, sim, url)

    assert (status, resp.headers.get("Retry-After")) == (429, None)
    assert sim.violations("cancel_all") == 1


async def test_unknown_paths_answer_404_uncounted_on_a_kept_alive_connection(
    make_sim: SimFactory,
) -> None:
    """HEAD / and GET / answer 404 on one kept-alive connection and count against no limit."""
    sim, url = await make_sim()
    reused = 0

    async def on_reuse(*_: object) -> None:
        nonlocal reused
        reused += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as s:
        async with s.head(url + "/") as head:
            head_status = head.status
        async with s.get(url + "/") as get:
            get_status = get.status
        status, _, _ = await cancel_all(s, sim, url)

    assert (head_status, get_status, status) == (404, 404, 200)
    assert reused == 2
    assert sim.stats()["requests"] == {
        "cancel_all": 1, "order_status": 0, "open_orders": 0, "closed_orders": 0,
        "positions": 0, "place_order": 0, "time": 0, "other": 2,
    }  # fmt: skip
    assert sim.windows["cancel_all"].peak == 1


async def test_a_wrong_method_is_405_and_counted(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """GET on the open-orders listing is 405 with Allow: POST, and still fills its window."""
    sim, url = await make_sim()

    status, _, resp = await call(session, url, sim, "GET", OPEN)

    assert (status, resp.headers["Allow"]) == (405, "POST")
    assert sim.windows["open_orders"].peak == 1

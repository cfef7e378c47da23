"""The simulated exchange, driven over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from killswitch.sim import DEMO_API_KEY, SimConfig, SimExchange, run_sim, sign_headers
from tests.fakes import FakeClock

CANCEL_ALL = "/trade/api/v2/futures/cancel_all"
STATUS = "/trade/api/v2/futures/order"

Started = tuple[SimExchange, str]
SimFactory = Callable[..., Awaitable[Started]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[SimFactory]:
    """Start simulated exchanges on 127.0.0.1:0 with the fake clock; stop them after."""
    started: list[SimExchange] = []

    async def make(**overrides: Any) -> Started:
        sim = SimExchange(SimConfig(seed=7, **overrides), clock=clock.monotonic)
        url = await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim, url

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(
    session: aiohttp.ClientSession,
    url: str,
    config: SimConfig,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """Send one signed request; return status, parsed JSON (or raw text) and the response."""
    signed = sign_headers(config, method, path) if headers is None else headers
    async with session.request(method, url + path, json=body, headers=signed) as resp:
        text = await resp.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, parsed, resp


async def cancel_all(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, symbol: str | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    body = {"exchange": sim.config.exchange} | ({"symbol": symbol} if symbol else {})
    return await call(session, url, sim.config, "POST", CANCEL_ALL, body)


async def status_of(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, order_id: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    return await call(session, url, sim.config, "GET", f"{STATUS}?order_id={order_id}")


# -- signing -------------------------------------------------------------------


@pytest.mark.parametrize("signing", ["ed25519", "hmac-sha256"])
async def test_signed_request_is_accepted(
    make_sim: SimFactory, session: aiohttp.ClientSession, signing: str
) -> None:
    """A request signed per contract §2 is accepted under both schemes."""
    sim, url = await make_sim(signing=signing)
    [order_id] = sim.seed({"BTCUSDT": 1})

    status, body, _ = await status_of(session, sim, url, order_id)

    assert status == 200
    assert body["data"]["order"]["order_id"] == order_id


@pytest.mark.parametrize("signing", ["ed25519", "hmac-sha256"])
async def test_wrongly_signed_request_is_refused_and_counted(
    make_sim: SimFactory, session: aiohttp.ClientSession, signing: str
) -> None:
    """A signature over another path or with another secret gets 401 and still counts."""
    sim, url = await make_sim(signing=signing)
    [order_id] = sim.seed({"BTCUSDT": 1})
    other_secret = replace(sim.config, api_secret="ab" * 32)
    path = f"{STATUS}?order_id={order_id}"

    wrong_path, _, _ = await call(
        session, url, sim.config, "GET", path, headers=sign_headers(sim.config, "GET", STATUS)
    )
    wrong_key, body, _ = await call(
        session, url, sim.config, "GET", path, headers=sign_headers(other_secret, "GET", path)
    )

    assert (wrong_path, wrong_key) == (401, 401)
    assert body["error"] == "unauthorized"
    assert sim.stats()["requests"]["order_status"] == 2
    assert sim.windows["order_status"].peak == 2


async def test_missing_headers_unknown_key_and_stale_epoch_are_refused(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """No auth headers, a foreign API key or an epoch outside the skew all get 401."""
    sim, url = await make_sim()
    stale = sign_headers(sim.config, "GET", STATUS + "?order_id=x", epoch_ms=1_000)
    foreign = sign_headers(replace(sim.config, api_key="someone-else"), "GET", STATUS)

    answers = [
        (await call(session, url, sim.config, "GET", STATUS, headers=h))[0]
        for h in ({}, stale, foreign)
    ]

    assert answers == [401, 401, 401]


def test_sign_headers_uses_the_configured_header_names() -> None:
    """sign_headers emits the configured key, signature and epoch headers."""
    config = SimConfig(api_key_header="K", signature_header="S", epoch_header="E")

    headers = sign_headers(config, "POST", CANCEL_ALL, epoch_ms=1_700_000_000_000)

    assert headers["K"] == DEMO_API_KEY
    assert headers["E"] == "1700000000000"
    assert len(headers["S"]) == 128  # 64-byte Ed25519 signature, hex


def test_config_rejects_an_ed25519_secret_that_is_not_32_bytes_of_hex() -> None:
    """An Ed25519 secret that is not 64 hex characters is refused at construction."""
    with pytest.raises(ValueError, match="api_secret"):
        SimConfig(api_secret="not-hex")


# -- cancel_all and order status ----------------------------------------------


async def test_cancel_all_returns_open_ids_which_then_reach_cancelled(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """cancel_all lists every open order; each is CANCELLATION_RAISED, then CANCELLED."""
    sim, url = await make_sim()
    seeded = sim.seed({"BTCUSDT": 3, "ETHUSDT": 2})

    status, body, _ = await cancel_all(session, sim, url)
    raised = [(await status_of(session, sim, url, i))[1] for i in seeded[:2]]
    await clock.advance(0.3)
    final = [(await status_of(session, sim, url, i))[1]["data"]["order"] for i in seeded]
    again = (await cancel_all(session, sim, url))[1]

    assert status == 200
    assert sorted(body["data"]["orders_ids"]) == sorted(seeded)
    assert {b["data"]["order"]["status"] for b in raised} == {"CANCELLATION_RAISED"}
    assert {o["status"] for o in final} == {"CANCELLED"}
    assert {o["symbol"] for o in final} == {"BTCUSDT", "ETHUSDT"}
    assert again == {"data": {"orders_ids": []}}
    assert sim.stats()["orders"] == {"CANCELLED": 5}


async def test_scoped_cancel_all_cancels_only_that_symbol(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """cancel_all with a symbol touches only that symbol's orders."""
    sim, url = await make_sim()
    btc = sim.seed({"BTCUSDT": 2})
    sim.seed({"ETHUSDT": 3})

    _, body, _ = await cancel_all(session, sim, url, symbol="BTCUSDT")

    assert sorted(body["data"]["orders_ids"]) == sorted(btc)
    assert sim.stats()["orders"] == {"CANCELLATION_RAISED": 2, "OPEN": 3}


async def test_cancel_all_of_an_unknown_exchange_is_400(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """cancel_all naming an exchange the sim does not know answers 400 and cancels nothing."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 1})

    status, _, _ = await call(session, url, sim.config, "POST", CANCEL_ALL, {"exchange": "NOPE"})

    assert status == 400
    assert sim.stats()["orders"] == {"OPEN": 1}


async def test_orders_seeded_on_another_exchange_are_cancelled_there_only(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Seeding another exchange makes it known; cancel_all is per exchange."""
    sim, url = await make_sim()
    other = sim.seed({"BTCUSDT": 1}, exchange="EXCHANGE_1")
    sim.seed({"BTCUSDT": 1})

    _, answer, _ = await call(
        session, url, sim.config, "POST", CANCEL_ALL, {"exchange": "EXCHANGE_1"}
    )

    assert answer["data"]["orders_ids"] == other


async def test_status_of_an_unknown_order_is_404(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """The status endpoint answers 404 for an id it never issued."""
    sim, url = await make_sim()

    status, body, _ = await status_of(session, sim, url, str(uuid.uuid4()))

    assert status == 404
    assert body["error"] == "not_found"


async def test_fill_ratio_one_ends_every_cancelled_order_executed(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """With fill_ratio=1 every order sent for cancellation ends EXECUTED."""
    sim, url = await make_sim(fill_ratio=1.0)
    ids = sim.seed({"BTCUSDT": 4})

    await cancel_all(session, sim, url)
    await clock.advance(0.3)
    statuses = {(await status_of(session, sim, url, i))[1]["data"]["order"]["status"] for i in ids}

    assert statuses == {"EXECUTED"}


def test_seeded_orders_are_open_and_have_uuid_ids() -> None:
    """Seeding creates OPEN orders with UUID ids, reproducible from the seed."""
    first = SimExchange(SimConfig(seed=1)).seed({"BTCUSDT": 3})
    again = SimExchange(SimConfig(seed=1))

    assert again.seed({"BTCUSDT": 3}) == first
    assert all(uuid.UUID(i).version == 4 for i in first)
    assert again.stats()["orders"] == {"OPEN": 3}


# -- rate limits ---------------------------------------------------------------


async def test_eleventh_cancel_all_in_a_window_is_a_violation(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Ten cancel_all in 60 s pass; the 11th gets 429 + Retry-After and counts a violation."""
    sim, url = await make_sim()

    first_ten = [(await cancel_all(session, sim, url))[0] for _ in range(10)]
    assert sim.violations("cancel_all") == 0
    status, _, resp = await cancel_all(session, sim, url)

    assert first_ten == [200] * 10
    assert status == 429
    assert resp.headers["Retry-After"] == "60"
    assert sim.violations("cancel_all") == 1
    assert sim.violations("order_status") == 0


async def test_refused_requests_count_in_the_window_and_it_slides(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """401s and 429s fill the window like any request; a slot frees per_seconds after arrival."""
    sim, url = await make_sim(cancel_all_limit=(2, 10.0))
    unsigned: dict[str, str] = {}

    first = (await call(session, url, sim.config, "POST", CANCEL_ALL, {}, headers=unsigned))[0]
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


async def test_status_window_is_independent_of_cancel_all(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Twenty status polls pass after ten cancel_all; the 21st poll is a violation."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})
    for _ in range(10):
        await cancel_all(session, sim, url)

    polls = [(await status_of(session, sim, url, order_id))[0] for _ in range(21)]

    assert polls == [200] * 20 + [429]
    assert sim.violations("order_status") == 1
    assert sim.violations("cancel_all") == 0


async def test_keepalive_probe_is_404_uncounted_and_keeps_the_connection(
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
    assert sim.stats()["requests"] == {"cancel_all": 1, "order_status": 0, "other": 2}
    assert sim.windows["cancel_all"].peak == 1


# -- faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("500", 500, None),
        ("502", 502, None),
        ("503", 503, None),
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
    assert orders_meanwhile == {"OPEN": 2}
    assert healthy == 200
    assert sorted(healthy_body["data"]["orders_ids"]) == sorted(ids)
    assert [r.fault for r in sim.requests] == [kind, kind, None]
    assert sim.violations("cancel_all") == 0


async def test_injected_429_carries_retry_after_and_is_not_a_violation(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """An injected 429 says Retry-After: 1, is recorded, and is not counted as a violation."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})
    sim.inject("order_status", "429", count=1)

    status, _, resp = await status_of(session, sim, url, order_id)
    after = (await status_of(session, sim, url, order_id))[0]

    assert (status, resp.headers["Retry-After"], after) == (429, "1", 200)
    assert sim.violations("order_status") == 0
    assert sim.stats()["answers"]["order_status"] == {"429": 1, "200": 1}


async def test_timeout_fault_holds_past_the_client_timeout_then_clears(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A timeout fault holds the request past the client's timeout and cancels nothing."""
    sim, url = await make_sim(slow_seconds=0.2)
    sim.seed({"BTCUSDT": 1})
    sim.inject("cancel_all", "timeout", count=1)
    body = {"exchange": sim.config.exchange}

    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            url + CANCEL_ALL,
            json=body,
            headers=sign_headers(sim.config, "POST", CANCEL_ALL),
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    for _ in range(100):  # the server answers once slow_seconds have passed
        if sim.requests[0].status is not None:
            break
        await asyncio.sleep(0.01)
    held_answer = sim.requests[0].status
    status, _, _ = await cancel_all(session, sim, url)

    assert held_answer == 504
    assert status == 200
    assert sim.stats()["requests"]["cancel_all"] == 2


async def test_timeout_fault_on_status_answers_normally_after_the_hold(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A held status read is answered normally once slow_seconds have passed."""
    sim, url = await make_sim(slow_seconds=0.1)
    [order_id] = sim.seed({"BTCUSDT": 1})
    sim.inject("order_status", "timeout", count=1)
    loop = asyncio.get_running_loop()

    started = loop.time()
    status, body, _ = await status_of(session, sim, url, order_id)

    assert loop.time() - started >= 0.1
    assert (status, body["data"]["order"]["status"]) == (200, "OPEN")
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

    assert orders_meanwhile == {"OPEN": 1}
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


def test_inject_rejects_unknown_endpoints_and_kinds() -> None:
    """inject refuses an unknown endpoint, kind or a count below one."""
    sim = SimExchange(SimConfig())

    cases = [
        (("nope", "500", 1), "endpoint"),
        (("cancel_all", "418", 1), "kind"),
        (("cancel_all", "500", 0), "count"),
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
    for _ in range(100):
        if sim.requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(sim.stop(), timeout=3)

    assert await asyncio.wait_for(pending, timeout=1) == 504


# -- record, stats and admin ---------------------------------------------------


async def test_record_keeps_each_request_with_its_answer_and_arrival_times(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Every request is recorded: endpoint, method, raw path, answer and arrival times."""
    sim, url = await make_sim()
    await status_of(session, sim, url, "abc")
    await clock.advance(2)
    await cancel_all(session, sim, url)

    first, second = sim.requests
    stats = sim.stats()

    assert (first.endpoint, first.method, first.path, first.status) == (
        "order_status",
        "GET",
        f"{STATUS}?order_id=abc",
        404,
    )
    assert (second.endpoint, second.monotonic - first.monotonic) == ("cancel_all", 2)
    assert second.wall >= first.wall
    assert stats["cancel_all_arrivals"] == [{"wall": second.wall, "monotonic": second.monotonic}]


async def test_admin_endpoints_seed_fault_clear_and_report(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """The /_sim/ endpoints seed, inject, clear and report, and are never counted."""
    sim, url = await make_sim()

    async with session.post(url + "/_sim/seed", json={"orders": {"BTCUSDT": 2}}) as r:
        seeded = await r.json()
    async with session.post(
        url + "/_sim/faults", json={"endpoint": "cancel_all", "kind": "503", "count": 5}
    ) as r:
        pending = (await r.json())["faults_pending"]
    async with session.post(url + "/_sim/clear") as r:
        cleared = (await r.json())["faults_pending"]
    status, _, _ = await cancel_all(session, sim, url)
    async with session.get(url + "/_sim/stats") as r:
        stats = await r.json()
    async with session.get(url + "/_sim/requests") as r:
        record = (await r.json())["requests"]
    async with session.post(url + "/_sim/faults", json={"endpoint": "x", "kind": "500"}) as r:
        bad = r.status

    assert len(seeded["order_ids"]) == 2
    assert pending["cancel_all"] == [{"kind": "503", "remaining": 5, "delay": None}]
    assert cleared == {"cancel_all": [], "order_status": []}
    assert status == 200
    assert stats["requests"] == {"cancel_all": 1, "order_status": 0, "other": 0}
    assert stats["orders"] == {"CANCELLATION_RAISED": 2}
    assert [(r["endpoint"], r["status"]) for r in record] == [("cancel_all", 200)]
    assert bad == 400


async def test_run_sim_announces_its_url_and_serves_until_cancelled(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    """run_sim prints one sim.ready JSON line with the bound URL and serves until cancelled."""
    task = asyncio.create_task(run_sim(SimConfig(), "127.0.0.1", 0))
    out = ""
    for _ in range(100):
        out = capsys.readouterr().out
        if out:
            break
        await asyncio.sleep(0.01)
    ready = json.loads(out)
    async with session.get(ready["base_url"] + "/_sim/stats") as r:
        served = r.status

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert ready["event"] == "sim.ready"
    assert ready["base_url"].startswith("http://127.0.0.1:")
    assert served == 200

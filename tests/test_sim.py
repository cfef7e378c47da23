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
OPEN = "/trade/api/v2/futures/orders/open"
CLOSED = "/trade/api/v2/futures/orders/closed"
TIME = "/trade/api/v2/time"
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS

Started = tuple[SimExchange, str]
SimFactory = Callable[..., Awaitable[Started]]
Answer = tuple[int, Any, aiohttp.ClientResponse]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[SimFactory]:
    """Start simulated exchanges on 127.0.0.1:0 on the fake clock; stop them after."""
    started: list[SimExchange] = []

    async def make(**overrides: Any) -> Started:
        config = SimConfig(**({"seed": 7} | overrides))
        sim = SimExchange(config, clock=clock.monotonic, wall=clock.time, sleep=clock.sleep)
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
    sim: SimExchange,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    content_type: str | None = "application/json",
    epoch_ms: int | None = None,
) -> Answer:
    """Send one request, signed on the venue's clock unless ``headers`` are given.

    Returns the status, the parsed JSON (or raw text) and the response.
    """
    if headers is None:
        epoch = sim.clock.now_ms() if epoch_ms is None else epoch_ms
        headers = sign_headers(sim.config, method, path, epoch_ms=epoch)
    if content_type is not None:
        headers = {"Content-Type": content_type, **headers}
    data = None if body is None else json.dumps(body)
    async with session.request(method, url + path, data=data, headers=headers) as resp:
        text = await resp.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, parsed, resp


async def cancel_all(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, symbol: str | None = None
) -> Answer:
    body = {"exchange": sim.config.exchange} | ({"symbol": symbol} if symbol else {})
    return await call(session, url, sim, "POST", CANCEL_ALL, body)


async def status_of(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, order_id: str
) -> Answer:
    return await call(session, url, sim, "GET", f"{STATUS}?order_id={order_id}")


async def listing(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, path: str = OPEN, **body: Any
) -> Answer:
    return await call(session, url, sim, "POST", path, {"exchange": sim.config.exchange} | body)


async def admin(session: aiohttp.ClientSession, url: str, route: str, body: Any = None) -> Any:
    async with session.post(f"{url}/_sim/{route}", json=body) as resp:
        answer = await resp.json()
        return answer if resp.status == 200 else (resp.status, answer)


def ids_of(body: Any) -> list[str]:
    return [o["order_id"] for o in body["data"]["orders"]]


# -- signing, Content-Type, the clock -----------------------------------------


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
    epoch = sim.clock.now_ms()

    wrong_path, _, _ = await call(
        session,
        url,
        sim,
        "GET",
        path,
        headers=sign_headers(sim.config, "GET", STATUS, epoch_ms=epoch),
    )
    wrong_key, body, _ = await call(
        session,
        url,
        sim,
        "GET",
        path,
        headers=sign_headers(other_secret, "GET", path, epoch_ms=epoch),
    )

    assert (wrong_path, wrong_key) == (401, 401)
    assert body["error"] == "unauthorized"
    assert body["message"] == "bad signature"
    assert sim.stats()["requests"]["order_status"] == 2
    assert sim.windows["order_status"].peak == 2


async def test_missing_headers_and_unknown_key_are_refused(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """No auth headers or a foreign API key get 401 with a message."""
    sim, url = await make_sim()
    foreign = sign_headers(
        replace(sim.config, api_key="someone-else"), "GET", STATUS, epoch_ms=sim.clock.now_ms()
    )

    answers = [(await call(session, url, sim, "GET", STATUS, headers=h))[:2] for h in ({}, foreign)]

    assert [status for status, _ in answers] == [401, 401]
    assert [body["message"] for _, body in answers] == ["missing auth headers", "unknown api key"]


def test_sign_headers_uses_the_configured_header_names() -> None:
    """sign_headers emits the configured key, signature and epoch headers."""
    config = SimConfig(api_key_header="K", signature_header="S", epoch_header="E")

    headers = sign_headers(config, "POST", CANCEL_ALL, epoch_ms=1_700_000_000_000)

    assert headers["K"] == DEMO_API_KEY
    assert headers["E"] == "1700000000000"
    assert len(headers["S"]) == 128  # 64-byte Ed25519 signature, hex


def test_config_rejects_impossible_settings() -> None:
    """A bad Ed25519 secret, limit, ratio or shared path is refused naming the field."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"api_secret": "not-hex"}, "api_secret"),
        ({"open_orders_limit": (0, 60.0)}, "open_orders_limit"),
        ({"fill_ratio": 0.7, "partial_fill_ratio": 0.4}, "partial_fill_ratio"),
        ({"cancel_delay": (0.5, 0.1)}, "cancel_delay"),
        ({"time_path": STATUS}, "paths"),
    ]
    for fields, name in cases:
        with pytest.raises(ValueError, match=name):
            SimConfig(**fields)


def test_config_defaults_are_the_venue_limits_and_lists_become_tuples() -> None:
    """Defaults are 10/60, 20/60 x3 and a 60 s skew; JSON lists are stored as tuples."""
    config = SimConfig(closed_orders_limit=[5, 30], cancel_delay=[0.05, 0.5])  # type: ignore[arg-type]
    limits = [config.limit(e) for e in ("cancel_all", "order_status", "open_orders")]

    assert limits == [(10, 60.0), (20, 60.0), (20, 60.0)]
    assert config.limit("closed_orders") == (5, 30.0)
    assert config.cancel_delay == (0.05, 0.5)
    assert config.max_epoch_skew == 60.0
    assert config.require_content_type is True


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", f"{STATUS}?order_id={uuid.UUID(int=1)}", None), ("POST", OPEN, {})],
)
async def test_signed_request_without_json_content_type_is_400_and_counted(
    make_sim: SimFactory,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    """A signed GET or POST without Content-Type: application/json is 400 naming it, and counts."""
    sim, url = await make_sim()
    body = None if body is None else {"exchange": sim.config.exchange}

    missing = await call(session, url, sim, method, path, body, content_type=None)
    text = await call(session, url, sim, method, path, body, content_type="text/plain")

    assert (missing[0], text[0]) == (400, 400)
    assert "Content-Type" in missing[1]["message"]
    assert sum(sim.stats()["requests"].values()) == 2
    assert sum(w.peak for w in sim.windows.values()) == 2


async def test_content_type_rule_can_be_switched_off(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """With require_content_type=False a signed GET without Content-Type is served."""
    sim, url = await make_sim(require_content_type=False)
    [order_id] = sim.seed({"BTCUSDT": 1})

    status, _, _ = await call(
        session, url, sim, "GET", f"{STATUS}?order_id={order_id}", content_type=None
    )

    assert status == 200


async def test_cancel_all_with_a_wrong_content_type_cancels_nothing(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A cancel_all sent as text/plain is refused before it touches the book."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 2})

    status, _, _ = await call(
        session, url, sim, "POST", CANCEL_ALL, {"exchange": "EXCHANGE_2"}, content_type="text/plain"
    )

    assert status == 400
    assert sim.stats()["orders"] == {"RAISED": 2}


async def test_server_time_is_unsigned_uncounted_and_on_the_venue_clock(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """GET time answers serverTime (wall + offset) without auth, outside every window."""
    sim, url = await make_sim(clock_offset_ms=-2_500)

    answers = []
    for _ in range(30):
        async with session.get(url + TIME) as resp:
            answers.append((resp.status, await resp.json()))
    stats = sim.stats()

    assert {status for status, _ in answers} == {200}
    assert answers[0][1] == {"serverTime": int(clock.time() * 1000) - 2_500}
    assert stats["requests"]["time"] == 30
    assert sum(stats["violations"].values()) == 0
    assert sum(stats["peak_in_window"].values()) == 0


async def test_clock_offset_moves_server_time_and_the_epoch_check(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """After a 90 s offset, the wall-clock epoch gets 401 'epoch is off'; server time passes."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})
    path = f"{STATUS}?order_id={order_id}"
    wall_ms = int(clock.time() * 1000)

    moved = await admin(session, url, "clock", {"offset_ms": 90_000})
    async with session.get(url + TIME) as resp:
        server = (await resp.json())["serverTime"]
    drifted, body, _ = await call(session, url, sim, "GET", path, epoch_ms=wall_ms)
    corrected, _, _ = await call(session, url, sim, "GET", path, epoch_ms=server)

    assert moved == {"offset_ms": 90_000, "server_time": wall_ms + 90_000}
    assert server == wall_ms + 90_000
    assert drifted == 401
    assert body["message"].startswith("epoch is off the server clock by -90000 ms")
    assert corrected == 200
    assert sim.stats()["clock"]["offset_ms"] == 90_000


@pytest.mark.parametrize(("off_ms", "expected"), [(60_000, 200), (-60_000, 200), (60_001, 401)])
async def test_epoch_skew_allowed_is_sixty_seconds_either_way(
    make_sim: SimFactory, session: aiohttp.ClientSession, off_ms: int, expected: int
) -> None:
    """An epoch up to 60 s off the venue's clock passes; a millisecond more is 401."""
    sim, url = await make_sim()

    epoch = sim.clock.now_ms() + off_ms
    status, _, _ = await call(
        session, url, sim, "POST", OPEN, {"exchange": "EXCHANGE_2"}, epoch_ms=epoch
    )

    assert status == expected


# -- orders, cancel_all and order status --------------------------------------


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


# -- listings ------------------------------------------------------------------


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


# -- rate limits ---------------------------------------------------------------

_REQUEST: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "cancel_all": ("POST", CANCEL_ALL, {"exchange": "EXCHANGE_2"}),
    "order_status": ("GET", f"{STATUS}?order_id={uuid.UUID(int=5)}", None),
    "open_orders": ("POST", OPEN, {"exchange": "EXCHANGE_2"}),
    "closed_orders": ("POST", CLOSED, {"exchange": "EXCHANGE_2"}),
}


@pytest.mark.parametrize(
    ("endpoint", "limit"),
    [("cancel_all", 10), ("order_status", 20), ("open_orders", 20), ("closed_orders", 20)],
)
async def test_each_endpoint_has_its_own_strict_window_at_the_venue_limit(
    make_sim: SimFactory, session: aiohttp.ClientSession, endpoint: str, limit: int
) -> None:
    """The venue's limit passes in 60 s; one more is 429 + Retry-After, a violation there only."""
    sim, url = await make_sim()
    method, path, body = _REQUEST[endpoint]
    for other, (m, p, b) in _REQUEST.items():  # the other windows are full, and independent
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
    assert stats["violations"] == {e: int(e == endpoint) for e in _REQUEST}
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
        "time": 0, "other": 2,
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

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


# -- faults --------------------------------------------------------------------


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
    method, path, body = _REQUEST[endpoint]
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
    method, path, body = _REQUEST.get(endpoint, ("GET", TIME, None))
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
    for _ in range(100):  # the held answer goes out once the delay has passed
        if sim.requests[0].status is not None:
            break
        await asyncio.sleep(0.01)

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
    for _ in range(100):
        if sim.stats()["orders"] == {"CANCELLATION_RAISED": 1}:
            break
        await asyncio.sleep(0.01)
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
    for _ in range(100):  # the server answers once slow_seconds have passed
        if sim.requests[0].status is not None:
            break
        await asyncio.sleep(0.01)
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
    method, path, body = _REQUEST[endpoint]
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
    for _ in range(100):
        if sim.requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(sim.stop(), timeout=3)

    assert await asyncio.wait_for(pending, timeout=1) == 504


# -- the reject switch, the behaviour switch, the trader -----------------------


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

    assert answer == {"fill_ratio": 0.0, "partial_fill_ratio": 1.0, "cancel_delay": [2.0, 2.0]}
    assert sorted(halfway["open"]) == sorted(after)
    assert {final[i] for i in before} == {"CANCELLED"}
    assert {final[i] for i in after} == {"PARTIALLY_EXECUTED"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"fill_ratio": 1.5}, "fill_ratio"),
        ({"fill_ratio": 0.6, "partial_fill_ratio": 0.6}, "partial_fill_ratio"),
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
        "fill_ratio": 0.0, "partial_fill_ratio": 0.0, "cancel_delay": [0.02, 0.3],
    }  # fmt: skip


async def test_trader_places_orders_per_symbol_every_interval_until_done(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The trader places one order per symbol now and every interval, until each has its n."""
    sim, url = await make_sim()

    started = await admin(
        session, url, "trader", {"orders": {"BTCUSDT": 3, "ETHUSDT": 1}, "interval": 5}
    )
    await clock.advance(0)
    first = len(sim.trader.placed)
    await clock.advance(5)
    second = len(sim.trader.placed)
    await clock.advance(5)
    listed = ids_of((await listing(session, sim, url))[1])
    stats = sim.stats()

    assert started["remaining"] == {"BTCUSDT": 3, "ETHUSDT": 1}
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
    await clock.advance(1)
    await clock.advance(0.3)
    stats = sim.stats()

    assert (armed["armed"], armed["running"], before) == (True, False, [])
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


# -- record, stats and admin ---------------------------------------------------


async def test_stats_tell_the_books_own_truth(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """open lists the ids still working; cancelled/executed/partially_executed count outcomes."""
    sim, url = await make_sim(fill_ratio=0.25, partial_fill_ratio=0.25, seed=3)
    ids = sim.seed({"BTCUSDT": 40})
    untouched = sim.seed({"ETHUSDT": 5})

    await cancel_all(session, sim, url, symbol="BTCUSDT")
    during = sim.stats()
    await clock.advance(0.3)
    after = sim.stats()
    by_status = after["orders"]

    assert sorted(during["open"]) == sorted(ids + untouched)
    assert sorted(after["open"]) == sorted(untouched)
    assert after["cancelled"] == by_status["CANCELLED"]
    assert after["executed"] == by_status["EXECUTED"]
    assert after["partially_executed"] == by_status["PARTIALLY_EXECUTED"]
    assert after["cancelled"] + after["executed"] + after["partially_executed"] == 40
    assert min(after["cancelled"], after["executed"], after["partially_executed"]) > 0


async def test_record_keeps_each_request_with_its_answer_and_arrival_times(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Every request is recorded: endpoint, method, raw path, answer and arrival times."""
    sim, url = await make_sim()
    unknown = uuid.UUID(int=9)
    await status_of(session, sim, url, str(unknown))
    await clock.advance(2)
    await cancel_all(session, sim, url)

    first, second = sim.requests
    stats = sim.stats()

    assert (first.endpoint, first.method, first.path, first.status) == (
        "order_status",
        "GET",
        f"{STATUS}?order_id={unknown}",
        404,
    )
    assert (second.endpoint, second.monotonic - first.monotonic) == ("cancel_all", 2)
    assert second.wall - first.wall == 2
    assert stats["cancel_all_arrivals"] == [{"wall": second.wall, "monotonic": second.monotonic}]


async def test_admin_endpoints_seed_fault_clear_forget_and_report(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """The /_sim/ endpoints seed (status, age), inject, clear, forget and report, uncounted."""
    sim, url = await make_sim()

    seeded = await admin(session, url, "seed", {"orders": {"BTCUSDT": 2}})
    old = await admin(
        session, url, "seed", {"orders": {"ETHUSDT": 1}, "status": "OPEN", "age_days": 10}
    )
    pending = (
        await admin(
            session, url, "faults", {"endpoint": "closed_orders", "kind": "422", "message": "x: y"}
        )
    )["faults_pending"]
    cleared = (await admin(session, url, "clear"))["faults_pending"]
    forgotten = await admin(session, url, "forget", {"order_ids": old["order_ids"]})
    status, _, _ = await cancel_all(session, sim, url)
    async with session.get(url + "/_sim/stats") as r:
        stats = await r.json()
    async with session.get(url + "/_sim/requests") as r:
        record = (await r.json())["requests"]
    bad = [
        (await admin(session, url, route, body))[0]
        for route, body in (
            ("faults", {"endpoint": "x", "kind": "500"}),
            ("seed", {"orders": {"BTCUSDT": 1}, "status": "CANCELLED"}),
            ("seed", {"orders": {"BTCUSDT": 1}, "age_days": "old"}),
            ("clock", {"offset_ms": 1.5}),
            ("forget", {"order_ids": "all"}),
        )
    ]

    assert len(seeded["order_ids"]) == 2
    assert pending["closed_orders"] == [
        {"kind": "422", "remaining": 1, "delay": None, "message": "x: y"}
    ]
    assert set(cleared) == {"cancel_all", "order_status", "open_orders", "closed_orders", "time"}
    assert not any(cleared.values())
    assert forgotten == {"forgotten": 1}
    assert status == 200
    assert stats["requests"]["cancel_all"] == 1
    assert sum(stats["requests"].values()) == 1
    assert stats["orders"] == {"CANCELLATION_RAISED": 2}
    assert [(r["endpoint"], r["status"]) for r in record] == [("cancel_all", 200)]
    assert bad == [400] * 5


async def test_seed_over_http_takes_status_and_age(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """POST /_sim/seed with status OPEN and age_days makes orders that old, in that status."""
    sim, url = await make_sim()
    now = sim.clock.now_ms()

    ids = (
        await admin(
            session, url, "seed", {"orders": {"BTCUSDT": 2}, "status": "OPEN", "age_days": 20}
        )
    )["order_ids"]
    orders = [sim.book.orders[i] for i in ids]

    assert {o.status for o in orders} == {"OPEN"}
    assert all(now - 20 * DAY_MS - 2 < o.created_at <= now - 20 * DAY_MS for o in orders)


def test_sim_subcommand_builds_its_config_from_every_option() -> None:
    """Every `killswitch sim` option reaches SimConfig (limits, ratios, delay, offset, ...)."""
    from killswitch.cli import _sim_config, build_parser

    args = build_parser().parse_args(
        [
            "sim", "--port", "0", "--cancel-all-limit", "5/30", "--status-limit", "7/60",
            "--open-orders-limit", "8/60", "--closed-orders-limit", "9/60", "--fill-ratio", "0.1",
            "--partial-fill-ratio", "0.3", "--cancel-delay", "0.05-0.5", "--clock-offset-ms",
            "-90000", "--no-require-content-type", "--no-retry-after", "--seed", "4",
        ]
    )  # fmt: skip
    config = _sim_config(args)

    assert config.cancel_all_limit == (5, 30.0)
    assert (config.status_limit, config.open_orders_limit) == ((7, 60.0), (8, 60.0))
    assert config.closed_orders_limit == (9, 60.0)
    assert (config.fill_ratio, config.partial_fill_ratio) == (0.1, 0.3)
    assert config.cancel_delay == (0.05, 0.5)
    assert config.clock_offset_ms == -90_000
    assert config.require_content_type is False
    assert config.retry_after_on_violation is False
    assert config.seed == 4


def test_sim_subcommand_defaults_are_the_venue_limits() -> None:
    """Without options `killswitch sim` runs at 10/60 and 20/60 x3, requiring Content-Type."""
    from killswitch.cli import _sim_config, build_parser

    config = _sim_config(build_parser().parse_args(["sim", "--port", "0"]))

    assert config == SimConfig(api_key=config.api_key, api_secret=config.api_secret)

"""The exchange client: wire format, error mapping, clock offset, 429 backoff, self-test.

Unit tests mock HTTP with aioresponses; timeouts, connection reuse, keep-alive
and pool isolation are tested against a real aiohttp server on loopback, since
aioresponses exercises neither the connector nor ``ClientTimeout``.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from killswitch.clock import Clock, SystemClock
from killswitch.config.model import ExchangeConfig, Target
from killswitch.exchange.client import (
    DRY_RUN_STATUS,
    ENDPOINTS,
    MAX_RETRY_AFTER,
    MESSAGE_CHARS,
    SYNC_RETRY,
    ExchangeClient,
)
from killswitch.exchange.credentials import Credentials, Secret
from killswitch.exchange.errors import (
    BadResponse,
    ConnectionFailed,
    OrderNotFound,
    RateLimited,
    RejectedRequest,
    RequestTimeout,
    ServerError,
    Unauthorized,
)
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.signing import make_signer
from killswitch.log import redactor
from tests.fakes import FakeClock, settle

BASE = "https://exchange.test"
CANCEL_PATH = "/trade/api/v2/futures/cancel_all"
STATUS_PATH = "/trade/api/v2/futures/order"
OPEN_PATH = "/trade/api/v2/futures/orders/open"
CLOSED_PATH = "/trade/api/v2/futures/orders/closed"
TIME_PATH = "/trade/api/v2/time"
CANCEL_URL = BASE + CANCEL_PATH
OPEN_URL = BASE + OPEN_PATH
CLOSED_URL = BASE + CLOSED_PATH
TIME_URL = BASE + TIME_PATH
# RFC 8032 TEST 1 key pair.
SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
PUBLIC = Ed25519PublicKey.from_public_bytes(
    bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
)
API_KEY = "unit-test-api-key"
IDS = ["01936be4-2571-7a3f-97fa-a29a2b85d717", "01936be4-9e37-7487-8e31-20fede6ef271"]
WALL_MS = 1_780_000_000_000  # FakeClock's wall time at start, in ms


@pytest.fixture(autouse=True)
def _aioresponses_stream_writer_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioresponses 0.7.9 omits ``stream_writer`` (aiohttp 3.14); remove once #288 ships."""
    original = aiohttp.ClientResponse.__init__

    def init(self: aiohttp.ClientResponse, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        original(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientResponse, "__init__", init)


def status_url(order_id: str) -> str:
    return f"{BASE}{STATUS_PATH}?order_id={order_id}"


def limiter(clock: Clock, name: str, requests: int = 100) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(name, requests, 60.0, clock)


def build(
    clock: Clock,
    *,
    base_url: str = BASE,
    limiters: dict[str, SlidingWindowLimiter] | None = None,
    **overrides: Any,
) -> ExchangeClient:
    pool_args = {
        k: overrides.pop(k)
        for k in ("status_pool_size", "cancel_pool_size", "cancel_warm_connections")
        if k in overrides
    }
    config = ExchangeConfig(base_url=base_url, **overrides)
    credentials = Credentials(api_key=Secret(API_KEY), api_secret=Secret(SECRET))
    given = limiters or {}
    return ExchangeClient(
        config,
        make_signer(config, credentials),
        limiters={e: given.get(e) or limiter(clock, e) for e in ENDPOINTS},
        clock=clock,
        **pool_args,
    )


def order(
    order_id: str = "o-1", status: str = "RAISED", created_at: int = WALL_MS
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "exchange": "EXCHANGE_2",
        "symbol": "BTCUSDT",
        "side": "BUY",
        "status": status,
        "order_type": "LIMIT",
        "quantity": "160",
        "exec_quantity": "0.5",
        "price": "61234.50",
        "avg_execution_price": "0",
        "created_at": created_at,
        "updated_at": created_at + 5,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mocked(clock: FakeClock) -> Iterator[aioresponses]:
    with aioresponses() as m:
        m.get(TIME_URL, payload={"serverTime": WALL_MS}, repeat=True)
        yield m


def calls(m: aioresponses, method: str, url: str) -> list[Any]:
    return list(m.requests.get((method, URL(url)), []))


def verify(headers: dict[str, str], message: str) -> None:
    PUBLIC.verify(bytes.fromhex(headers["X-AUTH-SIGNATURE"]), message.encode())


def body_of(call: Any) -> Any:
    return json.loads(call.kwargs["data"])


# --------------------------------------------------------------------------- wire format


async def test_cancel_all_sends_the_documented_body_and_signed_headers(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """cancel_all POSTs {"exchange"} with key, epoch, Content-Type and an ed25519 signature."""
    mocked.post(CANCEL_URL, payload={"data": {"orders_ids": IDS}})
    async with build(clock) as client:
        ids = await client.cancel_all("EXCHANGE_2")

    assert ids == IDS
    (call,) = calls(mocked, "POST", CANCEL_URL)
    assert body_of(call) == {"exchange": "EXCHANGE_2"}
    headers = call.kwargs["headers"]
    assert headers["X-AUTH-APIKEY"] == API_KEY
    assert headers["X-AUTH-EPOCH"] == str(WALL_MS)
    assert headers["Content-Type"] == "application/json"
    verify(headers, f"POST{CANCEL_PATH}{WALL_MS}")


async def test_cancel_all_scoped_to_a_symbol_sends_the_symbol(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A symbol-scoped cancel_all adds "symbol" to the body."""
    mocked.post(CANCEL_URL, payload={"data": {"orders_ids": []}})
    async with build(clock) as client:
        assert await client.cancel_all("EXCHANGE_2", "BTCUSDT") == []

    (call,) = calls(mocked, "POST", CANCEL_URL)
    assert body_of(call) == {"exchange": "EXCHANGE_2", "symbol": "BTCUSDT"}


@pytest.mark.parametrize(
    "body",
    ['{"data": {"orders_ids": []}}', '{"data": {}}', '{"data": {"orders_ids": null}}', "{}"],
)
async def test_cancel_all_with_no_orders_ids_means_none_was_open(
    clock: FakeClock, mocked: aioresponses, body: str
) -> None:
    """A 200 with an empty or missing orders_ids is "nothing was open", not an error."""
    mocked.post(CANCEL_URL, status=200, body=body)
    async with build(clock) as client:
        assert await client.cancel_all("EXCHANGE_2") == []
    assert client.requests_sent["cancel_all"] == {"ok": 1}


@pytest.mark.parametrize(
    "payload",
    [
        {"data": {"order": {**order(status="PARTIALLY_EXECUTED")}}},
        {"data": {**order(status="PARTIALLY_EXECUTED")}},
    ],
    ids=["nested", "flat"],
)
async def test_order_status_parses_both_shapes_with_decimal_numbers(
    clock: FakeClock, mocked: aioresponses, payload: dict[str, Any]
) -> None:
    """order_status returns a VenueOrder from either shape; numbers are Decimal; GET is signed."""
    mocked.get(status_url("o-1"), payload=payload)
    async with build(clock) as client:
        got = await client.order_status("o-1")

    assert got.order_id == "o-1"
    assert got.status == "PARTIALLY_EXECUTED"
    assert (got.exchange, got.symbol) == ("EXCHANGE_2", "BTCUSDT")
    assert got.quantity == Decimal("160")
    assert got.exec_quantity == Decimal("0.5")
    assert got.raw["price"] == Decimal("61234.50")
    assert (got.created_at, got.updated_at) == (WALL_MS, WALL_MS + 5)
    (call,) = calls(mocked, "GET", status_url("o-1"))
    assert call.kwargs["headers"]["Content-Type"] == "application/json"
    verify(call.kwargs["headers"], f"GET{STATUS_PATH}?order_id=o-1{WALL_MS}")


async def test_open_orders_sends_the_documented_body_and_reads_the_page(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """open_orders POSTs exchange, symbol, limit and the window; the page keeps order and cursor."""
    orders = [order("o-2", created_at=WALL_MS - 10), order("o-1", created_at=WALL_MS - 20)]
    mocked.post(OPEN_URL, payload={"data": {"orders": orders, "cursor": WALL_MS - 20}})
    async with build(clock) as client:
        page = await client.open_orders(
            "EXCHANGE_2", "BTCUSDT", limit=50, from_time=WALL_MS - 1000, to_time=WALL_MS
        )

    assert [o.order_id for o in page.orders] == ["o-2", "o-1"]
    assert page.cursor == WALL_MS - 20
    assert page.orders[0].quantity == Decimal("160")
    (call,) = calls(mocked, "POST", OPEN_URL)
    assert body_of(call) == {
        "exchange": "EXCHANGE_2",
        "symbol": "BTCUSDT",
        "from_time": WALL_MS - 1000,
        "to_time": WALL_MS,
        "limit": 50,
    }
    headers = call.kwargs["headers"]
    assert headers["Content-Type"] == "application/json"
    verify(headers, f"POST{OPEN_PATH}{WALL_MS}")


async def test_closed_orders_sends_status_and_uses_its_own_limiter(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """closed_orders adds the status filter and takes a slot of the closed_orders window only."""
    closed, opened = limiter(clock, "closed_orders"), limiter(clock, "open_orders")
    mocked.post(CLOSED_URL, payload={"data": {"orders": [order(status="CANCELLED")]}})
    async with build(clock, limiters={"closed_orders": closed, "open_orders": opened}) as client:
        page = await client.closed_orders("EXCHANGE_2", limit=10, status="CANCELLED")

    assert page.orders[0].status == "CANCELLED"
    assert page.cursor == WALL_MS  # no cursor given: the oldest created_at on the page
    (call,) = calls(mocked, "POST", CLOSED_URL)
    assert body_of(call) == {"exchange": "EXCHANGE_2", "status": "CANCELLED", "limit": 10}
    assert (len(closed.history()), len(opened.history())) == (1, 0)


@pytest.mark.parametrize(
    "body",
    ['{"data": {"orders": [], "cursor": null}}', '{"data": {"orders": []}}'],
)
async def test_an_empty_listing_is_an_empty_page(
    clock: FakeClock, mocked: aioresponses, body: str
) -> None:
    """An empty orders list is an empty page with no cursor."""
    mocked.post(OPEN_URL, status=200, body=body)
    async with build(clock) as client:
        page = await client.open_orders("EXCHANGE_2")
    assert (page.orders, page.cursor) == ((), None)


@pytest.mark.parametrize(
    "body",
    [
        '{"data": {"orders": "none"}}',
        '{"data": {}}',  # no orders list: never "nothing open"
        '{"data": {"orders": null}}',
        '{"data": {"orders": [{"order_id": "o-1", "status": "RAISED"}]}}',  # no created_at
        '{"data": {"orders": [{"status": "RAISED", "created_at": 1}]}}',
        '{"data": {"orders": [{"order_id": "o-1", "created_at": 1}]}}',
        '{"orders": []}',
        "[]",
    ],
)
async def test_a_malformed_listing_is_bad_response(
    clock: FakeClock, mocked: aioresponses, body: str
) -> None:
    """A listing without orders that have id, status and created_at raises BadResponse."""
    mocked.post(OPEN_URL, status=200, body=body)
    async with build(clock) as client:
        with pytest.raises(BadResponse):
            await client.open_orders("EXCHANGE_2")


async def test_listing_arguments_are_checked_before_sending(clock: FakeClock) -> None:
    """limit outside 1..50 or from_time after to_time is a ValueError; nothing is sent."""
    async with build(clock, dry_run=True) as client:
        for bad in (0, 51):
            with pytest.raises(ValueError, match="limit"):
                await client.open_orders("EXCHANGE_2", limit=bad)
        with pytest.raises(ValueError, match="from_time"):
            await client.closed_orders("EXCHANGE_2", from_time=2, to_time=1)


# --------------------------------------------------------------------------- error mapping


async def test_429_with_retry_after_defers_the_limiter_plus_backoff(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A 429 with Retry-After raises RateLimited and holds the limiter that long plus 1 s."""
    cancel = limiter(clock, "cancel_all")
    mocked.post(CANCEL_URL, status=429, headers={"Retry-After": "30"})
    async with build(clock, limiters={"cancel_all": cancel}) as client:
        with pytest.raises(RateLimited) as caught:
            await client.cancel_all("EXCHANGE_2")

    assert caught.value.retry_after == 30.0
    assert cancel.next_free_in() == pytest.approx(31.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("99999", MAX_RETRY_AFTER),
        ("soon", None),
        ("-5", None),
        (None, None),
        (formatdate(1_780_000_060, usegmt=True), 60.0),  # FakeClock's wall time + 60 s
    ],
)
async def test_429_retry_after_is_capped_and_garbage_ignored(
    clock: FakeClock, mocked: aioresponses, header: str | None, expected: float | None
) -> None:
    """Retry-After (seconds or HTTP-date) is capped; without a usable one only the backoff holds."""
    status = limiter(clock, "order_status")
    headers = {"Retry-After": header} if header is not None else {}
    mocked.get(status_url("o-1"), status=429, headers=headers)
    async with build(clock, limiters={"order_status": status}) as client:
        with pytest.raises(RateLimited) as caught:
            await client.order_status("o-1")

    assert caught.value.retry_after == expected
    assert status.next_free_in() == pytest.approx((expected or 0.0) + 1.0)


async def test_consecutive_429s_double_the_backoff_and_an_answer_resets_it(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """429 without Retry-After: the next send waits 1 s, then 2 s, 4 s; a 200 starts over."""
    listing = limiter(clock, "open_orders")
    for _ in range(3):
        mocked.post(OPEN_URL, status=429, payload={"message": "slow down"})
    mocked.post(OPEN_URL, payload={"data": {"orders": []}})
    mocked.post(OPEN_URL, status=429)
    waits = []
    async with build(clock, limiters={"open_orders": listing}) as client:
        for _ in range(3):
            with pytest.raises(RateLimited) as caught:
                await client.open_orders("EXCHANGE_2")
            assert caught.value.message == "slow down"
            waits.append(listing.next_free_in())
            await clock.advance(waits[-1])
        await client.open_orders("EXCHANGE_2")
        with pytest.raises(RateLimited):
            await client.open_orders("EXCHANGE_2")
        waits.append(listing.next_free_in())

    assert waits == pytest.approx([1.0, 2.0, 4.0, 1.0])


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_5xx_is_server_error_with_outcome_unknown(
    clock: FakeClock, mocked: aioresponses, code: int
) -> None:
    """Any 5xx raises ServerError: status kept, venue's message kept, outcome unknown."""
    mocked.post(CANCEL_URL, status=code, payload={"message": "upstream broke"})
    mocked.get(status_url("o-1"), status=code, body="<html>bad gateway</html>")
    async with build(clock) as client:
        with pytest.raises(ServerError) as on_cancel:
            await client.cancel_all("EXCHANGE_2")
        with pytest.raises(ServerError) as on_status:
            await client.order_status("o-1")

    assert on_cancel.value.status == on_status.value.status == code
    assert on_cancel.value.outcome_unknown
    assert on_cancel.value.message == "upstream broke"
    assert on_status.value.message is None


async def test_401_resyncs_the_clock_and_retries_once_then_is_unauthorized(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A 401 that persists: one re-sync, one retry through the limiter, then Unauthorized."""
    cancel = limiter(clock, "cancel_all")
    mocked.post(CANCEL_URL, status=401, payload={"message": "Invalid signature"}, repeat=True)
    with structlog.testing.capture_logs() as events:
        async with build(clock, limiters={"cancel_all": cancel}, cancel_warm_connections=1) as c:
            synced = len(calls(mocked, "GET", TIME_URL))
            with pytest.raises(Unauthorized) as caught:
                await c.cancel_all("EXCHANGE_2")

    assert isinstance(caught.value, RejectedRequest)
    assert caught.value.status == 401
    assert caught.value.message == "Invalid signature"
    assert not caught.value.outcome_unknown
    assert len(calls(mocked, "POST", CANCEL_URL)) == 2
    assert len(cancel.history()) == 2
    assert len(calls(mocked, "GET", TIME_URL)) > synced  # re-synced in between
    assert API_KEY not in repr(events) + str(caught.value)
    assert SECRET not in repr(events) + str(caught.value)


async def test_401_is_cured_by_the_resync_and_the_retry_signs_with_the_new_offset(
    clock: FakeClock,
) -> None:
    """A clock 90 s off: 401, re-sync measures +90 000 ms, the retry's epoch carries it."""
    with aioresponses() as m:
        m.get(TIME_URL, payload={"serverTime": WALL_MS}, repeat=False)
        m.get(TIME_URL, payload={"serverTime": WALL_MS}, repeat=False)
        m.get(TIME_URL, payload={"serverTime": WALL_MS}, repeat=False)
        m.get(TIME_URL, payload={"serverTime": WALL_MS + 90_000}, repeat=True)
        m.post(CANCEL_URL, status=401, payload={"message": "epoch out of range"})
        m.post(CANCEL_URL, payload={"data": {"orders_ids": IDS}})
        async with build(clock) as client:
            assert client.venue_now_ms() == WALL_MS
            assert await client.cancel_all("EXCHANGE_2") == IDS
            assert client.venue_now_ms() == WALL_MS + 90_000

        first, second = calls(m, "POST", CANCEL_URL)
    assert first.kwargs["headers"]["X-AUTH-EPOCH"] == str(WALL_MS)
    assert second.kwargs["headers"]["X-AUTH-EPOCH"] == str(WALL_MS + 90_000)
    verify(second.kwargs["headers"], f"POST{CANCEL_PATH}{WALL_MS + 90_000}")
    assert client.requests_sent["cancel_all"] == {"unauthorized": 1, "ok": 1}


@pytest.mark.parametrize("code", [404, 400, 422])
async def test_unknown_id_answers_on_order_status_are_order_not_found(
    clock: FakeClock, mocked: aioresponses, code: int
) -> None:
    """404, 400 or 422 on the status endpoint means the exchange does not know the id."""
    mocked.get(status_url("ghost"), status=code, payload={"message": "order_id: not found"})
    async with build(clock) as client:
        with pytest.raises(OrderNotFound) as caught:
            await client.order_status("ghost")

    assert caught.value.status == code
    assert caught.value.message == "order_id: not found"


@pytest.mark.parametrize("code", [404, 400, 422, 403])
async def test_other_4xx_on_cancel_all_is_rejected_request_with_the_message(
    clock: FakeClock, mocked: aioresponses, code: int
) -> None:
    """4xx on cancel_all is a rejected request carrying the venue's message, not a retry."""
    mocked.post(CANCEL_URL, status=code, payload={"message": "symbol: XYZ is not tradable"})
    async with build(clock) as client:
        with pytest.raises(RejectedRequest) as caught:
            await client.cancel_all("EXCHANGE_2", "XYZ")

    assert type(caught.value) is RejectedRequest
    assert caught.value.status == code
    assert caught.value.message == "symbol: XYZ is not tradable"
    assert len(calls(mocked, "POST", CANCEL_URL)) == 1


async def test_the_venue_message_is_one_short_line_without_secrets(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A long, multi-line message echoing the API key is shortened and scrubbed."""
    redactor.register([API_KEY])
    try:
        text = f"bad key {API_KEY}\nline two " + "x" * 1000
        mocked.post(CANCEL_URL, status=422, payload={"message": text})
        async with build(clock) as client:
            with pytest.raises(RejectedRequest) as caught:
                await client.cancel_all("EXCHANGE_2")
    finally:
        redactor.clear()

    message = caught.value.message
    assert message is not None
    assert len(message) <= MESSAGE_CHARS
    assert "\n" not in message
    assert API_KEY not in message + str(caught.value)
    assert message.startswith("bad key **redacted** line two")


@pytest.mark.parametrize(
    "body",
    [
        "<html>maintenance</html>",
        "[]",
        '{"data": []}',
        '{"data": {"orders_ids": "abc"}}',
        '{"data": {"orders_ids": [true]}}',
        '{"data": {"orders_ids": ["ok", ""]}}',
        '{"data": {"ids": ["a"]}}',
        '{"data": null, "ids": []}',
    ],
)
async def test_cancel_all_malformed_or_wrong_shape_is_bad_response(
    clock: FakeClock, mocked: aioresponses, body: str
) -> None:
    """A 200 that is not {"data": {"orders_ids": [id, ...]}} raises BadResponse, outcome unknown."""
    mocked.post(CANCEL_URL, status=200, body=body)
    async with build(clock) as client:
        with pytest.raises(BadResponse) as caught:
            await client.cancel_all("EXCHANGE_2")
    assert caught.value.outcome_unknown


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"data": {"order": "CANCELLED"}}',
        '{"data": {"order": {"order_id": "o-1"}}}',
        '{"data": {"order_id": "o-1", "status": ""}}',
        '{"data": {"order_id": "o-1", "status": 3}}',
        '{"data": {"order_id": "o-2", "status": "CANCELLED"}}',
    ],
)
async def test_order_status_malformed_or_wrong_shape_is_bad_response(
    clock: FakeClock, mocked: aioresponses, body: str
) -> None:
    """A status answer without a status string (or about another id) raises BadResponse."""
    mocked.get(status_url("o-1"), status=200, body=body)
    async with build(clock) as client:
        with pytest.raises(BadResponse):
            await client.order_status("o-1")


async def test_connection_error_on_a_fresh_connection_is_not_retried(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A connection error that is not a stale pooled connection raises ConnectionFailed once."""
    cancel = limiter(clock, "cancel_all")
    mocked.post(CANCEL_URL, exception=aiohttp.ServerDisconnectedError())
    async with build(clock, limiters={"cancel_all": cancel}) as client:
        with pytest.raises(ConnectionFailed) as caught:
            await client.cancel_all("EXCHANGE_2")

    assert caught.value.outcome_unknown  # the request may have left
    assert len(calls(mocked, "POST", CANCEL_URL)) == 1
    assert len(cancel.history()) == 1


async def test_every_request_takes_a_limiter_slot_and_is_counted(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """Successes and failures alike take a slot and land in requests_sent by outcome."""
    limiters = {e: limiter(clock, e) for e in ENDPOINTS}
    mocked.post(CANCEL_URL, payload={"data": {"orders_ids": IDS}})
    mocked.post(CANCEL_URL, status=503)
    mocked.get(status_url("o-1"), status=404)
    mocked.post(OPEN_URL, payload={"data": {"orders": []}})
    mocked.post(CLOSED_URL, status=422)
    async with build(clock, limiters=limiters) as client:
        await client.cancel_all("EXCHANGE_2")
        with pytest.raises(ServerError):
            await client.cancel_all("EXCHANGE_2")
        with pytest.raises(OrderNotFound):
            await client.order_status("o-1")
        await client.open_orders("EXCHANGE_2")
        with pytest.raises(RejectedRequest):
            await client.closed_orders("EXCHANGE_2")

    assert {e: len(lim.history()) for e, lim in limiters.items()} == {
        "cancel_all": 2,
        "order_status": 1,
        "open_orders": 1,
        "closed_orders": 1,
    }
    assert client.requests_sent["cancel_all"] == {"ok": 1, "server_error": 1}
    assert client.requests_sent["order_status"] == {"not_found": 1}
    assert client.requests_sent["closed_orders"] == {"rejected": 1}
    assert client.health()["last_call"] == {
        "endpoint": "closed_orders",
        "ok": False,
        "http_status": 422,
        "message": None,
        "at": round(clock.time(), 3),
    }


async def test_dry_run_sends_nothing(clock: FakeClock) -> None:
    """In dry run, requests are logged, none is sent and no limiter slot is taken."""
    limiters = {e: limiter(clock, e) for e in ENDPOINTS}
    with aioresponses() as m, structlog.testing.capture_logs() as events:
        async with build(clock, limiters=limiters, dry_run=True) as client:
            assert await client.cancel_all("EXCHANGE_2", "ETHUSDT") == []
            assert (await client.order_status("o-1")).status == DRY_RUN_STATUS
            assert (await client.open_orders("EXCHANGE_2")).orders == ()
            assert (await client.closed_orders("EXCHANGE_2")).cursor is None
            await client.sync_clock()
            assert (await client.self_test([Target("EXCHANGE_2")])).ok
        assert m.requests == {}

    assert all(lim.history() == [] for lim in limiters.values())
    dry = [e for e in events if e["event"] == "exchange.dry_run"]
    assert dry[0]["method"] == "POST"
    assert dry[0]["path"] == CANCEL_PATH
    assert dry[0]["body"] == {"exchange": "EXCHANGE_2", "symbol": "ETHUSDT"}
    assert dry[1]["path"] == f"{STATUS_PATH}?order_id=o-1"
    assert [d["path"] for d in dry[2:5]] == [OPEN_PATH, CLOSED_PATH, TIME_PATH]


async def test_dry_run_background_only_logs(clock: FakeClock) -> None:
    """In dry run, the periodic clock sync sends nothing and never fails."""
    with aioresponses() as m, structlog.testing.capture_logs() as events:
        async with build(clock, dry_run=True, clock_sync_interval=10.0) as client:
            background = asyncio.create_task(client.run_background())
            await clock.advance(25.0)
            assert not background.done()
            background.cancel()
            with pytest.raises(asyncio.CancelledError):
                await background
        assert m.requests == {}
    assert [e["path"] for e in events if e["event"] == "exchange.dry_run"] == [TIME_PATH] * 2


async def test_timeouts_above_five_seconds_are_not_rounded(clock: FakeClock) -> None:
    """The sessions' ceil_threshold is above request_timeout, so aiohttp never rounds it up."""
    async with build(clock, base_url="http://127.0.0.1:9", request_timeout=7.3) as client:
        for session in client._transport.sessions.values():
            assert session.timeout.total == 7.3
            assert session.timeout.ceil_threshold > 7.3


# --------------------------------------------------------------------------- clock


async def test_sync_clock_measures_the_offset_at_the_round_trip_midpoint(
    clock: FakeClock,
) -> None:
    """offset_ms = serverTime - local wall time at the midpoint; logged as clock.synced."""
    with aioresponses() as m, structlog.testing.capture_logs() as events:
        m.get(TIME_URL, payload={"serverTime": WALL_MS - 2_500}, repeat=True)
        async with build(clock) as client:
            sample = await client.sync_clock()
            health = client.health()

    assert sample.offset_ms == -2_500
    assert client.venue_now_ms() == WALL_MS - 2_500
    synced = [e for e in events if e["event"] == "clock.synced"]
    assert synced[-1]["offset_ms"] == -2_500
    assert "rtt_ms" in synced[-1]
    assert health["offset_ms"] == -2_500
    assert health["synced_at"] == pytest.approx(WALL_MS / 1000)
    # The time call is unsigned and takes no limiter slot.
    headers = calls(m, "GET", TIME_URL)[0].kwargs["headers"]
    assert "X-AUTH-SIGNATURE" not in headers


async def test_a_failed_sync_is_logged_and_retried_never_fatal(clock: FakeClock) -> None:
    """start() survives a failing time endpoint; run_background retries after SYNC_RETRY s."""
    with aioresponses() as m, structlog.testing.capture_logs() as events:
        m.get(TIME_URL, status=503, payload={"message": "maintenance"}, repeat=False)
        m.get(TIME_URL, status=503, payload={"message": "maintenance"}, repeat=False)
        m.get(TIME_URL, status=503, payload={"message": "maintenance"}, repeat=False)
        m.get(TIME_URL, payload={"serverTime": WALL_MS + 5_000 + 1_000}, repeat=True)
        async with build(clock, clock_sync_interval=60.0, cancel_warm_connections=2) as client:
            assert client.health()["offset_ms"] is None
            background = asyncio.create_task(client.run_background())
            await clock.advance(SYNC_RETRY - 0.1)
            assert len(calls(m, "GET", TIME_URL)) == 3
            await clock.advance(0.1)
            await settle()
            assert client.venue_now_ms() == int(clock.time() * 1000) + 1_000
            background.cancel()
            with pytest.raises(asyncio.CancelledError):
                await background

    failed = [e for e in events if e["event"] == "clock.sync_failed"]
    assert len(failed) == 1
    assert failed[0]["http_status"] == 503
    assert failed[0]["message"] == "maintenance"


async def test_failed_syncs_are_retried_ever_more_slowly_up_to_the_interval(
    clock: FakeClock,
) -> None:
    """While the time endpoint fails, retries come after 5, 10, 20, then 30 (the interval) s."""
    with aioresponses() as m, structlog.testing.capture_logs() as events:
        m.get(TIME_URL, status=502, repeat=True)
        async with build(clock, clock_sync_interval=30.0, cancel_warm_connections=1) as client:
            background = asyncio.create_task(client.run_background())
            at = []
            for _ in range(5):
                await settle()
                nxt = clock.next_deadline()
                assert nxt is not None
                at.append(nxt - clock.monotonic())
                await clock.advance(at[-1])
                await settle()
            background.cancel()
            with pytest.raises(asyncio.CancelledError):
                await background

    assert at == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert [e["failures"] for e in events if e["event"] == "clock.sync_failed"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


async def test_background_resyncs_every_interval_on_both_pools(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """run_background makes the time call on both pools every clock_sync_interval."""
    async with build(clock, clock_sync_interval=30.0, cancel_warm_connections=2) as client:
        assert len(calls(mocked, "GET", TIME_URL)) == 3  # two for cancel_all, one for the rest
        background = asyncio.create_task(client.run_background())
        await clock.advance(29.0)
        assert len(calls(mocked, "GET", TIME_URL)) == 3
        await clock.advance(1.0)
        assert len(calls(mocked, "GET", TIME_URL)) == 6
        await clock.advance(30.0)
        assert len(calls(mocked, "GET", TIME_URL)) == 9
        background.cancel()
        with pytest.raises(asyncio.CancelledError):
            await background


# --------------------------------------------------------------------------- self-test


async def test_self_test_passes_with_one_signed_listing_per_target(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """One open_orders(limit=1) per target; health() shows the result."""
    mocked.post(OPEN_URL, payload={"data": {"orders": []}}, repeat=True)
    async with build(clock) as client:
        result = await client.self_test([Target("EXCHANGE_2"), Target("EXCHANGE_1", ("X",))])

    assert result.ok
    sent = calls(mocked, "POST", OPEN_URL)
    assert sorted(body_of(c)["exchange"] for c in sent) == ["EXCHANGE_1", "EXCHANGE_2"]
    assert all(body_of(c)["limit"] == 1 for c in sent)
    assert client.health()["self_test"]["ok"] is True


async def test_self_test_401_says_credentials_or_clock_and_is_rerun_while_failing(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A lasting 401 logs exchange.rejected naming credentials/clock; run_background re-tests."""
    mocked.post(OPEN_URL, status=401, payload={"message": "Invalid API key"})
    mocked.post(OPEN_URL, status=401, payload={"message": "Invalid API key"})
    mocked.post(OPEN_URL, payload={"data": {"orders": []}}, repeat=True)
    with structlog.testing.capture_logs() as events:
        async with build(clock, clock_sync_interval=60.0) as client:
            result = await client.self_test([Target("EXCHANGE_2")])
            health = client.health()
            background = asyncio.create_task(client.run_background())
            await clock.advance(60.0)
            await settle()
            healed = client.health()["self_test"]
            await clock.advance(60.0)
            background.cancel()
            with pytest.raises(asyncio.CancelledError):
                await background

    assert not result.ok
    (check,) = result.checks
    assert (check.http_status, check.error, check.message) == (
        401,
        "unauthorized",
        "Invalid API key",
    )
    rejected = [e for e in events if e["event"] == "exchange.rejected"]
    assert len(rejected) == 1
    assert rejected[0]["http_status"] == 401
    assert rejected[0]["message"] == "Invalid API key"
    assert "credentials or clock" in rejected[0]["problem"]
    assert health["self_test"]["ok"] is False
    assert health["self_test"]["checks"][0]["message"] == "Invalid API key"
    assert healed["ok"] is True
    assert len(calls(mocked, "POST", OPEN_URL)) == 3  # not re-run once it passed


# --------------------------------------------------------------------------- loopback server


class LoopbackExchange:
    """A tiny real exchange on 127.0.0.1 that records which TCP connection served what."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, object]] = []  # (method, path, client peer)
        self.drop_posts = 0  # abort this many POSTs without an answer
        self.drop_status = 0  # abort this many status GETs without an answer
        self.close_after_time = False
        self.time_fails = False
        self.cancel_delay = 0.0
        self.status_gate = asyncio.Event()
        self.status_gate.set()
        self.status_in_flight = 0
        self.status_paths: list[str] = []  # raw path and query, as received
        self.status_headers: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get(TIME_PATH, self.time, allow_head=False)
        app.router.add_post(CANCEL_PATH, self.cancel_all)
        app.router.add_get(STATUS_PATH, self.order_status, allow_head=False)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def connections(self) -> set[object]:
        return {peer for _, _, peer in self.requests}

    def peers(self, path: str) -> list[object]:
        return [peer for _, p, peer in self.requests if p == path]

    def _record(self, request: web.Request) -> None:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")
        self.requests.append((request.method, request.path, peer))

    async def time(self, request: web.Request) -> web.Response:
        self._record(request)
        if self.time_fails:
            return web.json_response({"message": "down"}, status=503)
        headers = {"Connection": "close"} if self.close_after_time else {}
        return web.json_response({"serverTime": int(time.time() * 1000)}, headers=headers)

    async def cancel_all(self, request: web.Request) -> web.Response:
        self._record(request)
        if self.drop_posts:
            self.drop_posts -= 1
            assert request.transport is not None
            request.transport.abort()  # as if the server had closed the idle connection
            return web.Response(status=500)
        await asyncio.sleep(self.cancel_delay)
        return web.json_response({"data": {"orders_ids": IDS}})

    async def order_status(self, request: web.Request) -> web.Response:
        self._record(request)
        self.status_paths.append(request.raw_path)
        self.status_headers.append(dict(request.headers))
        if self.drop_status:
            self.drop_status -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        self.status_in_flight += 1
        try:
            await asyncio.wait_for(self.status_gate.wait(), 5.0)
        finally:
            self.status_in_flight -= 1
        order_id = request.query["order_id"]
        return web.json_response({"data": {"order": {"order_id": order_id, "status": "OPEN"}}})


@pytest.fixture
async def exchange() -> AsyncIterator[LoopbackExchange]:
    server = LoopbackExchange()
    await server.server.start_server()
    yield server
    server.status_gate.set()
    await server.server.close()


async def wait_for(predicate: Any, limit: float = 1.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_request_timeout_fires(exchange: LoopbackExchange) -> None:
    """A server slower than request_timeout makes the call raise RequestTimeout on time."""
    exchange.cancel_delay = 1.0
    async with build(SystemClock(), base_url=exchange.base_url, request_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as caught:
            await client.cancel_all("EXCHANGE_2")
        elapsed = time.monotonic() - started

    assert caught.value.outcome_unknown
    assert 0.15 < elapsed < 0.6
    assert client.requests_sent["cancel_all"] == {"timeout": 1}


async def test_first_cancel_all_reuses_a_connection_warmed_by_the_time_call(
    exchange: LoopbackExchange,
) -> None:
    """After start(), cancel_all goes out on a connection the server-time call opened."""
    async with build(SystemClock(), base_url=exchange.base_url) as client:
        warmed = exchange.connections()
        assert len(exchange.peers(TIME_PATH)) == 3  # two for cancel_all, one for the rest
        assert await client.cancel_all("EXCHANGE_2") == IDS

    (post_peer,) = exchange.peers(CANCEL_PATH)
    assert post_peer in warmed
    assert exchange.connections() == warmed
    assert {p for _, p, _ in exchange.requests} == {TIME_PATH, CANCEL_PATH}  # nothing else


async def test_resync_runs_every_interval_on_the_same_connections(
    exchange: LoopbackExchange, clock: FakeClock
) -> None:
    """Each clock_sync_interval the time calls reuse the open connections (pools stay warm)."""
    async with build(clock, base_url=exchange.base_url, clock_sync_interval=10.0) as client:
        warmed = exchange.connections()
        background = asyncio.create_task(client.run_background())
        await clock.advance(10.0)
        await wait_for(lambda: len(exchange.peers(TIME_PATH)) == 6)
        background.cancel()
        with pytest.raises(asyncio.CancelledError):
            await background

    assert exchange.connections() == warmed


async def test_resync_skips_a_pool_with_requests_in_flight(
    exchange: LoopbackExchange, clock: FakeClock
) -> None:
    """A busy pool gets no time call (it would queue for a slot); the idle one still does."""
    exchange.status_gate.clear()
    async with build(clock, base_url=exchange.base_url, clock_sync_interval=10.0) as client:
        poll = asyncio.create_task(client.order_status("o-1"))
        await wait_for(lambda: exchange.status_in_flight == 1)
        await client.sync_clock()
        assert len(exchange.peers(TIME_PATH)) == 5  # 3 at start + 2 for the cancel pool
        exchange.status_gate.set()
        assert (await poll).status == "OPEN"


async def test_stale_keepalive_post_is_retried_once(exchange: LoopbackExchange) -> None:
    """A POST that dies on a pooled connection is retried at once, through the limiter."""
    cancel = limiter(SystemClock(), "cancel_all")
    exchange.drop_posts = 1
    with structlog.testing.capture_logs() as events:
        async with build(
            SystemClock(), base_url=exchange.base_url, limiters={"cancel_all": cancel}
        ) as client:
            assert await client.cancel_all("EXCHANGE_2") == IDS

    assert len(exchange.peers(CANCEL_PATH)) == 2
    assert len(cancel.history()) == 2
    assert client.requests_sent["cancel_all"] == {"stale_connection": 1, "ok": 1}
    assert [e["event"] for e in events].count("exchange.stale_connection") == 1


async def test_stale_retry_happens_only_once(exchange: LoopbackExchange) -> None:
    """If the retry dies too, cancel_all raises ConnectionFailed after exactly two sends."""
    exchange.drop_posts = 2
    async with build(SystemClock(), base_url=exchange.base_url) as client:
        with pytest.raises(ConnectionFailed):
            await client.cancel_all("EXCHANGE_2")

    assert len(exchange.peers(CANCEL_PATH)) == 2


async def test_disconnect_on_a_new_connection_is_not_retried(exchange: LoopbackExchange) -> None:
    """A POST that dies on a freshly opened connection is not a stale one: no retry."""
    exchange.close_after_time = True  # nothing stays pooled after the warm-up
    exchange.drop_posts = 1
    async with build(SystemClock(), base_url=exchange.base_url) as client:
        with pytest.raises(ConnectionFailed):
            await client.cancel_all("EXCHANGE_2")

    assert len(exchange.peers(CANCEL_PATH)) == 1


async def test_status_get_resent_on_a_stale_connection_pays_its_limiter_slot(
    exchange: LoopbackExchange,
) -> None:
    """aiohttp re-sends a GET whose kept-alive connection dropped: the re-send waits for
    its own limiter slot (a public trace hook), so every request that leaves is counted."""
    status = limiter(SystemClock(), "order_status")
    exchange.drop_status = 1
    async with build(
        SystemClock(), base_url=exchange.base_url, limiters={"order_status": status}
    ) as client:
        warmed = exchange.connections()
        assert (await client.order_status("o-1")).status == "OPEN"

    first, second = exchange.peers(STATUS_PATH)  # two requests reached the server
    assert first in warmed  # the first went out on a reused keep-alive connection
    assert second != first
    assert len(status.history()) == 2  # and each took a slot of the window


async def test_cancel_all_is_not_delayed_by_a_saturated_status_pool(
    exchange: LoopbackExchange,
) -> None:
    """With every status connection busy, cancel_all still answers at once on its own pool."""
    exchange.status_gate.clear()
    async with build(SystemClock(), base_url=exchange.base_url, status_pool_size=2) as client:
        polls = [asyncio.create_task(client.order_status(f"o-{i}")) for i in range(3)]
        await wait_for(lambda: exchange.status_in_flight == 2)
        await asyncio.sleep(0.05)
        assert exchange.status_in_flight == 2  # the third poll waits for a pool slot

        started = time.monotonic()
        assert await client.cancel_all("EXCHANGE_2") == IDS
        elapsed = time.monotonic() - started

        exchange.status_gate.set()
        assert [o.status for o in await asyncio.gather(*polls)] == ["OPEN", "OPEN", "OPEN"]

    assert elapsed < 0.25


async def test_unreachable_exchange_at_start_is_logged_not_raised(
    exchange: LoopbackExchange,
) -> None:
    """An unreachable exchange at start logs clock.sync_failed; start() still succeeds."""
    url = exchange.base_url
    await exchange.server.close()
    with structlog.testing.capture_logs() as events:
        async with build(SystemClock(), base_url=url) as client:
            with pytest.raises(ConnectionFailed) as caught:
                await client.cancel_all("EXCHANGE_2")

    assert not caught.value.outcome_unknown  # the connection was never made
    failed = [e for e in events if e["event"] == "clock.sync_failed"]
    assert len(failed) == 1
    assert client.requests_sent["time"] == {"connection": 3}


async def test_order_status_quotes_the_id_and_signs_it_unquoted(
    exchange: LoopbackExchange, clock: FakeClock
) -> None:
    """An id with reserved characters goes out percent-encoded and is signed unquoted."""
    async with build(clock, base_url=exchange.base_url) as client:
        assert (await client.order_status("a/b c+d")).status == "OPEN"
        epoch = client.venue_now_ms()

    assert exchange.status_paths == [f"{STATUS_PATH}?order_id=a%2Fb%20c%2Bd"]
    headers = exchange.status_headers[0]
    assert headers["Content-Type"] == "application/json"
    verify(headers, f"GET{STATUS_PATH}?order_id=a/b c+d{epoch}")


async def test_a_burst_of_401s_costs_one_resync(clock: FakeClock) -> None:
    """Three polls in flight all answered 401: one re-sync, then each retries once."""
    with aioresponses() as m:
        m.get(TIME_URL, payload={"serverTime": WALL_MS}, repeat=True)
        for order_id in ("a", "b", "c"):
            m.get(status_url(order_id), status=401, payload={"message": "epoch"})
            m.get(status_url(order_id), payload={"data": {"order_id": order_id, "status": "OPEN"}})
        async with build(clock, cancel_warm_connections=1) as client:
            at_start = len(calls(m, "GET", TIME_URL))
            got = await asyncio.gather(*(client.order_status(i) for i in "abc"))
            resyncs = len(calls(m, "GET", TIME_URL)) - at_start

    assert [o.status for o in got] == ["OPEN"] * 3
    assert resyncs <= 2  # one measurement (one call per idle pool)
    assert client.requests_sent["order_status"] == {"unauthorized": 3, "ok": 3}

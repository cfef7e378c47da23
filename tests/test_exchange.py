"""The exchange client: wire format, error mapping, pools, warm-up and stale retries.

Unit tests mock HTTP with aioresponses; timeouts, connection reuse and pool
isolation are tested against a real aiohttp server on loopback, since
aioresponses exercises neither the connector nor ``ClientTimeout``.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import AsyncIterator, Iterator
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
from killswitch.config import ExchangeConfig
from killswitch.credentials import Credentials, Secret
from killswitch.errors import (
    BadResponse,
    ConnectionFailed,
    OrderNotFound,
    RateLimited,
    RejectedRequest,
    RequestTimeout,
    ServerError,
)
from killswitch.exchange import DRY_RUN_STATUS, MAX_RETRY_AFTER, ExchangeClient
from killswitch.ratelimit import SlidingWindowLimiter
from killswitch.signing import make_signer
from tests.fakes import FakeClock

BASE = "https://exchange.test"
CANCEL_PATH = "/trade/api/v2/futures/cancel_all"
STATUS_PATH = "/trade/api/v2/futures/order"
CANCEL_URL = BASE + CANCEL_PATH
# RFC 8032 TEST 1 key pair.
SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
PUBLIC = Ed25519PublicKey.from_public_bytes(
    bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
)
API_KEY = "unit-test-api-key"
IDS = ["01936be4-2571-7a3f-97fa-a29a2b85d717", "01936be4-9e37-7487-8e31-20fede6ef271"]


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
    cancel: SlidingWindowLimiter | None = None,
    status: SlidingWindowLimiter | None = None,
    **overrides: Any,
) -> ExchangeClient:
    pool_args = {
        k: overrides.pop(k)
        for k in ("status_pool_size", "cancel_pool_size", "cancel_warm_connections")
        if k in overrides
    }
    config = ExchangeConfig(base_url=base_url, **overrides)
    credentials = Credentials(api_key=Secret(API_KEY), api_secret=Secret(SECRET))
    return ExchangeClient(
        config,
        make_signer(config, credentials),
        cancel_limiter=cancel or limiter(clock, "cancel_all"),
        status_limiter=status or limiter(clock, "order_status"),
        clock=clock,
        **pool_args,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        m.head(BASE + "/", status=404, repeat=True)
        yield m


def calls(m: aioresponses, method: str, url: str) -> list[Any]:
    return list(m.requests.get((method, URL(url)), []))


def verify(headers: dict[str, str], message: str) -> None:
    PUBLIC.verify(bytes.fromhex(headers["X-AUTH-SIGNATURE"]), message.encode())


# --------------------------------------------------------------------------- wire format


async def test_cancel_all_sends_the_documented_body_and_signed_headers(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """cancel_all POSTs {"exchange"} with key, epoch and an ed25519 signature over the path."""
    mocked.post(CANCEL_URL, payload={"data": {"orders_ids": IDS}})
    async with build(clock) as client:
        ids = await client.cancel_all("EXCHANGE_2")

    assert ids == IDS
    (call,) = calls(mocked, "POST", CANCEL_URL)
    assert json.loads(call.kwargs["data"]) == {"exchange": "EXCHANGE_2"}
    headers = call.kwargs["headers"]
    epoch = int(clock.time() * 1000)
    assert headers["X-AUTH-APIKEY"] == API_KEY
    assert headers["X-AUTH-EPOCH"] == str(epoch)
    assert headers["Content-Type"] == "application/json"
    verify(headers, f"POST{CANCEL_PATH}{epoch}")


async def test_cancel_all_scoped_to_a_symbol_sends_the_symbol(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A symbol-scoped cancel_all adds "symbol" to the body."""
    mocked.post(CANCEL_URL, payload={"data": {"orders_ids": []}})
    async with build(clock) as client:
        assert await client.cancel_all("EXCHANGE_2", "BTCUSDT") == []

    (call,) = calls(mocked, "POST", CANCEL_URL)
    assert json.loads(call.kwargs["data"]) == {"exchange": "EXCHANGE_2", "symbol": "BTCUSDT"}


@pytest.mark.parametrize(
    "payload",
    [
        {"data": {"order": {"order_id": "o-1", "status": "CANCELLED", "symbol": "BTCUSDT"}}},
        {"data": {"order_id": "o-1", "status": "CANCELLED"}},
    ],
    ids=["nested", "flat"],
)
async def test_order_status_parses_both_shapes(
    clock: FakeClock, mocked: aioresponses, payload: dict[str, Any]
) -> None:
    """order_status returns the status from the nested and from the flat answer."""
    mocked.get(status_url("o-1"), payload=payload)
    async with build(clock) as client:
        assert await client.order_status("o-1") == "CANCELLED"

    (call,) = calls(mocked, "GET", status_url("o-1"))
    epoch = int(clock.time() * 1000)
    verify(call.kwargs["headers"], f"GET{STATUS_PATH}?order_id=o-1{epoch}")


# --------------------------------------------------------------------------- error mapping


async def test_429_with_retry_after_defers_the_limiter(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """A 429 with Retry-After raises RateLimited and holds the limiter that long."""
    cancel = limiter(clock, "cancel_all")
    mocked.post(CANCEL_URL, status=429, headers={"Retry-After": "30"})
    async with build(clock, cancel=cancel) as client:
        with pytest.raises(RateLimited) as caught:
            await client.cancel_all("EXCHANGE_2")

    assert caught.value.retry_after == 30.0
    assert cancel.next_free_in() == pytest.approx(30.0)


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
    """Retry-After (seconds or HTTP-date) is capped; an unparsable or missing one defers nothing."""
    status = limiter(clock, "order_status")
    headers = {"Retry-After": header} if header is not None else {}
    mocked.get(status_url("o-1"), status=429, headers=headers)
    async with build(clock, status=status) as client:
        with pytest.raises(RateLimited) as caught:
            await client.order_status("o-1")

    assert caught.value.retry_after == expected
    assert status.next_free_in() == pytest.approx(expected or 0.0)


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_5xx_is_server_error(clock: FakeClock, mocked: aioresponses, code: int) -> None:
    """Any 5xx from either endpoint raises ServerError carrying the status."""
    mocked.post(CANCEL_URL, status=code, body="upstream broke")
    mocked.get(status_url("o-1"), status=code)
    async with build(clock) as client:
        with pytest.raises(ServerError) as on_cancel:
            await client.cancel_all("EXCHANGE_2")
        with pytest.raises(ServerError) as on_status:
            await client.order_status("o-1")

    assert on_cancel.value.status == on_status.value.status == code


async def test_401_is_rejected_request(clock: FakeClock, mocked: aioresponses) -> None:
    """A 401 (bad key or signature) raises RejectedRequest with status 401, naming no secret."""
    mocked.post(CANCEL_URL, status=401, payload={"message": "bad signature"})
    with structlog.testing.capture_logs() as events:
        async with build(clock) as client:
            with pytest.raises(RejectedRequest) as caught:
                await client.cancel_all("EXCHANGE_2")

    assert caught.value.status == 401
    assert API_KEY not in str(caught.value)
    assert SECRET not in str(caught.value)
    assert API_KEY not in repr(events)
    assert SECRET not in repr(events)


async def test_404_on_order_status_is_order_not_found(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """404 on the status endpoint means the exchange does not know the id."""
    mocked.get(status_url("ghost"), status=404)
    async with build(clock) as client:
        with pytest.raises(OrderNotFound) as caught:
            await client.order_status("ghost")

    assert caught.value.status == 404


async def test_404_on_cancel_all_is_rejected_request(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """404 on cancel_all (a wrong path) is a rejected request, not an unknown order."""
    mocked.post(CANCEL_URL, status=404)
    async with build(clock) as client:
        with pytest.raises(RejectedRequest) as caught:
            await client.cancel_all("EXCHANGE_2")

    assert caught.value.status == 404


@pytest.mark.parametrize(
    "body",
    [
        "<html>maintenance</html>",
        "[]",
        '{"orders_ids": []}',
        '{"data": null}',
        '{"data": {}}',
        '{"data": {"orders_ids": "abc"}}',
        '{"data": {"orders_ids": [1, 2]}}',
        '{"data": {"orders_ids": ["ok", ""]}}',
    ],
)
async def test_cancel_all_malformed_or_wrong_shape_is_bad_response(
    clock: FakeClock, mocked: aioresponses, body: str
) -> None:
    """A 200 whose body is not {"data": {"orders_ids": [str, ...]}} raises BadResponse."""
    mocked.post(CANCEL_URL, status=200, body=body)
    async with build(clock) as client:
        with pytest.raises(BadResponse):
            await client.cancel_all("EXCHANGE_2")


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
    async with build(clock, cancel=cancel) as client:
        with pytest.raises(ConnectionFailed):
            await client.cancel_all("EXCHANGE_2")

    assert len(calls(mocked, "POST", CANCEL_URL)) == 1
    assert len(cancel.history()) == 1


async def test_every_request_takes_a_limiter_slot_and_is_counted(
    clock: FakeClock, mocked: aioresponses
) -> None:
    """Successes and failures alike take a slot and land in requests_sent by outcome."""
    cancel, status = limiter(clock, "cancel_all"), limiter(clock, "order_status")
    mocked.post(CANCEL_URL, payload={"data": {"orders_ids": IDS}})
    mocked.post(CANCEL_URL, status=503)
    mocked.get(status_url("o-1"), status=404)
    async with build(clock, cancel=cancel, status=status) as client:
        await client.cancel_all("EXCHANGE_2")
        with pytest.raises(ServerError):
            await client.cancel_all("EXCHANGE_2")
        with pytest.raises(OrderNotFound):
            await client.order_status("o-1")

    assert len(cancel.history()) == 2
    assert len(status.history()) == 1
    assert client.requests_sent["cancel_all"] == {"ok": 1, "server_error": 1}
    assert client.requests_sent["order_status"] == {"not_found": 1}


async def test_dry_run_sends_nothing(clock: FakeClock) -> None:
    """In dry run, requests are logged, none is sent and no limiter slot is taken."""
    cancel, status = limiter(clock, "cancel_all"), limiter(clock, "order_status")
    with aioresponses() as m, structlog.testing.capture_logs() as events:
        async with build(clock, cancel=cancel, status=status, dry_run=True) as client:
            assert await client.cancel_all("EXCHANGE_2", "ETHUSDT") == []
            assert await client.order_status("o-1") == DRY_RUN_STATUS
        assert m.requests == {}

    assert cancel.history() == []
    assert status.history() == []
    dry = [e for e in events if e["event"] == "exchange.dry_run"]
    assert dry[0]["method"] == "POST"
    assert dry[0]["path"] == CANCEL_PATH
    assert dry[0]["body"] == {"exchange": "EXCHANGE_2", "symbol": "ETHUSDT"}
    assert dry[1]["path"] == f"{STATUS_PATH}?order_id=o-1"


async def test_timeouts_above_five_seconds_are_not_rounded(clock: FakeClock) -> None:
    """The sessions' ceil_threshold is above request_timeout, so aiohttp never rounds it up."""
    async with build(clock, base_url="http://127.0.0.1:9", request_timeout=7.3) as client:
        for session in (client._cancel_session, client._status_session):
            assert session is not None
            assert session.timeout.total == 7.3
            assert session.timeout.ceil_threshold > 7.3


# --------------------------------------------------------------------------- loopback server


class LoopbackExchange:
    """A tiny real exchange on 127.0.0.1 that records which TCP connection served what."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []  # (method, client peer address)
        self.drop_posts = 0  # abort this many POSTs without an answer
        self.close_after_head = False
        self.cancel_delay = 0.0
        self.status_gate = asyncio.Event()
        self.status_gate.set()
        self.status_in_flight = 0
        self.status_paths: list[str] = []  # raw path and query, as received
        self.status_headers: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_route("HEAD", "/", self.head)
        app.router.add_post(CANCEL_PATH, self.cancel_all)
        app.router.add_get(STATUS_PATH, self.order_status)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def connections(self) -> set[object]:
        return {peer for _, peer in self.requests}

    def peers(self, method: str) -> list[object]:
        return [peer for m, peer in self.requests if m == method]

    def _record(self, request: web.Request) -> None:
        assert request.transport is not None
        self.requests.append((request.method, request.transport.get_extra_info("peername")))

    async def head(self, request: web.Request) -> web.Response:
        self._record(request)
        headers = {"Connection": "close"} if self.close_after_head else {}
        # A body gives the answer a Content-Length; without one the client cannot keep it.
        return web.Response(status=404, text="not found", headers=headers)

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
        with pytest.raises(RequestTimeout):
            await client.cancel_all("EXCHANGE_2")
        elapsed = time.monotonic() - started

    assert 0.15 < elapsed < 0.6
    assert client.requests_sent["cancel_all"] == {"timeout": 1}


async def test_first_cancel_all_reuses_a_warmed_connection(exchange: LoopbackExchange) -> None:
    """After start(), cancel_all goes out on a connection the warm-up already opened."""
    async with build(SystemClock(), base_url=exchange.base_url) as client:
        warmed = exchange.connections()
        assert len(exchange.peers("HEAD")) == 3  # two for cancel_all, one for status
        assert await client.cancel_all("EXCHANGE_2") == IDS

    (post_peer,) = exchange.peers("POST")
    assert post_peer in warmed
    assert exchange.connections() == warmed


async def test_rewarm_runs_every_keepalive_interval_on_the_same_connections(
    exchange: LoopbackExchange, clock: FakeClock
) -> None:
    """The background re-warm sends HEADs each keepalive_interval, reusing the open connections."""
    async with build(clock, base_url=exchange.base_url, clock_sync_interval=10.0):
        warmed = exchange.connections()
        await clock.advance(10.0)
        await wait_for(lambda: len(exchange.peers("HEAD")) == 6)

    assert exchange.connections() == warmed


async def test_rewarm_skips_a_pool_with_requests_in_flight(
    exchange: LoopbackExchange, clock: FakeClock
) -> None:
    """A busy status pool is not re-warmed (a HEAD would queue for a slot); cancel's still is."""
    exchange.status_gate.clear()
    async with build(clock, base_url=exchange.base_url, clock_sync_interval=10.0) as client:
        poll = asyncio.create_task(client.order_status("o-1"))
        await wait_for(lambda: exchange.status_in_flight == 1)
        await clock.advance(10.0)
        await wait_for(lambda: len(exchange.peers("HEAD")) == 5)
        await asyncio.sleep(0.05)
        assert len(exchange.peers("HEAD")) == 5  # 3 at start + 2 for the cancel pool
        exchange.status_gate.set()
        assert await poll == "OPEN"


async def test_stale_keepalive_post_is_retried_once(exchange: LoopbackExchange) -> None:
    """A POST that dies on a pooled connection is retried at once, through the limiter."""
    cancel = limiter(SystemClock(), "cancel_all")
    exchange.drop_posts = 1
    with structlog.testing.capture_logs() as events:
        async with build(SystemClock(), base_url=exchange.base_url, cancel=cancel) as client:
            assert await client.cancel_all("EXCHANGE_2") == IDS

    assert len(exchange.peers("POST")) == 2
    assert len(cancel.history()) == 2
    assert client.requests_sent["cancel_all"] == {"stale_connection": 1, "ok": 1}
    assert [e["event"] for e in events].count("exchange.stale_connection") == 1


async def test_stale_retry_happens_only_once(exchange: LoopbackExchange) -> None:
    """If the retry dies too, cancel_all raises ConnectionFailed after exactly two sends."""
    exchange.drop_posts = 2
    async with build(SystemClock(), base_url=exchange.base_url) as client:
        with pytest.raises(ConnectionFailed):
            await client.cancel_all("EXCHANGE_2")

    assert len(exchange.peers("POST")) == 2


async def test_disconnect_on_a_new_connection_is_not_retried(exchange: LoopbackExchange) -> None:
    """A POST that dies on a freshly opened connection is not a stale one: no retry."""
    exchange.close_after_head = True  # nothing stays pooled after the warm-up
    exchange.drop_posts = 1
    async with build(SystemClock(), base_url=exchange.base_url) as client:
        with pytest.raises(ConnectionFailed):
            await client.cancel_all("EXCHANGE_2")

    assert len(exchange.peers("POST")) == 1


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
        assert await asyncio.gather(*polls) == ["OPEN", "OPEN", "OPEN"]

    assert elapsed < 0.25


async def test_warm_failure_is_logged_not_raised(exchange: LoopbackExchange) -> None:
    """An unreachable exchange at start logs exchange.warm_failed; start() still succeeds."""
    url = exchange.base_url
    await exchange.server.close()
    with structlog.testing.capture_logs() as events:
        async with build(SystemClock(), base_url=url) as client:
            with pytest.raises(ConnectionFailed):
                await client.cancel_all("EXCHANGE_2")

    failed = [e for e in events if e["event"] == "exchange.warm_failed"]
    assert {e["pool"] for e in failed} == {"cancel", "status"}
    assert client.requests_sent["warm"] == {"failed": 3}


async def test_order_status_quotes_the_id_and_signs_it_unquoted(
    exchange: LoopbackExchange, clock: FakeClock
) -> None:
    """An id with reserved characters goes out percent-encoded and is signed unquoted."""
    async with build(clock, base_url=exchange.base_url) as client:
        assert await client.order_status("a/b c+d") == "OPEN"

    assert exchange.status_paths == [f"{STATUS_PATH}?order_id=a%2Fb%20c%2Bd"]
    epoch = int(clock.time() * 1000)
    verify(exchange.status_headers[0], f"GET{STATUS_PATH}?order_id=a/b c+d{epoch}")

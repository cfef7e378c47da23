"""The exchange client: the venue's endpoints, signed and rate limited (contract §2, §3).

Every signed request carries ``Content-Type: application/json`` and is signed
with the local wall clock corrected by the offset to the venue's server time
(:meth:`ExchangeClient.sync_clock`, measured at start, every
``exchange.clock_sync_interval`` and at once after a 401).  A 401 gets one
re-sync and one immediate retry, through the limiter; if it persists the call
raises :class:`~killswitch.exchange.errors.Unauthorized`.  A 429 defers that endpoint's
limiter (``Retry-After`` or its own next free slot, plus a doubling backoff),
so a caller simply retries.  The server-time call, made on both connection
pools, is also what keeps them warm: nothing else is ever requested from the
venue's host.

Retry-until-acknowledged, polling and flat-proof policies belong to the kill
engine and the confirmer, not here.  Every signed request goes through its
limiter, retries included; dry run sends nothing and takes no slot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final, TypeVar
from urllib.parse import quote

from killswitch.clock import Clock
from killswitch.config.model import ExchangeConfig, Target
from killswitch.exchange.errors import (
    BadResponse,
    ExchangeError,
    OrderNotFound,
    RateLimited,
    RejectedRequest,
    ServerError,
    Unauthorized,
)
from killswitch.exchange.orders import (
    LISTING_LIMIT,
    OrderPage,
    VenueOrder,
    parse_order,
    parse_page,
)
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.selftest import SelfTest, TargetCheck, run_self_test
from killswitch.exchange.signing import Signer
from killswitch.exchange.transport import (
    CANCEL_POOL,
    MAX_RETRY_AFTER,
    MESSAGE_CHARS,
    STATUS_POOL,
    Answer,
    Transport,
)
from killswitch.exchange.venue_clock import ClockSample, VenueClock, server_time_ms
from killswitch.log import get_logger

__all__ = [
    "CANCEL_ALL",
    "CLOSED_ORDERS",
    "DRY_RUN_STATUS",
    "ENDPOINTS",
    "LISTING_LIMIT",
    "MAX_RETRY_AFTER",
    "MESSAGE_CHARS",
    "OPEN_ORDERS",
    "ORDER_STATUS",
    "TIME",
    "ClockSample",
    "ExchangeClient",
    "OrderPage",
    "SelfTest",
    "TargetCheck",
    "VenueOrder",
]

CANCEL_ALL: Final = "cancel_all"
ORDER_STATUS: Final = "order_status"
OPEN_ORDERS: Final = "open_orders"
CLOSED_ORDERS: Final = "closed_orders"
TIME: Final = "time"
ENDPOINTS: Final = (CANCEL_ALL, ORDER_STATUS, OPEN_ORDERS, CLOSED_ORDERS)
"""The rate-limited endpoints, each with its own limiter (``time`` is not limited)."""

DRY_RUN_STATUS: Final = "DRY_RUN"
"""What :meth:`ExchangeClient.order_status` answers in dry run (never a real status)."""

SYNC_RETRY: Final = 5.0
"""Seconds before a failed clock sync is tried again; doubled per further failure,
up to ``clock_sync_interval``."""

T = TypeVar("T")

_NOT_FOUND: Final = frozenset({400, 404, 422})  # "unknown order id" on the status endpoint


class ExchangeClient:
    """Signed requests to the venue over two warm pools, on four limiters.

    ``limiters`` maps each of :data:`ENDPOINTS` to its sliding window (the daemon
    builds them with persisted send times).  ``requests_sent[endpoint][outcome]``
    counts requests that left the daemon: outcome ``ok``, ``stale_connection``
    (retried at once) or an :class:`ExchangeError` kind.
    """

    def __init__(
        self,
        config: ExchangeConfig,
        signer: Signer,
        *,
        limiters: Mapping[str, SlidingWindowLimiter],
        clock: Clock,
        log: Any = None,
        status_pool_size: int = 64,
        cancel_pool_size: int = 8,
        cancel_warm_connections: int = 2,
    ) -> None:
        missing = [e for e in ENDPOINTS if e not in limiters]
        if missing:
            raise ValueError(f"no limiter for {', '.join(missing)}")
        self._config = config
        self._signer = signer
        # Any further limiter (positions, place order: exchange/positions.py) is kept too.
        self.limiters: dict[str, SlidingWindowLimiter] = {
            **{e: limiters[e] for e in ENDPOINTS},
            **limiters,
        }
        self._clock = clock
        self._log = get_logger(component="exchange") if log is None else log
        self._transport = Transport(
            config,
            clock,
            self._log,
            status_pool_size=status_pool_size,
            cancel_pool_size=cancel_pool_size,
            on_attempt=self._count,
        )
        self._cancel_warm = cancel_warm_connections
        self._prefix = self._transport.prefix
        self._started = False
        self._opened = False
        self._venue_clock = VenueClock(clock, self._log, self._measure)
        self._last_call: dict[str, Any] | None = None
        self._self_test: SelfTest | None = None
        self._self_test_mono: float | None = None
        self._targets: tuple[Target, ...] | None = None
        self.requests_sent: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ExchangeClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def open(self) -> None:
        """Open both pools: from here on the client can send (no request is made).

        :meth:`start` calls it; the daemon calls it first, so a trigger received
        during start-up is sent without waiting for the first clock sync.
        """
        if self._opened:
            return
        self._opened = True
        if not self._config.dry_run:
            self._transport.open()

    async def start(self) -> None:
        """:meth:`open` (if not yet) and make the first clock sync (which warms the pools);
        never fails on the venue's account: a failed sync is logged and retried by
        run_background()."""
        if self._started:
            raise RuntimeError("ExchangeClient.start() called twice")
        self._started = True
        self.open()
        if self._config.dry_run:
            self._log.info("exchange.dry_run_mode", base_url=self._transport.base)
            return
        await self._sync_logged()

    async def close(self) -> None:
        """Close both sessions (bounded)."""
        await self._transport.close()

    async def run_background(self) -> None:
        """Re-sync the clock every ``clock_sync_interval`` (this keeps both pools warm) and
        re-run the self-test while it fails.  Runs until cancelled; never raises ExchangeError.

        A failed sync is retried after ``SYNC_RETRY`` s, doubling with each further
        failure up to the interval.
        """
        interval = self._config.clock_sync_interval
        while True:
            failures = min(self._venue_clock.failures, 32)
            retry = SYNC_RETRY * 2.0 ** (failures - 1) if failures else interval
            await self._clock.sleep(min(interval, retry))
            await self._sync_logged()
            failing = self._self_test is not None and not self._self_test.ok
            due = (
                self._self_test_mono is None
                or self._clock.monotonic() - self._self_test_mono >= interval
            )
            if self._targets is not None and failing and due:
                await self.self_test(self._targets)

    # ------------------------------------------------------------------ clock

    def venue_now_ms(self) -> int:
        """The venue's time as this host best knows it: wall clock plus the measured offset."""
        return self._venue_clock.now_ms()

    async def sync_clock(self) -> ClockSample:
        """Measure the offset to the venue's server time on both pools; logs ``clock.synced``.

        Unsigned and not rate limited.  Each idle pool gets a call (the cancel pool one per
        connection worth keeping warm); the sample with the shortest round trip is used.
        Raises :class:`ExchangeError` when no call succeeded (the offset is kept).
        """
        if self._config.dry_run:
            path = self._prefix + self._config.time_path
            self._log.info("exchange.dry_run", method="GET", path=path, body=None)
            sample = ClockSample.measured(self.venue_now_ms(), self._clock.time(), 0.0)
            self._venue_clock.adopt(sample)
            return sample
        return await self._venue_clock.sync()

    async def _sync_logged(self) -> None:
        try:
            await self.sync_clock()
        except ExchangeError as error:
            self._venue_clock.log_failure(error)

    async def _measure(self) -> list[ClockSample | BaseException]:
        path = self._prefix + self._config.time_path
        pools = [p for p in (CANCEL_POOL, STATUS_POOL) if not self._transport.busy(p)]
        calls = []
        for pool in pools or [STATUS_POOL]:
            wanted = self._cancel_warm if pool == CANCEL_POOL else 1
            n = self._transport.warm_connections(pool, wanted)
            calls += [self._time_call(path, pool) for _ in range(n)]
        return await asyncio.gather(*calls, return_exceptions=True)

    async def _time_call(self, path: str, pool: str) -> ClockSample:
        wall, started = self._clock.time(), self._clock.monotonic()
        answer = await self._transport.request(TIME, "GET", path, pool, limiter=None, headers=dict)
        rtt = self._clock.monotonic() - started
        if not 200 <= answer.status < 300:
            raise self._fail(TIME, self._status_error(TIME, answer))
        try:
            server_ms = server_time_ms(self._document(TIME, answer))
        except ValueError as exc:
            raise self._fail(TIME, BadResponse(TIME, str(exc))) from None
        self._count(TIME, "ok")
        return ClockSample.measured(server_ms, wall, rtt)

    # ------------------------------------------------------------------ endpoints

    async def cancel_all(self, exchange: str, symbol: str | None = None) -> list[str]:
        """Cancel every open order on ``exchange`` (or one ``symbol``); the ids sent for
        cancellation.  A 200 with an empty or missing ``orders_ids`` means none was open."""
        body: dict[str, str] = {"exchange": exchange}
        if symbol is not None:
            body["symbol"] = symbol
        path = self._prefix + self._config.cancel_all_path
        if self._dry_run("POST", path, body):
            return []
        answer = await self._signed(
            CANCEL_ALL, "POST", path, CANCEL_POOL, data=json.dumps(body).encode()
        )
        document = self._document(CANCEL_ALL, answer)
        data = document.get("data")
        if data is None:
            data = {k: v for k, v in document.items() if k != "data"}
        if not isinstance(data, dict):
            raise self._fail(CANCEL_ALL, BadResponse(CANCEL_ALL, "data is not an object"))
        ids = data.get("orders_ids")
        if ids is None:
            # Empty or missing orders_ids is "nothing was open" (VENUE.md) -- but only in
            # an answer that says nothing else: {"data": {"ids": [...]}} is a shape we do
            # not know, an unknown outcome for the listing to resolve, never "none".
            if any(k != "orders_ids" for k in data):
                raise self._fail(CANCEL_ALL, BadResponse(CANCEL_ALL, "data has no orders_ids"))
            ids = []
        if not isinstance(ids, list) or not all(
            (isinstance(i, str) and i) or (isinstance(i, int) and not isinstance(i, bool))
            for i in ids
        ):
            raise self._fail(
                CANCEL_ALL, BadResponse(CANCEL_ALL, "data.orders_ids is not a list of ids")
            )
        self._succeeded(CANCEL_ALL, answer)
        return [str(i) for i in ids]

    async def order_status(self, order_id: str) -> VenueOrder:
        """The order as the venue knows it; 404, 400 or 422 is :class:`OrderNotFound`."""
        if not order_id:
            raise ValueError("order_id must not be empty")
        path = f"{self._prefix}{self._config.order_status_path}?order_id={quote(order_id, safe='')}"
        if self._dry_run("GET", path, None):
            return VenueOrder(order_id, "", "", DRY_RUN_STATUS, 0, None, None, None, {})
        answer = await self._signed(ORDER_STATUS, "GET", path, STATUS_POOL)
        data = self._data(ORDER_STATUS, answer)
        order = data.get("order", data)
        if isinstance(order, dict) and "order_id" not in order:
            order = {**order, "order_id": order_id}  # the answer is about the id asked for
        try:
            parsed = parse_order(order, need_created_at=False)
        except ValueError as exc:
            raise self._fail(ORDER_STATUS, BadResponse(ORDER_STATUS, str(exc))) from None
        if parsed.order_id != order_id:
            raise self._fail(
                ORDER_STATUS, BadResponse(ORDER_STATUS, "answer is about another order_id")
            )
        self._succeeded(ORDER_STATUS, answer)
        return parsed

    async def open_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = LISTING_LIMIT,
        from_time: int | None = None,
        to_time: int | None = None,
    ) -> OrderPage:
        """One page of the open-orders listing, newest first (venue clock, ms, inclusive)."""
        body = self._listing_body(exchange, symbol, limit, from_time, to_time, None)
        return await self._listing(OPEN_ORDERS, self._config.open_orders_path, body)

    async def closed_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = LISTING_LIMIT,
        from_time: int | None = None,
        to_time: int | None = None,
        status: str | None = None,
    ) -> OrderPage:
        """One page of the closed-orders listing (EXECUTED, PARTIALLY_EXECUTED, CANCELLED)."""
        body = self._listing_body(exchange, symbol, limit, from_time, to_time, status)
        return await self._listing(CLOSED_ORDERS, self._config.closed_orders_path, body)

    @staticmethod
    def _listing_body(
        exchange: str,
        symbol: str | None,
        limit: int,
        from_time: int | None,
        to_time: int | None,
        status: str | None,
    ) -> dict[str, Any]:
        if not 1 <= limit <= LISTING_LIMIT:
            raise ValueError(f"limit must be 1 to {LISTING_LIMIT}, got {limit}")
        if from_time is not None and to_time is not None and from_time > to_time:
            raise ValueError("from_time is after to_time")
        body: dict[str, Any] = {"exchange": exchange}
        optional = {"symbol": symbol, "from_time": from_time, "to_time": to_time, "status": status}
        body.update({k: v for k, v in optional.items() if v is not None})
        body["limit"] = limit
        return body

    async def _listing(self, endpoint: str, config_path: str, body: dict[str, Any]) -> OrderPage:
        path = self._prefix + config_path
        if self._dry_run("POST", path, body):
            return OrderPage((), None)
        answer = await self._signed(
            endpoint, "POST", path, STATUS_POOL, data=json.dumps(body).encode()
        )
        data = self._data(endpoint, answer)
        try:
            page = parse_page(data)
        except ValueError as exc:
            raise self._fail(endpoint, BadResponse(endpoint, str(exc))) from None
        self._succeeded(endpoint, answer)
        return page

    async def signed_call(
        self,
        endpoint: str,
        method: str,
        path: str,
        parse: Callable[[dict[str, Any]], T],
        *,
        body: Mapping[str, Any] | None = None,
        retry_stale: bool = True,
    ) -> T | None:
        """One signed call of another endpoint (:mod:`killswitch.exchange.positions`): its
        limiter (``limiters[endpoint]``), the 401 re-sync, errors mapped and counted as for
        the rest; ``parse(document)`` of the JSON answer (a ``ValueError`` it raises is
        :class:`BadResponse`).  ``path`` is relative to the base URL and may carry a query.
        None in dry run (logged, nothing sent).  ``retry_stale=False``: a stale pooled
        connection is an error, never a second request (an order is not re-sent on a guess).
        """
        full = self._prefix + path
        if self._dry_run(method, full, body):
            return None
        data = None if body is None else json.dumps(body).encode()
        answer = await self._signed(
            endpoint, method, full, STATUS_POOL, data=data, retry_stale=retry_stale
        )
        document = self._document(endpoint, answer)
        try:
            value = parse(document)
        except ValueError as exc:
            raise self._fail(endpoint, BadResponse(endpoint, str(exc))) from None
        self._succeeded(endpoint, answer)
        return value

    # ------------------------------------------------------------------ self-test and health

    async def self_test(self, targets: Iterable[Target]) -> SelfTest:
        """One signed ``open_orders(limit=1)`` per target; the result is kept for health()
        and re-run by run_background() while it fails.  Never raises ExchangeError
        (see :mod:`killswitch.exchange.selftest` for what it logs)."""
        self._targets = tuple(targets)

        async def list_one(exchange: str) -> OrderPage:
            return await self.open_orders(exchange, limit=1)

        result = await run_self_test(list_one, self._targets, self._clock.time(), self._log)
        self._self_test, self._self_test_mono = result, self._clock.monotonic()
        return result

    def health(self) -> dict[str, Any]:
        """For ``GET /status`` ``exchange``: the clock, the last signed call, the self-test."""
        sample = self._venue_clock.sample
        return {
            "offset_ms": None if sample is None else sample.offset_ms,
            "rtt_ms": None if sample is None else sample.rtt_ms,
            "synced_at": None if sample is None else round(sample.at, 3),
            "sync_failures": self._venue_clock.failures,
            "last_call": None if self._last_call is None else dict(self._last_call),
            "self_test": None if self._self_test is None else self._self_test.as_dict(),
            "dry_run": self._config.dry_run,
        }

    # ------------------------------------------------------------------ plumbing

    def _dry_run(self, method: str, path: str, body: Any) -> bool:
        if self._config.dry_run:
            self._log.info("exchange.dry_run", method=method, path=path, body=body)
        return self._config.dry_run

    def _headers(self, method: str, path: str) -> dict[str, str]:
        headers = self._signer.headers(method, path, self.venue_now_ms())
        headers["Content-Type"] = "application/json"
        return headers

    async def _signed(
        self,
        endpoint: str,
        method: str,
        path: str,
        pool: str,
        *,
        data: bytes | None = None,
        retry_stale: bool = True,
    ) -> Answer:
        """A signed request with its answer mapped to an error; one re-sync + retry on 401.

        POSTs are retried once at once on a stale pooled connection (a listing is as safe
        to repeat as cancel_all); GETs are not (see the transport).
        """
        limiter = self.limiters[endpoint]
        signed_with = self._venue_clock.generation

        def headers() -> dict[str, str]:
            nonlocal signed_with
            signed_with = self._venue_clock.generation  # after the limiter's wait, at sending
            return self._headers(method, path)

        try:
            for attempt in (1, 2):
                answer = await self._transport.request(
                    endpoint,
                    method,
                    path,
                    pool,
                    limiter=limiter,
                    headers=headers,
                    data=data,
                    retry_stale=retry_stale and method == "POST",
                )
                if answer.status == 429:
                    retry_after = answer.retry_after_seconds(self._clock.time())
                    limiter.rate_limited(retry_after, sent_at=answer.sent_at)
                else:
                    limiter.answered(sent_at=answer.sent_at)
                if answer.status == 401 and attempt == 1:
                    self._count(endpoint, "unauthorized")
                    self._log.warning(
                        "exchange.unauthorized_resync",
                        endpoint=endpoint,
                        message=answer.message(),
                    )
                    # A burst of 401s signed with the same offset costs one re-sync.
                    await self._venue_clock.resync_after(signed_with)
                    continue
                if not 200 <= answer.status < 300:
                    raise self._fail(endpoint, self._status_error(endpoint, answer))
                return answer
        except ExchangeError as error:
            self._record_call(endpoint, False, error.status, error.message)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _succeeded(self, endpoint: str, answer: Answer) -> None:
        self._count(endpoint, "ok")
        self._record_call(endpoint, True, answer.status, None)

    def _record_call(
        self, endpoint: str, ok: bool, http_status: int | None, message: str | None
    ) -> None:
        self._last_call = {
            "endpoint": endpoint,
            "ok": ok,
            "http_status": http_status,
            "message": message,
            "at": round(self._clock.time(), 3),
        }

    def _count(self, endpoint: str, outcome: str) -> None:
        by_outcome = self.requests_sent.setdefault(endpoint, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1

    def _fail(self, endpoint: str, error: ExchangeError) -> ExchangeError:
        self._count(endpoint, error.kind)
        return error

    def _status_error(self, endpoint: str, answer: Answer) -> ExchangeError:
        status, message = answer.status, answer.message()
        if status == 429:
            retry_after = answer.retry_after_seconds(self._clock.time())
            return RateLimited(endpoint, retry_after, message=message)
        if status >= 500:
            return ServerError(endpoint, f"HTTP {status}", status=status, message=message)
        if status == 401:
            return Unauthorized(
                endpoint, "HTTP 401 after a clock re-sync", status=status, message=message
            )
        if status in _NOT_FOUND and endpoint == ORDER_STATUS:
            return OrderNotFound(
                endpoint, f"HTTP {status}: unknown order_id", status=status, message=message
            )
        if 300 <= status < 400 or status < 200:
            return BadResponse(endpoint, f"HTTP {status}", status=status, message=message)
        return RejectedRequest(endpoint, f"HTTP {status}", status=status, message=message)

    def _document(self, endpoint: str, answer: Answer) -> dict[str, Any]:
        try:
            document = json.loads(answer.body, parse_float=Decimal)
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
            raise self._fail(endpoint, BadResponse(endpoint, "body is not JSON")) from None
        if not isinstance(document, dict):
            raise self._fail(endpoint, BadResponse(endpoint, "body is not a JSON object"))
        return document

    def _data(self, endpoint: str, answer: Answer) -> dict[str, Any]:
        data = self._document(endpoint, answer).get("data")
        if not isinstance(data, dict):
            raise self._fail(endpoint, BadResponse(endpoint, "body has no 'data' object"))
        return data

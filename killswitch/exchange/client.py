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

Each endpoint's call (its body, its answer checked) is
:class:`~killswitch.exchange.endpoint_calls.EndpointCalls`'s; the client
composes it with the pools, the venue's clock, the self-test and health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.config.model import ExchangeConfig, Target
from killswitch.exchange.endpoint_calls import DRY_RUN_STATUS, EndpointCalls
from killswitch.exchange.endpoints import (
    CANCEL_ALL,
    CLOSED_ORDERS,
    ENDPOINTS,
    OPEN_ORDERS,
    ORDER_STATUS,
    TIME,
)
from killswitch.exchange.errors import BadResponse, ExchangeError
from killswitch.exchange.orders import (
    LISTING_LIMIT,
    OrderPage,
    VenueOrder,
)
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.selftest import SelfTest, TargetCheck, run_self_test
from killswitch.exchange.signed import CallLog, SignedRequests
from killswitch.exchange.signing import Signer
from killswitch.exchange.transport import (
    CANCEL_POOL,
    MAX_RETRY_AFTER,
    MESSAGE_CHARS,
    STATUS_POOL,
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


SYNC_RETRY: Final = 5.0
"""Seconds before a failed clock sync is tried again; doubled per further failure,
up to ``clock_sync_interval``."""

T = TypeVar("T")


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
        log: FilteringBoundLogger | None = None,
        status_pool_size: int = 64,
        cancel_pool_size: int = 8,
        cancel_warm_connections: int = 2,
    ) -> None:
        missing = [e for e in ENDPOINTS if e not in limiters]
        if missing:
            raise ValueError(f"no limiter for {', '.join(missing)}")
        self._config = config
        # Any further limiter (positions, place order: exchange/positions.py) is kept too.
        self.limiters: dict[str, SlidingWindowLimiter] = {
            **{e: limiters[e] for e in ENDPOINTS},
            **limiters,
        }
        self._clock = clock
        self._log = get_logger(component="exchange") if log is None else log
        self._calls = CallLog(clock)
        self._transport = Transport(
            config,
            clock,
            self._log,
            status_pool_size=status_pool_size,
            cancel_pool_size=cancel_pool_size,
            on_attempt=self._calls.count,
        )
        self._cancel_warm = cancel_warm_connections
        self._prefix = self._transport.prefix
        self._started = False
        self._opened = False
        self._venue_clock = VenueClock(clock, self._log, self._measure)
        self._requests = SignedRequests(
            self._transport, signer, self._venue_clock, self.limiters, clock, self._log, self._calls
        )
        self._endpoints = EndpointCalls(
            config, self._prefix, self._requests, self._calls, self._log
        )
        self._self_test: SelfTest | None = None
        self._self_test_mono: float | None = None
        self._targets: tuple[Target, ...] | None = None

    @property
    def requests_sent(self) -> dict[str, dict[str, int]]:
        """Requests that left the daemon, by endpoint and outcome."""
        return self._calls.requests_sent

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
            raise self._calls.fail(TIME, self._calls.status_error(TIME, answer))
        try:
            server_ms = server_time_ms(self._calls.document(TIME, answer))
        except ValueError as exc:
            raise self._calls.fail(TIME, BadResponse(TIME, str(exc))) from None
        self._calls.count(TIME, "ok")
        return ClockSample.measured(server_ms, wall, rtt)

    # ------------------------------------------------------------------ endpoints

    async def cancel_all(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> list[str]:
        """Cancel every open order on ``exchange`` (or one ``symbol``); the ids sent for
        cancellation (:meth:`EndpointCalls.cancel_all`)."""
        return await self._endpoints.cancel_all(exchange, symbol, on_sent=on_sent)

    async def order_status(self, order_id: str) -> VenueOrder:
        """The order as the venue knows it; 404, 400 or 422 is :class:`OrderNotFound`."""
        return await self._endpoints.order_status(order_id)

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
        return await self._endpoints.open_orders(
            exchange, symbol, limit=limit, from_time=from_time, to_time=to_time
        )

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
        return await self._endpoints.closed_orders(
            exchange, symbol, limit=limit, from_time=from_time, to_time=to_time, status=status
        )

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
        """One signed call of another endpoint (:meth:`EndpointCalls.signed_call`)."""
        return await self._endpoints.signed_call(
            endpoint, method, path, parse, body=body, retry_stale=retry_stale
        )

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
            "last_call": None if self._calls.last_call is None else dict(self._calls.last_call),
            "self_test": None if self._self_test is None else self._self_test.as_dict(),
            "dry_run": self._config.dry_run,
        }

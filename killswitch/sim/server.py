"""The simulated exchange: a strict, truthful aiohttp server on loopback.

It serves the venue's endpoints (``VENUE.md``, contract §2): ``cancel_all``,
order status, the open- and closed-order listings (each signed and counted
against its own strict sliding window, contract §3) and the server time
(unsigned, never counted).  It records what it received, so tests and
benchmarks can prove the daemon never broke a limit.  Faults are injected by
count and clear by themselves; only the ``lost_ack_*`` kinds let the request
take effect.  Admin endpoints under ``/_sim/`` (:mod:`killswitch.sim.admin`)
let other processes drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from aiohttp import web

from killswitch.sim.admin import admin_routes
from killswitch.sim.auth import verify
from killswitch.sim.book import Behaviour, OrderBook
from killswitch.sim.clock import VenueClock
from killswitch.sim.config import ENDPOINTS, METHODS, Endpoint, SimConfig
from killswitch.sim.faults import Fault, FaultQueue
from killswitch.sim.record import ReceivedRequest
from killswitch.sim.stats import stats_of
from killswitch.sim.trader import Trader
from killswitch.sim.venue import Rejection, Venue, error
from killswitch.sim.window import StrictWindow

__all__ = ["SimExchange", "run_sim"]

_FIELD_422 = {
    "cancel_all": "symbol",
    "order_status": "order_id",
    "positions": "symbol",
    "place_order": "quantity",
    "time": "request",
}
_ACTS = ("cancel_all", "place_order")  # a timeout fault means "not done" (held, then 504)


class SimExchange:
    """The exchange.  ``clock`` (monotonic), ``wall`` (epoch seconds) and ``sleep`` are injectable.

    ``clock`` drives the rate windows and the cancel delays, ``wall`` (plus
    the admin clock offset) the venue's clock, ``sleep`` the trader.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self._clock = clock
        self._wall = wall
        self.clock = VenueClock(wall, self.config.clock_offset_ms)
        self.behaviour = Behaviour(
            self.config.fill_ratio,
            self.config.partial_fill_ratio,
            self.config.expire_ratio,
            self.config.cancel_delay,
        )
        self.book = OrderBook(
            behaviour=self.behaviour,
            rng=random.Random(self.config.seed),
            clock=clock,
            venue=self.clock,
        )
        self.book.exchanges.add(self.config.exchange)
        self.trader = Trader(self.book, sleep)
        self.venue = Venue(self.book, self.clock, self.trader)
        self.faults = FaultQueue()
        self.windows: dict[str, StrictWindow] = {
            e: StrictWindow(*self.config.limit(e)) for e in ENDPOINTS
        }
        self.requests: list[ReceivedRequest] = []
        self.cancel_all_arrivals: list[tuple[float, float]] = []  # (wall, monotonic)
        self._routes: dict[str, dict[str, str]] = {}  # path -> method -> endpoint
        for e in (*ENDPOINTS, "time"):
            self._routes.setdefault(self.config.path(e), {})[METHODS[e]] = e
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.add_routes(admin_routes(self))
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    # -- Python API -----------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the simulated exchange is already started")
        self._stopping.clear()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{bound}"

    async def stop(self) -> None:
        """Stop the trader, release held requests, close every connection, stop listening."""
        self._stopping.set()
        try:
            await self.trader.stop()
        finally:
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()

    def seed(
        self,
        orders: dict[str, int],
        exchange: str | None = None,
        status: str = "RAISED",
        *,
        age_days: float = 0.0,
        same_ms: bool = False,
    ) -> list[str]:
        """Add ``count`` working orders per symbol, ``age_days`` old; return the new ids.

        Each gets its own ``created_at`` millisecond unless ``same_ms``.
        """
        return self.book.seed(
            exchange or self.config.exchange, orders, status, age_days, same_ms=same_ms
        )

    def open_positions(self, wanted: dict[str, Any], exchange: str | None = None) -> dict[str, Any]:
        """Open positions, ``{"SYM": {"side", "size", "entry_price"?, "mark_price"?, "stops"?,
        "take_profits"?}}``, each with its resting TP/SL orders; the positions and stop ids.
        ``ValueError`` names the bad field."""
        exchange = exchange or self.config.exchange
        self.book.exchanges.add(exchange)
        opened, stop_ids = [], []
        for symbol, spec in wanted.items():
            if not isinstance(spec, dict) or spec.get("side") not in ("LONG", "SHORT"):
                raise ValueError(f"positions.{symbol}.side: expected LONG or SHORT")
            try:
                size = Decimal(str(spec.get("size")))
                entry = Decimal(str(spec.get("entry_price", "100")))
                mark = spec.get("mark_price")
                mark_price = None if mark is None else Decimal(str(mark))
            except InvalidOperation:
                raise ValueError(f"positions.{symbol}: size and prices are numbers") from None
            stops, tps = spec.get("stops", 0), spec.get("take_profits", 0)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in (stops, tps)):
                raise ValueError(f"positions.{symbol}: stops and take_profits are counts")
            side = spec["side"]
            position = self.book.positions.open(
                exchange, symbol, side, size, entry, self.clock.now_ms(), mark_price
            )
            opened.append(position.to_json())
            close = "SELL" if side == "LONG" else "BUY"
            below, above = str(entry * Decimal("0.9")), str(entry * Decimal("1.1"))
            stop_at, tp_at = (below, above) if close == "SELL" else (above, below)
            for kind, count, trigger in (
                ("STOP_MARKET", stops, stop_at),
                ("TAKE_PROFIT_MARKET", tps, tp_at),
            ):
                for _ in range(count):
                    stop_ids.append(self.book.place_stop(exchange, symbol, kind, close, trigger))
        return {"positions": opened, "stop_ids": stop_ids}

    def forget(self, order_ids: list[str]) -> int:
        """Forget orders: their status is answered 404 from now on; the number forgotten."""
        return self.book.forget(order_ids)

    def inject(
        self,
        endpoint: str,
        kind: str,
        count: int = 1,
        delay: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests to ``endpoint`` with fault ``kind``.

        ``delay`` is the hold of ``slow``, ``timeout`` and ``lost_ack_timeout``;
        ``message`` replaces the error body's message (``401``, ``422``, 5xx).
        """
        self.faults.inject(endpoint, kind, count, delay, message)

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_clock_offset(self, offset_ms: int) -> None:
        """The venue's clock is the real wall clock plus ``offset_ms`` from now on.

        Orders already on the book move with it (their ``created_at`` and
        ``updated_at`` keep their age), as if the venue's clock had always
        been this far off: moving it back never hides a fresh order in the
        future, beyond a default listing's ``to_time``.
        """
        self.book.shift_times(offset_ms - self.clock.offset_ms)
        self.clock.offset_ms = offset_ms

    def reject(
        self,
        symbol: str,
        status: int | None,
        message: str | None = None,
        *,
        unscoped: str = "refuse",
    ) -> None:
        """Refuse ``cancel_all`` for ``symbol`` with ``status`` (a 4xx but 429); ``None`` lifts it.

        ``unscoped``: ``refuse`` answers a ``cancel_all`` without a symbol the
        same way; ``spare`` cancels the other symbols and leaves this one.
        """
        if not symbol:
            raise ValueError("symbol: expected a non-empty string")
        if status is None:
            self.venue.rejections.pop(symbol, None)
            return
        if not 400 <= status <= 499 or status == 429:
            raise ValueError("status: expected a 4xx other than 429, or null")
        if unscoped not in ("refuse", "spare"):
            raise ValueError('unscoped: expected "refuse" or "spare"')
        text = message or f"symbol: {symbol} is not accepting cancellations"
        mode: Literal["refuse", "spare"] = "refuse" if unscoped == "refuse" else "spare"
        self.venue.rejections[symbol] = Rejection(status, text, mode)

    async def start_trader(
        self,
        orders: dict[str, int],
        interval: float = 1.0,
        *,
        exchange: str | None = None,
        on_cancel_all: bool = False,
    ) -> None:
        """Place ``orders[symbol]`` orders per symbol, one each every ``interval`` s.

        With ``on_cancel_all`` the first ones go in right after the next
        ``cancel_all`` is served.  Replaces a running trader.
        """
        await self.trader.start(
            orders, interval, exchange or self.config.exchange, on_cancel_all=on_cancel_all
        )

    async def stop_trader(self) -> None:
        await self.trader.stop()

    def violations(self, endpoint: Endpoint) -> int:
        return self.windows[endpoint].violations

    def stats(self) -> dict[str, Any]:
        """What the exchange saw and its own truth (see :func:`killswitch.sim.stats.stats_of`)."""
        return stats_of(self)

    # -- the exchange ---------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        now, wall = self._clock(), self._wall()
        methods = self._routes.get(request.path, {})
        endpoint = methods.get(request.method) or next(iter(methods.values()), None)
        record = ReceivedRequest(endpoint or "other", request.method, request.raw_path, now, wall)
        self.requests.append(record)
        response = await self._handle(request, record, endpoint, now)
        if response is not None:
            record.status = response.status
        return response if response is not None else web.Response()

    async def _handle(
        self, request: web.Request, record: ReceivedRequest, endpoint: str | None, now: float
    ) -> web.StreamResponse | None:
        """The answer to one request; ``None`` when the connection was reset."""
        if endpoint is None:
            return error(404, "not_found", "no such endpoint")
        if endpoint in self.windows:
            admission = self.windows[endpoint].arrive(now)
            record.in_window = admission.in_window
            if endpoint == "cancel_all":
                self.cancel_all_arrivals.append((record.wall, now))
            if admission.violation:
                record.violation = True
                response = error(429, "rate_limited", "rate limit exceeded")
                if self.config.retry_after_on_violation:
                    response.headers["Retry-After"] = str(admission.retry_after)
                return response
        if request.method != METHODS[endpoint]:
            response = error(405, "method_not_allowed", "method not allowed")
            response.headers["Allow"] = METHODS[endpoint]
            return response
        fault = self.faults.take(endpoint)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "slow":
                await self._hold(fault.delay or 0.0)
            else:
                return await self._faulted(request, endpoint, fault)
        return await self._serve(request, endpoint)

    async def _serve(self, request: web.Request, endpoint: str) -> web.Response:
        if endpoint == "time":
            return self.venue.server_time()
        if self.config.require_content_type and request.content_type != "application/json":
            return error(400, "bad_request", "Content-Type: application/json is required")
        refused = verify(
            self.config,
            request.method,
            request.raw_path,
            request.headers,
            now_ms=self.clock.now_ms(),
        )
        if refused is not None:
            return error(401, "unauthorized", refused)
        now = self._clock()
        if endpoint == "cancel_all":
            return await self.venue.cancel_all(request)
        if endpoint == "order_status":
            return self.venue.order_status(request, now)
        if endpoint == "positions":
            return self.venue.positions(request)
        if endpoint == "place_order":
            return await self.venue.place_order(request)
        return await self.venue.listing(request, now, closed=endpoint == "closed_orders")

    async def _faulted(
        self, request: web.Request, endpoint: str, fault: Fault
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind in ("500", "502", "503"):
            return error(int(kind), "injected", fault.message or f"injected {kind}")
        if kind in ("429", "429_bare"):
            response = error(429, "rate_limited", fault.message or "too many requests")
            if kind == "429":
                response.headers["Retry-After"] = "1"
            return response
        if kind == "401":
            return error(401, "unauthorized", fault.message or "invalid api key or signature")
        if kind == "422":
            field = _FIELD_422.get(endpoint, "limit")
            return error(422, "invalid_field", fault.message or f"{field}: invalid")
        if kind == "reduce_only_refused":
            message = fault.message or "reduce_only: not supported for MARKET orders"
            return error(422, "invalid_field", message)
        if kind == "malformed":
            return web.Response(text="{not json", content_type="application/json")
        if kind == "shape":
            return web.json_response({"data": {"ids": []}})
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return None
        hold = fault.delay if fault.delay is not None else self.config.slow_seconds
        if kind in ("lost_ack_502", "lost_ack_timeout"):
            # The request takes effect (the cancel happens); only the answer is lost.
            await self._serve(request, endpoint)
            if kind == "lost_ack_502":
                return error(502, "bad_gateway", fault.message or "bad gateway")
            await self._hold(hold)
            return error(504, "timeout", "gateway timeout")
        # "timeout": hold past any sane client timeout.  A read is then
        # answered normally; a cancel_all is answered 504 without cancelling.
        await self._hold(hold)
        if endpoint not in _ACTS:
            return await self._serve(request, endpoint)
        return error(504, "timeout", "injected timeout")

    async def _hold(self, seconds: float) -> None:
        """Sleep ``seconds`` (real time), cut short when the server stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def run_sim(config: SimConfig, host: str, port: int) -> None:
    """Serve until cancelled; print ``{"event": "sim.ready", "base_url": ...}`` once listening."""
    sim = SimExchange(config)
    base_url = await sim.start(host, port)
    try:
        sys.stdout.write(json.dumps({"event": "sim.ready", "base_url": base_url}) + "\n")
        sys.stdout.flush()
        await asyncio.Event().wait()
    finally:
        await sim.stop()

"""The simulated exchange: a strict, truthful aiohttp server on loopback.

It serves the two endpoints of contract §2, counts every arrival against a
strict sliding window per endpoint (contract §3) and records what it received,
so tests and benchmarks can prove the daemon never broke a limit.  Faults are
injected by count and clear by themselves; a faulted request never changes an
order.  Admin endpoints under ``/_sim/`` (see :mod:`killswitch.sim.admin`) let
other processes drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from killswitch.sim.admin import admin_routes
from killswitch.sim.auth import verify
from killswitch.sim.book import OrderBook
from killswitch.sim.config import ENDPOINTS, Endpoint, SimConfig
from killswitch.sim.faults import Fault, FaultQueue
from killswitch.sim.record import ReceivedRequest
from killswitch.sim.window import StrictWindow

__all__ = ["SimExchange", "run_sim"]

_METHODS: dict[Endpoint, str] = {"cancel_all": "POST", "order_status": "GET"}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


class SimExchange:
    """The exchange.  ``clock`` (monotonic) and ``wall`` (epoch seconds) are injectable."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self._clock = clock
        self._wall = wall
        self.book = OrderBook(
            cancel_delay=self.config.cancel_delay,
            fill_ratio=self.config.fill_ratio,
            rng=random.Random(self.config.seed),
            clock=clock,
            wall=wall,
        )
        self.book.exchanges.add(self.config.exchange)
        self.faults = FaultQueue()
        self.windows = {e: StrictWindow(*self.config.limit(e)) for e in ENDPOINTS}
        self.requests: list[ReceivedRequest] = []
        self.cancel_all_arrivals: list[tuple[float, float]] = []  # (wall, monotonic)
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
        """Release held requests, close every connection and stop listening."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def seed(
        self, orders: dict[str, int], exchange: str | None = None, status: str = "OPEN"
    ) -> list[str]:
        """Add ``count`` open orders per symbol; return the new ids."""
        return self.book.seed(exchange or self.config.exchange, orders, status)

    def forget(self, order_ids: list[str]) -> int:
        """Forget orders: their status is answered 404 from now on; the number forgotten."""
        return self.book.forget(order_ids)

    def inject(self, endpoint: str, kind: str, count: int = 1, delay: float | None = None) -> None:
        """Answer the next ``count`` requests to ``endpoint`` with fault ``kind``."""
        self.faults.inject(endpoint, kind, count, delay)

    def clear_faults(self) -> None:
        self.faults.clear()

    def violations(self, endpoint: Endpoint) -> int:
        return self.windows[endpoint].violations

    def stats(self) -> dict[str, Any]:
        """Requests, violations and answers per endpoint, orders by status, arrivals."""
        counted = Counter(r.endpoint for r in self.requests)
        answers: dict[str, Counter[str]] = {e: Counter() for e in (*ENDPOINTS, "other")}
        for r in self.requests:
            answers[r.endpoint][str(r.status) if r.status is not None else "none"] += 1
        return {
            "requests": {e: counted[e] for e in (*ENDPOINTS, "other")},
            "violations": {e: w.violations for e, w in self.windows.items()},
            "peak_in_window": {e: w.peak for e, w in self.windows.items()},
            "limits": {
                e: {"requests": w.requests, "per_seconds": w.per_seconds}
                for e, w in self.windows.items()
            },
            "answers": {e: dict(c) for e, c in answers.items()},
            "orders": self.book.by_status(),
            "cancel_all_arrivals": [
                {"wall": wall, "monotonic": mono} for wall, mono in self.cancel_all_arrivals
            ],
            "faults_pending": self.faults.pending(),
        }

    # -- the exchange ---------------------------------------------------------

    def _endpoint_of(self, path: str) -> Endpoint | None:
        for endpoint in ENDPOINTS:
            if path == self.config.path(endpoint):
                return endpoint
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        now, wall = self._clock(), self._wall()
        endpoint = self._endpoint_of(request.path)
        record = ReceivedRequest(endpoint or "other", request.method, request.raw_path, now, wall)
        self.requests.append(record)
        response = await self._handle(request, record, endpoint, now)
        if response is not None:
            record.status = response.status
        return response if response is not None else web.Response()

    async def _handle(
        self, request: web.Request, record: ReceivedRequest, endpoint: Endpoint | None, now: float
    ) -> web.StreamResponse | None:
        """The answer to one request; ``None`` when the connection was reset."""
        if endpoint is None:
            return _error(404, "not_found", "no such endpoint")
        admission = self.windows[endpoint].arrive(now)
        record.in_window = admission.in_window
        if endpoint == "cancel_all":
            self.cancel_all_arrivals.append((record.wall, now))
        if admission.violation:
            record.violation = True
            response = _error(429, "rate_limited", "rate limit exceeded")
            response.headers["Retry-After"] = str(admission.retry_after)
            return response
        if request.method != _METHODS[endpoint]:
            response = _error(405, "method_not_allowed", "method not allowed")
            response.headers["Allow"] = _METHODS[endpoint]
            return response
        fault = self.faults.take(endpoint)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "slow":
                await self._hold(fault.delay or 0.0)
            else:
                return await self._faulted(request, endpoint, fault)
        return await self._serve(request, endpoint)

    async def _serve(self, request: web.Request, endpoint: Endpoint) -> web.Response:
        refused = verify(
            self.config, request.method, request.raw_path, request.headers, now=self._wall()
        )
        if refused is not None:
            return _error(401, "unauthorized", refused)
        if endpoint == "cancel_all":
            return await self._cancel_all(request)
        return self._order_status(request)

    async def _faulted(
        self, request: web.Request, endpoint: Endpoint, fault: Fault
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind in ("500", "502", "503"):
            return _error(int(kind), "injected", f"injected {kind}")
        if kind == "429":
            response = _error(429, "rate_limited", "injected 429")
            response.headers["Retry-After"] = "1"
            return response
        if kind == "malformed":
            return web.Response(text="{not json", content_type="application/json")
        if kind == "shape":
            return web.json_response({"data": {"ids": []}})
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return None
        # "timeout": hold past any sane client timeout.  A status read is then
        # answered normally; a cancel_all is answered 504 without cancelling.
        await self._hold(fault.delay if fault.delay is not None else self.config.slow_seconds)
        if endpoint == "order_status":
            return await self._serve(request, endpoint)
        return _error(504, "timeout", "injected timeout")

    async def _hold(self, seconds: float) -> None:
        """Sleep ``seconds`` (real time), cut short when the server stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _cancel_all(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_request", "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "bad_request", "body must be a JSON object")
        exchange, symbol = body.get("exchange"), body.get("symbol")
        if not isinstance(exchange, str) or exchange not in self.book.exchanges:
            return _error(400, "bad_request", "unknown exchange")
        if symbol is not None and not isinstance(symbol, str):
            return _error(400, "bad_request", "symbol must be a string")
        ids = self.book.cancel_all(exchange, symbol)
        return web.json_response({"data": {"orders_ids": ids}})

    def _order_status(self, request: web.Request) -> web.Response:
        order_id = request.query.get("order_id")
        if not order_id:
            return _error(400, "bad_request", "order_id is required")
        order = self.book.get(order_id)
        if order is None:
            return _error(404, "not_found", "unknown order_id")
        return web.json_response({"data": {"order": order.to_json(self._clock())}})


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

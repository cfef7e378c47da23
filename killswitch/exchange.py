"""The exchange client: one signed, rate-limited request per call (contract §2, §3).

Two HTTP sessions, each with its own connection pool: a small one reserved for
``cancel_all`` and a larger one for order-status polling, so a burst of status
requests can never make the emergency request wait for a pool slot (aiohttp's
``ClientTimeout.connect`` includes that wait).  Both pools are warmed at start
with an unsigned ``HEAD {base_url}/`` and re-warmed every
``exchange.keepalive_interval`` seconds, so the first ``cancel_all`` pays no
TCP/TLS handshake.  aiohttp does not retry a POST on a stale keep-alive
connection; this client retries ``cancel_all`` once, at once, when the failure
came before any answer on a connection reused from the pool.

Retry-until-acknowledged and polling policies belong to the kill engine and the
confirmer, not here.  Every request goes through its limiter, retries included;
dry run sends nothing and takes no slot.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from killswitch.clock import Clock
from killswitch.config import ExchangeConfig
from killswitch.errors import (
    BadResponse,
    ConnectionFailed,
    ExchangeError,
    OrderNotFound,
    RateLimited,
    RejectedRequest,
    RequestTimeout,
    ServerError,
)
from killswitch.log import get_logger
from killswitch.ratelimit import SlidingWindowLimiter
from killswitch.signing import Signer

__all__ = ["DRY_RUN_STATUS", "MAX_RETRY_AFTER", "ExchangeClient"]

CANCEL_ALL: Final = "cancel_all"
ORDER_STATUS: Final = "order_status"
WARM: Final = "warm"
CANCEL_POOL: Final = "cancel"
STATUS_POOL: Final = "status"

MAX_RETRY_AFTER: Final = 300.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

DRY_RUN_STATUS: Final = "DRY_RUN"
"""What :meth:`ExchangeClient.order_status` answers in dry run (never a real status)."""

_CLOSE_TIMEOUT: Final = 5.0
_USER_AGENT: Final = "killswitch/0.1"

# Closed TLS transports leak on CPython before 3.12.8 / 3.13.1; aiohttp warns
# (DeprecationWarning) when asked to clean them up on a fixed interpreter.
_NEEDS_CLEANUP_CLOSED: Final = sys.version_info < (3, 12, 8) or (
    (3, 13, 0) <= sys.version_info < (3, 13, 1)
)

# Exceptions that, raised before any answer on a reused connection, mean the
# server had already closed it while it sat idle in the pool.
_STALE: Final = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientConnectionResetError,
)


@dataclass
class _Probe:
    """Filled in by the trace hooks: did this request get a pooled connection?"""

    reused: bool = False


async def _on_reuse(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    if isinstance(ctx.trace_request_ctx, _Probe):
        ctx.trace_request_ctx.reused = True


async def _on_create(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    if isinstance(ctx.trace_request_ctx, _Probe):
        ctx.trace_request_ctx.reused = False


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    retry_after: str | None


class ExchangeClient:
    """Signed ``cancel_all`` and order-status requests over two warm pools.

    ``requests_sent[endpoint][outcome]`` counts requests that left the daemon:
    endpoints ``cancel_all``, ``order_status`` and ``warm``; outcomes ``ok``,
    ``stale_connection`` (retried) or an :class:`ExchangeError` ``kind``
    (``warm``: ``ok`` / ``failed``).
    """

    def __init__(
        self,
        config: ExchangeConfig,
        signer: Signer,
        *,
        cancel_limiter: SlidingWindowLimiter,
        status_limiter: SlidingWindowLimiter,
        clock: Clock,
        log: Any = None,
        status_pool_size: int = 64,
        cancel_pool_size: int = 8,
        cancel_warm_connections: int = 2,
    ) -> None:
        if status_pool_size < 1 or cancel_pool_size < 1:
            raise ValueError("pool sizes must be at least 1")
        self._config = config
        self._signer = signer
        self._cancel_limiter = cancel_limiter
        self._status_limiter = status_limiter
        self._clock = clock
        self._log = get_logger(component="exchange") if log is None else log
        self._status_pool_size = status_pool_size
        self._cancel_pool_size = cancel_pool_size
        self._cancel_warm = max(1, min(cancel_warm_connections, cancel_pool_size))
        base = URL(config.base_url)
        self._base = str(base).rstrip("/")
        self._prefix = base.raw_path.rstrip("/")
        self._cancel_session: aiohttp.ClientSession | None = None
        self._status_session: aiohttp.ClientSession | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._in_flight = {CANCEL_POOL: 0, STATUS_POOL: 0}
        self.requests_sent: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ExchangeClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _session(self, limit: int) -> aiohttp.ClientSession:
        # aiohttp rounds timeouts above ceil_threshold up to whole seconds.
        no_rounding = self._config.request_timeout + 1.0
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=0,
            keepalive_timeout=max(15.0, self._config.clock_sync_interval + 5.0),
            enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED and self._base.startswith("https:"),
            timeout_ceil_threshold=no_rounding,
        )
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_on_reuse)
        trace.on_connection_create_end.append(_on_create)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._config.request_timeout, ceil_threshold=no_rounding
            ),
            headers={"User-Agent": _USER_AGENT},
            trace_configs=[trace],
        )
        # aiohttp silently re-sends an idempotent request (our status GET) when a kept-alive
        # connection drops; that second request would bypass the limiter and could break the
        # exchange's window.  Every retry here goes through the limiter instead.  There is no
        # public switch: aiohttp's own test client sets this attribute the same way.
        session._retry_connection = False
        return session

    async def start(self) -> None:
        """Open both pools, warm them, and start re-warming in the background."""
        if self._cancel_session is not None:
            raise RuntimeError("ExchangeClient.start() called twice")
        if self._config.dry_run:
            self._log.info("exchange.dry_run_mode", base_url=self._base)
            return
        self._cancel_session = self._session(self._cancel_pool_size)
        self._status_session = self._session(self._status_pool_size)
        await self.warm()
        self._warm_task = asyncio.create_task(self._rewarm(), name="exchange.rewarm")

    async def close(self) -> None:
        """Stop re-warming and close both sessions (bounded)."""
        task, self._warm_task = self._warm_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
        sessions = [s for s in (self._cancel_session, self._status_session) if s is not None]
        self._cancel_session = self._status_session = None
        for session in sessions:
            try:
                await asyncio.wait_for(session.close(), _CLOSE_TIMEOUT)
            except TimeoutError:
                self._log.warning("exchange.close_timeout")
        if task is not None and task.done() and not task.cancelled():
            task.result()  # a crash of the re-warm loop is not swallowed

    async def warm(self) -> None:
        """Make sure each pool holds open connections; never raises.

        A pool with requests in flight is skipped: its connections are in use,
        and a HEAD would only queue behind them for a slot.
        """
        warmers: list[Awaitable[None]] = []
        if self._cancel_session is not None and not self._in_flight[CANCEL_POOL]:
            session = self._cancel_session
            warmers += [self._warm_one(session, CANCEL_POOL) for _ in range(self._cancel_warm)]
        if self._status_session is not None and not self._in_flight[STATUS_POOL]:
            warmers.append(self._warm_one(self._status_session, STATUS_POOL))
        await asyncio.gather(*warmers)

    async def _warm_one(self, session: aiohttp.ClientSession, pool: str) -> None:
        try:
            async with session.head(self._base + "/", allow_redirects=False) as resp:
                await resp.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure to warm is logged, never fatal
            self._count(WARM, "failed")
            self._log.warning(
                "exchange.warm_failed", pool=pool, error=type(exc).__name__, detail=str(exc)
            )
        else:
            self._count(WARM, "ok")

    async def _rewarm(self) -> None:
        while True:
            await self._clock.sleep(self._config.clock_sync_interval)
            await self.warm()

    # ------------------------------------------------------------------ endpoints

    async def cancel_all(self, exchange: str, symbol: str | None = None) -> list[str]:
        """Cancel every open order on ``exchange`` (or one ``symbol``); the ids sent for
        cancellation.  One request, plus one immediate retry on a stale connection."""
        body: dict[str, str] = {"exchange": exchange}
        if symbol is not None:
            body["symbol"] = symbol
        path = self._prefix + self._config.cancel_all_path
        if self._config.dry_run:
            self._log.info("exchange.dry_run", method="POST", path=path, body=body)
            return []
        payload = json.dumps(body).encode()
        answer = await self._send(
            CANCEL_ALL,
            "POST",
            path,
            self._cancel_limiter,
            CANCEL_POOL,
            data=payload,
            retry_stale=True,
        )
        data = self._json_data(CANCEL_ALL, answer)
        ids = data.get("orders_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise self._fail(
                CANCEL_ALL, BadResponse(CANCEL_ALL, "data.orders_ids is not a list of ids")
            )
        self._count(CANCEL_ALL, "ok")
        return list(ids)

    async def order_status(self, order_id: str) -> str:
        """The exchange's status string for ``order_id``; 404 is :class:`OrderNotFound`."""
        if not order_id:
            raise ValueError("order_id must not be empty")
        path = f"{self._prefix}{self._config.order_status_path}?order_id={quote(order_id, safe='')}"
        if self._config.dry_run:
            self._log.info("exchange.dry_run", method="GET", path=path, body=None)
            return DRY_RUN_STATUS
        answer = await self._send(
            ORDER_STATUS,
            "GET",
            path,
            self._status_limiter,
            STATUS_POOL,
        )
        data = self._json_data(ORDER_STATUS, answer)
        order = data.get("order", data)
        if not isinstance(order, dict):
            raise self._fail(ORDER_STATUS, BadResponse(ORDER_STATUS, "data.order is not an object"))
        status = order.get("status")
        if not isinstance(status, str) or not status:
            raise self._fail(ORDER_STATUS, BadResponse(ORDER_STATUS, "no status string"))
        if "order_id" in order and str(order["order_id"]) != order_id:
            raise self._fail(
                ORDER_STATUS, BadResponse(ORDER_STATUS, "answer is about another order_id")
            )
        self._count(ORDER_STATUS, "ok")
        return status

    # ------------------------------------------------------------------ plumbing

    def _session_for(self, pool: str) -> aiohttp.ClientSession:
        session = self._cancel_session if pool == CANCEL_POOL else self._status_session
        if session is None:
            raise RuntimeError("ExchangeClient is not started")
        return session

    def _count(self, endpoint: str, outcome: str) -> None:
        by_outcome = self.requests_sent.setdefault(endpoint, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1

    def _fail(self, endpoint: str, error: ExchangeError) -> ExchangeError:
        self._count(endpoint, error.kind)
        return error

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        limiter: SlidingWindowLimiter,
        pool: str,
        *,
        data: bytes | None = None,
        retry_stale: bool = False,
    ) -> _Answer:
        """Send one request (plus, if allowed, one retry on a stale connection)."""
        session = self._session_for(pool)
        url = URL(self._base + path, encoded=True)
        attempts = 2 if retry_stale else 1
        for attempt in range(1, attempts + 1):
            await limiter.acquire()
            headers = self._signer.headers(method, path, int(self._clock.time() * 1000))
            if data is not None:
                headers["Content-Type"] = "application/json"
            probe = _Probe()
            started = self._clock.monotonic()
            self._in_flight[pool] += 1
            try:
                resp = await session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    trace_request_ctx=probe,
                )
            except _STALE as exc:
                if (
                    attempt < attempts
                    and probe.reused
                    and not isinstance(exc, aiohttp.ClientConnectorError)
                ):
                    self._count(endpoint, "stale_connection")
                    self._log.warning(
                        "exchange.stale_connection", endpoint=endpoint, error=type(exc).__name__
                    )
                    continue
                raise self._fail(endpoint, self._transport_error(endpoint, exc)) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._fail(endpoint, self._transport_error(endpoint, exc)) from None
            else:
                try:
                    async with resp:
                        body = await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise self._fail(endpoint, self._transport_error(endpoint, exc)) from None
            finally:
                self._in_flight[pool] -= 1
            answer = _Answer(resp.status, body, resp.headers.get("Retry-After"))
            self._log.debug(
                "exchange.response",
                endpoint=endpoint,
                status=answer.status,
                elapsed_ms=round((self._clock.monotonic() - started) * 1000, 1),
                reused_connection=probe.reused,
            )
            self._check_status(endpoint, answer, limiter)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _transport_error(self, endpoint: str, exc: BaseException) -> ExchangeError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError):
            return RequestTimeout(endpoint, f"no answer within {self._config.request_timeout:g} s")
        if isinstance(exc, aiohttp.ClientResponseError):
            return BadResponse(endpoint, f"malformed HTTP answer ({detail})")
        return ConnectionFailed(endpoint, detail)

    def _check_status(self, endpoint: str, answer: _Answer, limiter: SlidingWindowLimiter) -> None:
        status = answer.status
        if 200 <= status < 300:
            return
        if status == 429:
            retry_after = self._retry_after(answer.retry_after)
            if retry_after is not None:
                limiter.defer_until(self._clock.monotonic() + retry_after)
            raise self._fail(endpoint, RateLimited(endpoint, retry_after))
        if status >= 500:
            raise self._fail(endpoint, ServerError(endpoint, f"HTTP {status}", status=status))
        if status == 404 and endpoint == ORDER_STATUS:
            raise self._fail(
                endpoint, OrderNotFound(endpoint, "HTTP 404: unknown order_id", status=status)
            )
        raise self._fail(endpoint, RejectedRequest(endpoint, f"HTTP {status}", status=status))

    def _retry_after(self, value: str | None) -> float | None:
        """``Retry-After`` as seconds from now (delta-seconds or HTTP-date), capped."""
        if value is None:
            return None
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(text).timestamp() - self._clock.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            seconds = max(0.0, seconds)
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, MAX_RETRY_AFTER)

    def _json_data(self, endpoint: str, answer: _Answer) -> dict[str, Any]:
        try:
            document = json.loads(answer.body)
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
            raise self._fail(endpoint, BadResponse(endpoint, "body is not JSON")) from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            raise self._fail(endpoint, BadResponse(endpoint, "body has no 'data' object"))
        return data

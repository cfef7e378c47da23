"""HTTP to the venue: two connection pools, one request at a time, bytes in and out.

Two sessions, each with its own pool: a small one reserved for ``cancel_all``
and a larger one for everything else (status polls, listings), so a burst of
those can never make the emergency request wait for a pool slot (aiohttp's
``ClientTimeout.connect`` includes that wait).  aiohttp does not retry a POST
on a stale keep-alive connection; :meth:`Transport.request` retries once, at
once and through the limiter, when the failure came before any answer on a
connection reused from the pool.  aiohttp's own re-send of an idempotent request
on a dropped keep-alive connection pays its limiter slot like any other request
(a trace hook waits for it before the re-sent headers are written), and
aiohttp's public trace hooks tell a caller when its request body was written.

What an answer *means* (status codes, bodies, signing, the venue's clock) is
:mod:`killswitch.exchange.client`'s business, not this module's.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Final

import aiohttp
from structlog.typing import FilteringBoundLogger
from yarl import URL

from killswitch import __version__
from killswitch.clock import Clock
from killswitch.config.model import ExchangeConfig
from killswitch.exchange.errors import (
    BadResponse,
    ConnectionFailed,
    ExchangeError,
    RequestTimeout,
)
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.log import redactor

__all__ = ["CANCEL_POOL", "MAX_RETRY_AFTER", "MESSAGE_CHARS", "STATUS_POOL", "Answer", "Transport"]

CANCEL_POOL: Final = "cancel"
STATUS_POOL: Final = "status"

MAX_RETRY_AFTER: Final = 300.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

MESSAGE_CHARS: Final = 200
"""The venue's error message is kept up to this many characters."""

_CLOSE_TIMEOUT: Final = 5.0
_USER_AGENT: Final = f"killswitch/{__version__}"

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
    """One request as the trace hooks see it."""

    reused: bool = False  # it got a pooled connection
    limiter: SlidingWindowLimiter | None = None
    written: int = 0  # times its headers were handed to a connection (aiohttp may re-send)
    on_sent: Callable[[], None] | None = None  # told once the body was written


async def _on_headers_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    probe = ctx.trace_request_ctx
    if not isinstance(probe, _Probe):
        return
    probe.written += 1
    if probe.written > 1 and probe.limiter is not None:
        # aiohttp re-sends an idempotent request whose kept-alive connection dropped:
        # that second request pays its own slot (contract §3), before it is written.
        await probe.limiter.acquire()


async def _on_chunk_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    probe = ctx.trace_request_ctx
    if isinstance(probe, _Probe) and probe.on_sent is not None:
        on_sent, probe.on_sent = probe.on_sent, None
        # The hook runs as the chunk is handed to the transport, in the same step:
        # the caller hears of it right after that step, not before the bytes leave.
        asyncio.get_running_loop().call_soon(on_sent)


async def _on_reuse(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    if isinstance(ctx.trace_request_ctx, _Probe):
        ctx.trace_request_ctx.reused = True


async def _on_create(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    if isinstance(ctx.trace_request_ctx, _Probe):
        ctx.trace_request_ctx.reused = False


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, body, ``Retry-After`` and the limiter's send time."""

    status: int
    body: bytes
    retry_after: str | None
    sent_at: float | None  # monotonic, as the limiter recorded it; None when not limited
    elapsed: float  # seconds from send to the whole body

    def message(self) -> str | None:
        """The venue's ``{"message": ...}``: one line, shortened, registered secrets removed."""
        try:
            document = json.loads(self.body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        value = document.get("message") if isinstance(document, dict) else None
        if not isinstance(value, str) or not value.strip():
            return None
        text = " ".join(redactor.scrub(value).split())
        return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."

    def retry_after_seconds(self, wall_now: float) -> float | None:
        """``Retry-After`` as seconds from now (delta-seconds or HTTP-date), capped;
        None when absent or unusable."""
        if self.retry_after is None:
            return None
        text = self.retry_after.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(text).timestamp() - wall_now
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            seconds = max(0.0, seconds)
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, MAX_RETRY_AFTER)


class Transport:
    """Both sessions, and one request (plus at most one stale-connection retry) at a time.

    ``on_attempt(endpoint, outcome)`` is told about every request that left:
    ``stale_connection`` for one retried at once, or an :class:`ExchangeError` kind.
    """

    def __init__(
        self,
        config: ExchangeConfig,
        clock: Clock,
        log: FilteringBoundLogger,
        *,
        status_pool_size: int,
        cancel_pool_size: int,
        on_attempt: Callable[[str, str], None],
    ) -> None:
        if status_pool_size < 1 or cancel_pool_size < 1:
            raise ValueError("pool sizes must be at least 1")
        self._config = config
        self._clock = clock
        self._log = log
        self._pool_size = {CANCEL_POOL: cancel_pool_size, STATUS_POOL: status_pool_size}
        self._on_attempt = on_attempt
        base = URL(config.base_url)
        self.base = str(base).rstrip("/")
        self.prefix = base.raw_path.rstrip("/")
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self._in_flight = {CANCEL_POOL: 0, STATUS_POOL: 0}

    def _session(self, limit: int) -> aiohttp.ClientSession:
        # aiohttp rounds timeouts above ceil_threshold up to whole seconds.
        no_rounding = self._config.request_timeout + 1.0
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=0,
            # Idle connections must outlive the gap between two server-time calls.
            keepalive_timeout=max(15.0, self._config.clock_sync_interval + 5.0),
            enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED and self.base.startswith("https:"),
            timeout_ceil_threshold=no_rounding,
        )
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_on_reuse)
        trace.on_connection_create_end.append(_on_create)
        trace.on_request_headers_sent.append(_on_headers_sent)
        trace.on_request_chunk_sent.append(_on_chunk_sent)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._config.request_timeout, ceil_threshold=no_rounding
            ),
            headers={"User-Agent": _USER_AGENT},
            trace_configs=[trace],
        )

    def open(self) -> None:
        if self.sessions:
            raise RuntimeError("Transport.open() called twice")
        self.sessions = {pool: self._session(size) for pool, size in self._pool_size.items()}

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            try:
                await asyncio.wait_for(session.close(), _CLOSE_TIMEOUT)
            except TimeoutError:
                self._log.warning("exchange.close_timeout")

    def busy(self, pool: str) -> bool:
        """True while the pool has requests in flight (a warm-up would queue behind them)."""
        return self._in_flight[pool] > 0

    def warm_connections(self, pool: str, wanted: int) -> int:
        """How many warming calls this pool is worth (capped by its size)."""
        return max(1, min(wanted, self._pool_size[pool]))

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        pool: str,
        *,
        limiter: SlidingWindowLimiter | None,
        headers: Callable[[], Mapping[str, str]],
        data: bytes | None = None,
        retry_stale: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> Answer:
        """Send one request, after the limiter grants a slot; any HTTP answer is returned.

        ``headers()`` is called right before each send (a signature carries the epoch).
        ``on_sent()`` is called once, right after the request body was written.
        Raises :class:`RequestTimeout`, :class:`ConnectionFailed` or :class:`BadResponse`
        (a malformed HTTP answer) when no answer came.
        """
        session = self.sessions.get(pool)
        if session is None:
            raise RuntimeError("ExchangeClient is not started")
        url = URL(self.base + path, encoded=True)
        attempts = 2 if retry_stale else 1
        for attempt in range(1, attempts + 1):
            sent_at = await limiter.acquire() if limiter is not None else None
            probe = _Probe(limiter=limiter, on_sent=on_sent)
            started = self._clock.monotonic()
            self._in_flight[pool] += 1
            try:
                resp = await session.request(
                    method,
                    url,
                    data=data,
                    headers=dict(headers()),
                    allow_redirects=False,
                    trace_request_ctx=probe,
                )
            except _STALE as exc:
                if (
                    attempt < attempts
                    and probe.reused
                    and not isinstance(exc, aiohttp.ClientConnectorError)
                ):
                    self._on_attempt(endpoint, "stale_connection")
                    self._log.warning(
                        "exchange.stale_connection", endpoint=endpoint, error=type(exc).__name__
                    )
                    continue
                raise self._failed(endpoint, exc) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._failed(endpoint, exc) from None
            else:
                try:
                    async with resp:
                        body = await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise self._failed(endpoint, exc) from None
            finally:
                self._in_flight[pool] -= 1
            elapsed = self._clock.monotonic() - started
            self._log.debug(
                "exchange.response",
                endpoint=endpoint,
                status=resp.status,
                elapsed_ms=round(elapsed * 1000, 1),
                reused_connection=probe.reused,
            )
            return Answer(resp.status, body, resp.headers.get("Retry-After"), sent_at, elapsed)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, endpoint: str, exc: BaseException) -> ExchangeError:
        error = self._transport_error(endpoint, exc)
        self._on_attempt(endpoint, error.kind)
        return error

    def _transport_error(self, endpoint: str, exc: BaseException) -> ExchangeError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError):
            # A connect timeout (which includes waiting for a pool slot) sent nothing.
            never_sent = isinstance(exc, aiohttp.ConnectionTimeoutError)
            return RequestTimeout(
                endpoint,
                f"no answer within {self._config.request_timeout:g} s",
                outcome_unknown=not never_sent,
            )
        if isinstance(exc, aiohttp.ClientResponseError):
            return BadResponse(endpoint, f"malformed HTTP answer ({detail})")
        # A connection that was never made carried no byte of the request.
        never_sent = isinstance(exc, aiohttp.ClientConnectorError)
        return ConnectionFailed(endpoint, detail, outcome_unknown=not never_sent)

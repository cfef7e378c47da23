"""The venue's clock as this host knows it: an offset measured against its server time.

The venue rejects (401) a request whose ``X-AUTH-EPOCH`` is more than 60 s
from its own clock (contract §2).  ``offset_ms`` is server time minus local
wall time at the midpoint of the server-time call's round trip (positive when
the local clock is behind); requests are signed with the wall clock plus that
offset.  A measurement is a handful of server-time calls made at once; the one
with the shortest round trip wins.  A failed measurement keeps the old offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.exchange.errors import ExchangeError

__all__ = ["ClockSample", "VenueClock", "server_time_ms"]


@dataclass(frozen=True)
class ClockSample:
    """One server-time measurement."""

    offset_ms: int  # server time minus local wall time, at the round trip's midpoint
    rtt_ms: float
    server_ms: int
    at: float  # local wall time (s) of the midpoint

    @classmethod
    def measured(cls, server_ms: int, wall_sent: float, rtt: float) -> ClockSample:
        """From the server's time, the local wall time at sending and the round trip (s)."""
        midpoint = wall_sent + rtt / 2
        return cls(round(server_ms - midpoint * 1000), round(rtt * 1000, 1), server_ms, midpoint)


def server_time_ms(document: Mapping[str, Any]) -> int:
    """``serverTime`` in ms from ``{"serverTime": ms}`` (or under ``data``); else ValueError."""
    data = document.get("data")
    holder = data if isinstance(data, dict) and "serverTime" in data else document
    value = holder.get("serverTime")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("no serverTime in ms")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError("no serverTime in ms")
    return int(value)


Measure = Callable[[], Awaitable[list[ClockSample | BaseException]]]


class VenueClock:
    """The offset to the venue's clock, re-measured on demand, one measurement at a time."""

    def __init__(self, clock: Clock, log: FilteringBoundLogger, measure: Measure) -> None:
        self._clock = clock
        self._log = log
        self._measure = measure
        self._lock = asyncio.Lock()
        self.offset_ms = 0
        self.sample: ClockSample | None = None
        self.generation = 0  # counts good measurements (which offset a request was signed with)
        self.failures = 0  # consecutive failed measurements

    def now_ms(self) -> int:
        """The venue's time as this host best knows it: wall clock plus the offset."""
        return int(self._clock.time() * 1000) + self.offset_ms

    def adopt(self, sample: ClockSample) -> None:
        """Use ``sample`` as the current measurement (without logging it)."""
        self.offset_ms = sample.offset_ms
        self.sample = sample
        self.generation += 1
        self.failures = 0

    async def sync(self) -> ClockSample:
        """Measure now; logs ``clock.synced``.  Raises the first ExchangeError if every
        call failed (the old offset stays)."""
        async with self._lock:
            return await self._sync()

    async def resync_after(self, generation: int) -> None:
        """After a 401 on a request signed at ``generation``: re-measure, unless a newer
        measurement exists already (a burst of 401s costs one).  Never raises ExchangeError."""
        async with self._lock:
            if self.generation != generation:
                return
            try:
                await self._sync()
            except ExchangeError as error:
                self.log_failure(error)

    async def _sync(self) -> ClockSample:
        results = await self._measure()
        samples = [r for r in results if isinstance(r, ClockSample)]
        if not samples:
            self.failures += 1
            errors = [r for r in results if isinstance(r, BaseException)]
            for error in errors:
                if not isinstance(error, ExchangeError):
                    raise error
            raise errors[0]
        sample = min(samples, key=lambda s: s.rtt_ms)
        self.adopt(sample)
        self._log.info("clock.synced", offset_ms=sample.offset_ms, rtt_ms=sample.rtt_ms)
        return sample

    def log_failure(self, error: ExchangeError) -> None:
        """``clock.sync_failed``: a failed measurement is logged and retried, never fatal."""
        self._log.warning(
            "clock.sync_failed",
            error=error.kind,
            http_status=error.status,
            message=error.message,
            detail=error.detail,
            failures=self.failures,
        )

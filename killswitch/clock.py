"""Time as an injected dependency.

Everything that waits or measures (rate limiter, dead-man switch, confirmation
deadlines) takes a :class:`Clock`, so tests drive it with a fake one instead of
sleeping.  ``monotonic`` is the loop's clock (``time.monotonic`` on CPython);
``time`` is wall-clock seconds since the epoch, used only for what is persisted
or shown to people.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: the event loop's monotonic time and the wall clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

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

__all__ = ["Clock", "SystemClock", "sleep_or_wake"]


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


async def sleep_or_wake(clock: Clock, seconds: float | None, wake: asyncio.Event) -> bool:
    """Sleep ``seconds`` on ``clock`` (None: indefinitely) or until ``wake`` is set.

    Returns True when woken by the event.  The caller clears the event before
    it decides how long to sleep, so a set() in between is never lost.
    """
    if wake.is_set():
        return True
    if seconds is None:
        await wake.wait()
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        done, _ = await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
    if sleeper in done:
        sleeper.result()  # a failing clock must not be mistaken for a wake-up
    return wake.is_set()

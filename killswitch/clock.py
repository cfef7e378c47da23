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

__all__ = ["TIMER_SLACK", "Clock", "SystemClock", "sleep_or_wake"]

TIMER_SLACK = 0.002
"""Seconds the loop's timers may fire late: uvloop's run on whole milliseconds,
asyncio's wait in ``epoll`` with a millisecond timeout."""


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

    async def sleep_precisely(self, seconds: float) -> None:
        """Sleep ``seconds``, waking within a loop turn of the end instead of within the
        timer's :data:`TIMER_SLACK`: a timer until that much before it, then loop turns
        (other tasks run in each) until it has passed.  For the rare sleep that ends in
        an action, never for a periodic one: the last stretch keeps a core busy."""
        deadline = time.monotonic() + seconds
        if seconds > TIMER_SLACK:
            await asyncio.sleep(seconds - TIMER_SLACK)
        while time.monotonic() < deadline:  # noqa: ASYNC110 - the spin is the point
            await asyncio.sleep(0)


async def sleep_or_wake(
    clock: Clock, seconds: float | None, wake: asyncio.Event, *, precisely: bool = False
) -> bool:
    """Sleep ``seconds`` on ``clock`` (None: indefinitely) or until ``wake`` is set.

    Returns True when woken by the event.  The caller clears the event before
    it decides how long to sleep, so a set() in between is never lost.
    ``precisely``: on the real clock, see :meth:`SystemClock.sleep_precisely`.
    """
    if wake.is_set():
        return True
    if seconds is None:
        await wake.wait()
        return True
    if precisely and isinstance(clock, SystemClock):
        sleeper = asyncio.ensure_future(clock.sleep_precisely(seconds))
    else:
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

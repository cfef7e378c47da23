"""Sliding-window rate limiter (contract §3).

``requests`` per ``per_seconds`` means: in *any* window of ``per_seconds``, at
most ``requests`` requests leave the daemon.  The limiter keeps a log of send
times; a request may go when fewer than ``requests`` were sent in the last
``per_seconds + margin`` seconds.  A full burst is allowed at once.  Waiters are
served first come, first served.  (aiolimiter's leaky bucket lets ~19 through
in the first 60 s of a 10/60 s limit, which a strict exchange answers with 429.)

A ``429`` (the trading process shares the API key, so the venue's window may be
fuller than ours) is reported with :meth:`SlidingWindowLimiter.rate_limited`:
the next send waits for ``Retry-After`` or this limiter's own next free slot,
whichever is later, plus a backoff that starts at 1 s and doubles with each
further consecutive ``429``, up to ``per_seconds`` (contract §3).  Any other
answer (:meth:`SlidingWindowLimiter.answered`) starts the backoff again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from killswitch.clock import Clock, sleep_or_wake

__all__ = ["BACKOFF_START", "SlidingWindowLimiter"]

BACKOFF_START = 1.0
"""Seconds added after the first 429 in a row; doubled for each further one."""


class SlidingWindowLimiter:
    """At most ``requests`` sends in any ``per_seconds`` window, on ``clock``.

    ``history`` seeds the log with earlier send times (monotonic, e.g. restored
    from the state store after a restart).  ``on_send()`` is called for
    each admitted request (to persist it); ``on_wait(seconds)`` before each wait.
    """

    def __init__(
        self,
        name: str,
        requests: int,
        per_seconds: float,
        clock: Clock,
        *,
        margin: float = 0.5,
        history: Iterable[float] = (),
        on_send: Callable[[], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        if requests < 1 or per_seconds <= 0 or margin < 0:
            raise ValueError("requests >= 1, per_seconds > 0 and margin >= 0 are required")
        self.name = name
        self.requests = requests
        self.per_seconds = per_seconds
        self.window = per_seconds + margin
        self._clock = clock
        # A send cannot lie in the future: a restored time later than now (a clock from
        # before a reboot, a skewed conversion) counts as now, so it holds one window, not
        # until that clock comes round again.
        now = clock.monotonic()
        seeded = sorted(min(t, now) for t in history)[-requests:]
        self._sent: deque[float] = deque(seeded, maxlen=requests)
        self._not_before = 0.0
        self._turn = asyncio.Lock()
        self._wake = asyncio.Event()
        self.on_send = on_send
        self.on_wait = on_wait
        self.waits = 0
        self.consecutive_429 = 0
        self._last_429_at = -float("inf")

    def _ready_at(self) -> float:
        """The earliest monotonic time the next request may be sent."""
        at = self._not_before
        if len(self._sent) >= self.requests:
            at = max(at, self._sent[0] + self.window)
        return at

    def available(self) -> int:
        """How many requests could be sent right now without waiting."""
        now = self._clock.monotonic()
        if now < self._not_before:
            return 0
        return self.requests - sum(1 for t in self._sent if t + self.window > now)

    def next_free_in(self) -> float:
        """Seconds until a request may be sent (0 when one may go now)."""
        return max(0.0, self._ready_at() - self._clock.monotonic())

    def time_for(self, n: int) -> float:
        """Seconds until ``n`` more requests could all have left, sent as fast as the window
        allows from now (0 when ``n`` are available now): the refill, for an estimate."""
        now = self._clock.monotonic()
        sent = list(self._sent)
        at = max(now, self._not_before)
        for _ in range(max(0, n)):
            if len(sent) >= self.requests:
                at = max(at, sent[-self.requests] + self.window)
            sent.append(at)
        return at - now if n > 0 else 0.0

    def history(self) -> list[float]:
        return list(self._sent)

    def defer_until(self, monotonic: float) -> None:
        """Send nothing before ``monotonic`` (a server's ``Retry-After``).

        Only ever pushes later.  A waiter is woken (to re-plan and report its longer
        wait) only when this moves the next send later than it already was.
        """
        if monotonic <= self._not_before:
            return
        later = monotonic > self._ready_at()
        self._not_before = monotonic
        if later:
            self._wake.set()

    def rate_limited(
        self, retry_after: float | None = None, *, sent_at: float | None = None
    ) -> float:
        """A request of this endpoint was answered 429; returns the seconds the next send waits.

        The next send waits until ``retry_after`` seconds from now (when the server
        said) or this limiter's own next free slot, whichever is later, plus a backoff
        of 1 s doubled for each further consecutive 429, capped at ``per_seconds``.
        ``sent_at`` (what :meth:`acquire` returned for that request) keeps a burst of
        requests that were already in flight from counting as several 429s in a row:
        only a request sent after the previous 429 was seen doubles the backoff.
        """
        now = self._clock.monotonic()
        if sent_at is None or sent_at >= self._last_429_at or self.consecutive_429 == 0:
            self.consecutive_429 += 1
        self._last_429_at = now
        doublings = min(self.consecutive_429 - 1, 32)
        backoff = min(self.per_seconds, BACKOFF_START * 2.0**doublings)
        own_slot = self._sent[0] + self.window if len(self._sent) >= self.requests else now
        free_at = max(own_slot, now + max(0.0, retry_after or 0.0))
        self.defer_until(free_at + backoff)
        return max(0.0, self._ready_at() - now)

    def answered(self, *, sent_at: float | None = None) -> None:
        """A request of this endpoint got an answer other than 429: reset the backoff.

        An answer to a request sent before the last 429 was seen says nothing new and
        is ignored.
        """
        if sent_at is None or sent_at >= self._last_429_at:
            self.consecutive_429 = 0

    async def acquire(self) -> float:
        """Wait for a slot, record the send and return its monotonic time."""
        async with self._turn:
            while True:
                delay = self._ready_at() - self._clock.monotonic()
                if delay <= 0:
                    break
                self.waits += 1
                if self.on_wait is not None:
                    self.on_wait(delay)
                self._wake.clear()
                await sleep_or_wake(self._clock, delay, self._wake)
            now = self._clock.monotonic()
            self._sent.append(now)
            if self.on_send is not None:
                self.on_send()
            return now

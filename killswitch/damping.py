"""Damped warnings: a repeated event of one kind is logged a few times a minute.

A poisoned PnL file rewritten thousands of times a second, a breach that flaps
while the switch is already tripped, a client hammering the control socket
with garbage: each would otherwise write thousands of lines a second and bury
the events that matter.  Each kind of event (its name, plus an optional key
such as the endpoint) gets a leaky bucket (:class:`aiolimiter.AsyncLimiter`,
``rate`` per ``per`` seconds, a burst of ``rate``); an event the bucket has no
room for is counted, never waited for, and the next one that gets through
carries ``suppressed: <count>``.  If none comes (the flood stopped), the
last suppressed one is logged with its count once the bucket has room again,
so a count is never lost.

Audit events (``kill.*``, ``cancel_all.*``, ``order.*``, the first
``trigger.fired`` of a kill) never go through a damper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = ["DEFAULT_PER", "DEFAULT_RATE", "Damper"]

DEFAULT_RATE = 5  # events of one kind ...
DEFAULT_PER = 60.0  # ... per this many seconds (after a burst of DEFAULT_RATE)


class Damper:
    """Leaky buckets by event kind; :meth:`log` never blocks.

    Limiters are created lazily inside the running loop (aiolimiter binds a
    limiter to the loop that first uses it).  Outside a running loop nothing
    is damped: there is no flood to damp in synchronous start-up code.
    """

    def __init__(self, rate: float = DEFAULT_RATE, per: float = DEFAULT_PER) -> None:
        self.rate = rate
        self.per = per
        self._buckets: dict[Hashable, tuple[asyncio.AbstractEventLoop, AsyncLimiter]] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._last: dict[Hashable, tuple[FilteringBoundLogger, str, str, dict[str, Any]]] = {}
        self._flushing: set[Hashable] = set()

    def admit(self, kind: str, key: Hashable = None) -> int | None:
        """``None``: drop this one (it is counted).  Else the count suppressed before it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._suppressed.pop((kind, key), 0)
        slot = (kind, key)
        bucket = self._buckets.get(slot)
        if bucket is None or bucket[0] is not loop:
            # Imported at the first damped event, not at start: aiolimiter's __init__
            # reads its version through importlib.metadata (+1 MB resident, 3 ms).
            from aiolimiter import AsyncLimiter

            bucket = (loop, AsyncLimiter(self.rate, self.per))
            self._buckets[slot] = bucket
        limiter = bucket[1]
        if not limiter.has_capacity():
            self._suppressed[slot] = self._suppressed.get(slot, 0) + 1
            return None
        _take(limiter)
        return self._suppressed.pop(slot, 0)

    def log(
        self,
        log: FilteringBoundLogger,
        level: str,
        event: str,
        *,
        key: Hashable = None,
        **fields: Any,
    ) -> bool:
        """Log ``event`` at ``level`` unless its bucket is full; True if it was logged."""
        suppressed = self.admit(event, key)
        if suppressed is None:
            self._remember((event, key), (log, level, event, fields))
            return False
        self._last.pop((event, key), None)
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(log, level)(event, **fields)
        return True

    def _remember(
        self, slot: Hashable, last: tuple[FilteringBoundLogger, str, str, dict[str, Any]]
    ) -> None:
        """Keep the last suppressed event; log it with the count when the bucket drips."""
        self._last[slot] = last
        if slot not in self._flushing:
            self._flushing.add(slot)
            # After one drip period the bucket has room for one, whatever its level.
            asyncio.get_running_loop().call_later(self.per / self.rate, self._flush, slot)

    def _flush(self, slot: Hashable) -> None:
        self._flushing.discard(slot)
        last = self._last.pop(slot, None)
        if last is None or not self._suppressed.get(slot):
            return  # a later event already carried the count
        log, level, event, fields = last
        self._suppressed[slot] -= 1  # this one is logged now, not suppressed
        key = slot[1] if isinstance(slot, tuple) else None
        self.log(log, level, event, key=key, **fields)  # still full: it re-arms itself

    def warning(
        self, log: FilteringBoundLogger, event: str, *, key: Hashable = None, **fields: Any
    ) -> bool:
        return self.log(log, "warning", event, key=key, **fields)

    def error(
        self, log: FilteringBoundLogger, event: str, *, key: Hashable = None, **fields: Any
    ) -> bool:
        return self.log(log, "error", event, key=key, **fields)

    def suppressed(self, kind: str, key: Hashable = None) -> int:
        """How many of this kind are waiting to be reported (for tests and status)."""
        return self._suppressed.get((kind, key), 0)


def _take(limiter: AsyncLimiter) -> None:
    """``acquire()`` without suspending: it returns at once after ``has_capacity()``.

    Time only moves forward between the two calls, so the bucket can only have
    drained further; the coroutine finishes on its first step.
    """
    coro = limiter.acquire()
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()  # pragma: no cover - cannot happen after has_capacity(); never wait to log

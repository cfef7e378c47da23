"""The confirmer's poll schedule: never-polled orders first, re-polls by due time.

Two heaps of ``(due, seq, version, order)``: orders never polled wait in one
that always goes first, so every id is polled once before any id is polled
again; re-polls wait in the other (FIFO among equal due times).  Each order
carries a ``version``: scheduling it again makes its earlier entries stale,
and stale or resolved entries are dropped when they reach the top.  The
clock is read, never slept on: when a poll is due is the confirmer's call.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, Protocol, TypeVar

__all__ = ["PollSchedule", "Scheduled"]


class Scheduled(Protocol):
    """An order as the schedule sees it (the confirmer's own record)."""

    version: int  # entries with another version are stale
    polled: bool  # a re-poll goes to the second heap

    @property
    def resolved(self) -> bool: ...


OrderT = TypeVar("OrderT", bound=Scheduled)


class PollSchedule(Generic[OrderT]):
    def __init__(self) -> None:
        self._fresh: list[tuple[float, int, int, OrderT]] = []
        self._due: list[tuple[float, int, int, OrderT]] = []
        self._seq = itertools.count()

    def put(self, order: OrderT, at: float) -> None:
        """(Re)schedule ``order`` at ``at``; any earlier entry for it becomes stale."""
        order.version += 1
        queue = self._due if order.polled else self._fresh
        heapq.heappush(queue, (at, next(self._seq), order.version, order))

    def _prune(self) -> None:
        for queue in (self._fresh, self._due):
            while queue and (queue[0][3].version != queue[0][2] or queue[0][3].resolved):
                heapq.heappop(queue)

    def take(self, now: float) -> OrderT:
        """A due order: never-polled ones first; a re-poll only when no first poll is due."""
        self._prune()
        if self._fresh and self._fresh[0][0] <= now:
            order = heapq.heappop(self._fresh)[3]
        else:
            order = heapq.heappop(self._due)[3]
        order.version += 1  # taken: no entry of it is live until it is scheduled again
        return order

    def due_in(self, now: float) -> float | None:
        """Seconds until the next poll is due; None when nothing is scheduled."""
        self._prune()
        times = [q[0][0] for q in (self._fresh, self._due) if q]
        return max(0.0, min(times) - now) if times else None

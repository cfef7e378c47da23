"""The confirmer's poll schedule: never-polled orders first, re-polls by due time.

Two heaps of ``(due, seq, version, order)``: orders never polled wait in one,
re-polls in the other (FIFO among equal due times).  While both have an order
due they take turns, so a re-poll that is due is not left behind every
never-polled order (a large kill's tail), and first polls still get at least
half of the polls.  Each order
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
        self._last_fresh = False  # the last take was a first poll: a due re-poll is next

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
        """A due order: first polls and due re-polls take turns while both are due."""
        self._prune()
        fresh_due = bool(self._fresh) and self._fresh[0][0] <= now
        repoll_due = bool(self._due) and self._due[0][0] <= now
        if fresh_due and not (repoll_due and self._last_fresh):
            order = heapq.heappop(self._fresh)[3]
            self._last_fresh = True
        else:
            order = heapq.heappop(self._due)[3]
            self._last_fresh = False
        order.version += 1  # taken: no entry of it is live until it is scheduled again
        return order

    def due_in(self, now: float) -> float | None:
        """Seconds until the next poll is due; None when nothing is scheduled."""
        self._prune()
        times = [q[0][0] for q in (self._fresh, self._due) if q]
        return max(0.0, min(times) - now) if times else None

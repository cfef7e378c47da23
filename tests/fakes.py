"""Test doubles shared by the unit tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FakeClock", "settle"]


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until the loop has nothing left to do now."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """A virtual clock: ``sleep`` parks until a test calls :meth:`advance`.

    ``advance`` wakes sleepers in deadline order and moves time to each
    deadline in turn, so code under test sees exactly the times it asked for.
    """

    def __init__(self, start: float = 1_000.0, wall: float = 1_780_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its deadline."""
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()

    async def run_until(
        self, done: asyncio.Future[object] | asyncio.Task[object], limit: float = 10_000.0
    ) -> None:
        """Jump from deadline to deadline until ``done`` finishes (or ``limit`` s pass)."""
        end = self._now + limit
        await settle()
        while not done.done():
            nxt = self.next_deadline()
            if nxt is None or nxt > end:
                raise AssertionError("run_until: nothing left to wake and the task is not done")
            await self.advance(max(0.0, nxt - self._now))

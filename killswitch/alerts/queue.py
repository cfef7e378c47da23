"""One receiver's queue of alerts: oldest first, bounded, a critical alert never dropped first.

The queue lives in memory (the sender reads it) and in the state store's
``alerts`` table (a restart reads it back).  Bounded at ``limit`` pending
alerts: a receiver down for a day keeps the newest ones, and when the queue
is full the oldest *non-critical* alert makes room; only a queue holding
nothing but critical alerts (four times the limit) drops its oldest critical.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from killswitch.alerts.model import Alert

__all__ = ["ReceiverQueue"]

CRITICAL_HEADROOM = 4  # a queue of critical alerts only may hold this many times the limit


class ReceiverQueue:
    def __init__(self, limit: int, on_drop: Callable[[Alert], None]) -> None:
        self.limit = limit
        self._on_drop = on_drop
        self._items: deque[Alert] = deque()
        self._idents: set[tuple[str, str, str]] = set()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, alert: Alert) -> bool:
        """Queue ``alert`` (False: the same alert is queued already)."""
        if alert.ident in self._idents:
            return False
        self._items.append(alert)
        self._idents.add(alert.ident)
        if len(self._items) > self.limit:
            self._make_room()
        self._wake.set()
        return True

    def _make_room(self) -> None:
        victim = next((a for a in self._items if not a.critical and not a.in_flight), None)
        if victim is None and len(self._items) > self.limit * CRITICAL_HEADROOM:
            victim = next((a for a in self._items if not a.in_flight), None)
        if victim is not None:
            self._remove(victim)
            self._on_drop(victim)

    def _remove(self, alert: Alert) -> None:
        self._items.remove(alert)
        self._idents.discard(alert.ident)

    async def next(self) -> Alert:
        """The oldest alert (left queued, marked in flight until :meth:`done` or failure)."""
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        alert = self._items[0]
        alert.in_flight = True
        return alert

    def done(self, alert: Alert) -> None:
        alert.in_flight = False
        if alert in self._items:
            self._remove(alert)

    def pending(self) -> list[Alert]:
        return list(self._items)

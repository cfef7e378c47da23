"""A kill's plan, and what its parts share: the sweeps, the listed units, the cadences.

A kill sends one ``cancel_all`` per target, or per symbol of a scoped target
(:func:`plan_sweeps`); a :class:`Unit` is one listed target.  How a failed
request is retried is :mod:`killswitch.kill.retry`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from killswitch.config.model import Target
from killswitch.exchange.orders import LISTING_LIMIT
from killswitch.kill.confirm import StatusSource

__all__ = [
    "ANNOUNCE_WITHIN",
    "CLASSIFY_GRACE",
    "LISTING_HOLD",
    "NEW_PER_PAGE",
    "PAGE",
    "CancelSource",
    "KillPlan",
    "SweepKey",
    "Unit",
    "plan_sweeps",
]

LISTING_HOLD: Final = 15.0
"""While listings confirm, no status poll of an order for this long after a listing
showed it open or before the next listing is due (the listing tells for free)."""
ANNOUNCE_WITHIN: Final = 0.003
"""Seconds, at most, between a kill's first ``cancel_all`` requests leaving and its
announcement (``trigger.fired``, ``kill.started``, the durable record); the first
answer ends the wait sooner.  On the injected clock."""
CLASSIFY_GRACE: Final = 0.5
"""Seconds a proven kill waits for outcomes the budgets can learn at once before
``kill.completed`` (then with ``unclassified``); it never waits for a budget."""
PAGE: Final = LISTING_LIMIT  # orders per listing page (the venue's maximum)
NEW_PER_PAGE: Final = PAGE - 1  # a page may repeat the last order of the one before

SweepKey = tuple[str, str | None]
OnSent = Callable[[], None]


class CancelSource(StatusSource, Protocol):
    async def cancel_all(
        self, exchange: str, symbol: str | None = None, *, on_sent: OnSent | None = None
    ) -> list[str]: ...


def plan_sweeps(targets: tuple[Target, ...]) -> list[SweepKey]:
    """One unscoped sweep per target without symbols, else one per symbol."""
    sweeps: list[SweepKey] = []
    for target in targets:
        if target.symbols:
            sweeps.extend((target.exchange, s) for s in target.symbols)
        else:
            sweeps.append((target.exchange, None))
    return sweeps


@dataclass
class KillPlan:
    kill_id: str
    source: str
    reason: str
    sweeps: list[SweepKey]
    known_orders: dict[str, str] = field(default_factory=dict)  # resumed: id -> last status
    first_polled: dict[str, float] = field(default_factory=dict)  # resumed: id -> wall time
    resumed: bool = False
    by_proof: bool = False  # resumed without its record (lost in a crash): swept and listed
    started_at: float | None = None  # wall clock (resumed: from the store)
    order_units: dict[str, SweepKey] = field(default_factory=dict)  # resumed: id -> sweep key
    leftovers: set[str] = field(default_factory=set)  # resumed: ids found as leftovers
    lost: set[SweepKey] = field(default_factory=set)  # resumed: sweeps whose answer was lost


@dataclass
class Unit:
    """One listed target: an exchange, or one symbol of a scoped target."""

    exchange: str
    symbol: str | None
    sweeps: list[asyncio.Task[list[str]]] = field(default_factory=list)
    named: dict[str, None] = field(default_factory=dict)  # ids owned, in the order named
    lost: bool = False
    flat: bool | None = None
    proving: asyncio.Task[Any] | None = None  # its flat proof, while one runs

    @property
    def key(self) -> SweepKey:
        return (self.exchange, self.symbol)

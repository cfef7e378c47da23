"""A kill's plan, and what its parts share: the sweeps, the retry cadences, how a failure reads.

A kill sends one ``cancel_all`` per target, or per symbol of a scoped target
(:func:`plan_sweeps`); a :class:`Unit` is one listed target.  How a failed
request is retried depends on what the failure says (contract §2, see
:mod:`killswitch.kill.sweeps`): :func:`outcome_unknown` tells a request that may
have had its effect from one the venue refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from killswitch.config.model import Target
from killswitch.exchange.errors import (
    BadResponse,
    ConnectionFailed,
    ExchangeError,
    RequestTimeout,
    ServerError,
)
from killswitch.kill.confirm import StatusSource

__all__ = [
    "ANNOUNCE_WITHIN",
    "LISTING_HOLD",
    "NEW_PER_PAGE",
    "PAGE",
    "REJECT_FIRST",
    "REJECT_MAX",
    "CancelSource",
    "KillPlan",
    "SweepKey",
    "Unit",
    "error_message",
    "outcome_unknown",
    "plan_sweeps",
]

REJECT_FIRST: Final = 5.0
"""Seconds before the first retry of a ``cancel_all`` the venue rejected (4xx)."""
REJECT_MAX: Final = 300.0
"""The slowest cadence of those retries: never given up, never spinning."""
LISTING_HOLD: Final = 15.0
"""While listings confirm, no status poll of an order for this long after a listing
showed it open or before the next listing is due (the listing tells for free)."""
ANNOUNCE_WITHIN: Final = 0.003
"""Seconds, at most, between a kill's first ``cancel_all`` requests leaving and its
announcement (``trigger.fired``, ``kill.started``, the durable record); the first
answer ends the wait sooner.  Real time: a scheduling pause, not a deadline."""
PAGE: Final = 50  # orders per listing page (the venue's maximum)
NEW_PER_PAGE: Final = PAGE - 1  # a page may repeat the last order of the one before

SweepKey = tuple[str, str | None]


class CancelSource(StatusSource, Protocol):
    async def cancel_all(self, exchange: str, symbol: str | None = None) -> list[str]: ...


def plan_sweeps(targets: tuple[Target, ...]) -> list[SweepKey]:
    """One unscoped sweep per target without symbols, else one per symbol."""
    sweeps: list[SweepKey] = []
    for target in targets:
        if target.symbols:
            sweeps.extend((target.exchange, s) for s in target.symbols)
        else:
            sweeps.append((target.exchange, None))
    return sweeps


def outcome_unknown(exc: ExchangeError) -> bool:
    """True when the request may have had its effect (5xx, timeout, lost answer)."""
    flagged = getattr(exc, "outcome_unknown", None)
    if isinstance(flagged, bool) and flagged:
        return True
    return isinstance(exc, ServerError | RequestTimeout | ConnectionFailed | BadResponse)


def error_message(exc: ExchangeError) -> str | None:
    """The venue's ``{"message"}`` when it sent one."""
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else None


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
    announce: Callable[[], None] | None = None  # events and records deferred past the first send
    started_at: float | None = None  # wall clock (resumed: from the store)
    order_units: dict[str, SweepKey] = field(default_factory=dict)  # resumed: id -> sweep key
    leftovers: set[str] = field(default_factory=set)  # resumed: ids found as leftovers
    leftover_sweeps: set[SweepKey] = field(default_factory=set)  # resumed: unacked, leftover
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

    @property
    def key(self) -> SweepKey:
        return (self.exchange, self.symbol)

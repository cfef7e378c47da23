"""The outcomes of a kill's orders, and what confirmation reads (contract §2).

The one mapping from a terminal status to an outcome (:func:`outcome_of`), the
outcome counts by name (:data:`OUTCOME_FIELDS`), a confirmation's result
(:class:`ConfirmResult`), and the protocols the confirmer reads the venue and
its budget through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

__all__ = [
    "OUTCOME_FIELDS",
    "VENUE_STATUSES",
    "ConfirmResult",
    "HasStatus",
    "Outcome",
    "RateGate",
    "StatusSource",
    "outcome_of",
]

VENUE_STATUSES: Final = frozenset(
    {
        "RAISED",
        "OPEN",
        "PARTIALLY_EXECUTED",
        "EXECUTED",
        "CANCELLATION_RAISED",
        "CANCELLED",
        "EXPIRATION_RAISED",
        "EXPIRED",
        "DISCARDED",
        "FAILED",
        "REJECTED",
    }
)
"""Statuses the venue is known to answer (contract §2); anything else is polled again."""


class HasStatus(Protocol):
    """An order as the exchange describes it (``VenueOrder``): the confirmer reads its status."""

    @property
    def status(self) -> str: ...


class StatusSource(Protocol):
    async def order_status(self, order_id: str) -> HasStatus | str:
        """The exchange's order (or bare status) for ``order_id``; raises ExchangeError."""
        ...


class RateGate(Protocol):
    """The status limiter as the confirmer sees it: read, never acquired."""

    def next_free_in(self) -> float: ...

    def available(self) -> int: ...


class Outcome(StrEnum):
    CANCELLED = "cancelled"
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"
    OTHER = "other"
    UNKNOWN = "unknown"
    UNCONFIRMED = "unconfirmed"


OUTCOME_FIELDS: Final = tuple(o.value for o in Outcome)
"""The outcome counts, by name, as every summary, metric and status shows them."""

_BY_STATUS: Final = {
    "CANCELLED": Outcome.CANCELLED,
    "EXECUTED": Outcome.FILLED,
    "PARTIALLY_EXECUTED": Outcome.PARTIALLY_FILLED,
}


def outcome_of(status: str) -> Outcome:
    """The outcome of a terminal status (contract §2): the one mapping used everywhere."""
    return _BY_STATUS.get(status, Outcome.OTHER)


@dataclass(frozen=True)
class ConfirmResult:
    """Counts by outcome, and what was seen of each order (also mid-run, as a snapshot)."""

    cancelled: int
    filled: int
    partially_filled: int
    other: int
    unknown: int
    unconfirmed: int
    statuses: dict[str, str]  # order_id -> last status seen ("" if never answered)
    polls: int  # status requests made
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # resolved orders only
    pending: tuple[str, ...] = ()  # not resolved yet, in the order they were added
    first_polled_at: dict[str, float] = field(default_factory=dict)  # wall clock

    @property
    def resolved(self) -> int:
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        """The outcome counts by name (:data:`OUTCOME_FIELDS`)."""
        return {name: getattr(self, name) for name in OUTCOME_FIELDS}

"""The confirmer's bookkeeping: every order it tracks, its status and its outcome.

:class:`OrderLedger` holds one :class:`TrackedOrder` per id (its last status,
its outcome once resolved, when its deadline started), counts the outcomes,
logs and persists each change of status (``order.status``), and answers what
the kill reads: progress, counts, the unresolved ids and a
:class:`~killswitch.kill.outcomes.ConfirmResult` snapshot.  When to poll is
:class:`~killswitch.kill.confirm.Confirmer`'s business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from killswitch.kill.outcomes import ConfirmResult, Outcome
from killswitch.log import tell_listeners

__all__ = ["OrderLedger", "TrackedOrder"]


@dataclass(eq=False)
class TrackedOrder:
    order_id: str
    status: str = ""
    outcome: Outcome | None = None
    first_polled: float | None = None  # monotonic: first poll or listing (the deadline runs)
    first_polled_wall: float | None = None
    hold_until: float = 0.0  # monotonic: not polled before this (a listing will say more)
    backoff: int = 0  # doublings of poll_interval so far
    not_found: int = 0  # 404 answers in a row
    polled: bool = False  # had at least one status request in this run
    version: int = 0  # schedule entries with another version are stale

    @property
    def resolved(self) -> bool:
        return self.outcome is not None


class OrderLedger:
    """The orders a confirmer tracks, in the order they were added, and their outcomes.

    ``on_status(order_id, status)`` is called on every change of an order's
    status (to persist it).
    """

    def __init__(
        self,
        log: FilteringBoundLogger,
        on_status: Callable[[str, str], None] | None = None,
    ) -> None:
        self._log = log
        self._on_status = on_status
        self._orders: dict[str, TrackedOrder] = {}
        self._counts = dict.fromkeys(Outcome, 0)
        self.listed = 0  # orders resolved from a listing, without a status request
        self.polls = 0  # status requests made so far
        self._resolved = 0
        self._settle = asyncio.Event()  # an order was resolved

    # ------------------------------------------------------------------ changing

    def get(self, order_id: str) -> TrackedOrder | None:
        return self._orders.get(order_id)

    def track(self, order: TrackedOrder) -> TrackedOrder:
        """Start tracking ``order`` (its id must be new)."""
        self._orders[order.order_id] = order
        return order

    def record(self, order: TrackedOrder, status: str, *, via: str | None = None) -> None:
        """Log and persist a change of status (``via``: the listing that showed it)."""
        extra = {} if via is None else {"via": via}
        if status != order.status:
            order.status = status
            if self._log.is_enabled_for(logging.DEBUG):  # per order: kill.progress sums up
                self._log.debug("order.status", order_id=order.order_id, status=status, **extra)
            else:  # not written, but the kill's record (a log listener) learns how
                tell_listeners("order.status", order_id=order.order_id, status=status, **extra)
            if self._on_status is not None:
                self._on_status(order.order_id, status)
        else:
            self._log.debug(
                "order.status_unchanged", order_id=order.order_id, status=status, **extra
            )

    def resolve(self, order: TrackedOrder, outcome: Outcome) -> None:
        order.outcome = outcome
        self._counts[outcome] += 1
        self._resolved += 1
        self._settle.set()

    # ------------------------------------------------------------------ reading

    def all_resolved(self) -> bool:
        return self._resolved == len(self._orders)

    def progress(self) -> tuple[int, int]:
        """(resolved, total) ids so far."""
        return self._resolved, len(self._orders)

    async def settled(self) -> None:
        """Wait until every id added so far is resolved."""
        while self._resolved < len(self._orders):
            self._settle.clear()
            await self._settle.wait()

    def counts(self) -> dict[str, int]:
        """The outcome counts so far, by name (``OUTCOME_FIELDS``), without a snapshot."""
        return {outcome.value: self._counts[outcome] for outcome in Outcome}

    def knows(self, order_id: str) -> bool:
        return order_id in self._orders

    def unresolved(self, order_ids: Iterable[str] | None = None) -> list[str]:
        """The ids (of ``order_ids``, or all) not resolved yet, in the order they were added."""
        if order_ids is None:
            return [o.order_id for o in self._orders.values() if o.outcome is None]
        return [
            i for i in order_ids if (o := self._orders.get(i)) is not None and o.outcome is None
        ]

    def outcome(self, order_id: str) -> Outcome | None:
        order = self._orders.get(order_id)
        return None if order is None else order.outcome

    def snapshot(self) -> ConfirmResult:
        """Counts and statuses so far, with the ids still pending (to persist and resume)."""
        orders = self._orders.values()
        return ConfirmResult(
            cancelled=self._counts[Outcome.CANCELLED],
            filled=self._counts[Outcome.FILLED],
            partially_filled=self._counts[Outcome.PARTIALLY_FILLED],
            other=self._counts[Outcome.OTHER],
            unknown=self._counts[Outcome.UNKNOWN],
            unconfirmed=self._counts[Outcome.UNCONFIRMED],
            statuses={o.order_id: o.status for o in orders},
            polls=self.polls,
            outcomes={o.order_id: o.outcome for o in orders if o.outcome is not None},
            pending=tuple(o.order_id for o in orders if o.outcome is None),
            first_polled_at={
                o.order_id: o.first_polled_wall for o in orders if o.first_polled_wall is not None
            },
        )

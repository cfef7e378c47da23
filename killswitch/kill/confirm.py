"""Confirmation: poll every cancelled order until the exchange calls it final.

``cancel_all`` only says the exchange *accepted* the cancels.  The
:class:`Confirmer` asks the order-status endpoint about each returned id until
the answer is a terminal status (contract §2): ``CANCELLED`` counts as
cancelled, ``EXECUTED`` as filled, any other terminal status as other.  An id
answered 404 ``unknown_after`` times in a row is *unknown*; one still not
terminal ``deadline`` seconds after its first poll is *unconfirmed*.

Scheduling.  ``max_concurrency`` workers share one schedule.  Ids never polled
wait in a FIFO that always goes first, so every id is polled once before any id
is polled again; re-polls wait in a heap by due time (FIFO among equals), each
order backing off from ``poll_interval`` (x2 per poll, capped at
``max_poll_interval``, the last one at its deadline).  One worker at a time plans
the next poll: it sleeps on the clock until the next poll is due, and is woken
early when ids arrive or an answer changes the schedule.

The status rate limit is paid inside the source (the exchange client acquires
its limiter).  Given that limiter as ``gate``, the confirmer reads it but never
acquires it: a poll is committed to an order only when the limiter has a slot
free, so when the limit is the bottleneck the choice of which order to poll is
made when the request can leave, not minutes earlier in the limiter's queue.

Listings (contract §1, the flat proof in :mod:`killswitch.kill.flat`) feed the same
schedule: :meth:`Confirmer.observe` records a status a listing showed (an open
listing proves an order is not terminal yet; a closed listing gives its final
status), :meth:`Confirmer.hold` keeps an order from being polled while a
listing is about to say more, and :meth:`Confirmer.release` makes it due now.
Per-id polling stays the fallback for whatever no listing resolves.

Each order's status and outcome, the counts and the snapshot are kept by an
:class:`~killswitch.kill.ledger.OrderLedger` (``Confirmer.ledger``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from typing import Final

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock, sleep_or_wake
from killswitch.config.model import ConfirmConfig
from killswitch.exchange.errors import ExchangeError, OrderNotFound, RateLimited
from killswitch.kill.ledger import OrderLedger, TrackedOrder
from killswitch.kill.outcomes import (
    OUTCOME_FIELDS,
    VENUE_STATUSES,
    ConfirmResult,
    HasStatus,
    Outcome,
    RateGate,
    StatusSource,
    outcome_of,
)
from killswitch.kill.schedule import PollSchedule
from killswitch.log import get_logger

__all__ = [  # the outcome types are killswitch.kill.outcomes', re-exported
    "OUTCOME_FIELDS",
    "VENUE_STATUSES",
    "ConfirmResult",
    "Confirmer",
    "HasStatus",
    "Outcome",
    "RateGate",
    "StatusSource",
    "outcome_of",
]


_SHOWN_CHARS: Final = 64  # how much of an unexpected status string goes into an event


class Confirmer:
    """Polls order ids to a terminal status; :meth:`run` returns once closed and all resolved.

    ``on_status(order_id, status)`` is called on every change of an order's
    status (to persist it); an exception it raises ends :meth:`run`.  ``jitter``
    spreads each re-poll delay by up to that fraction either way, drawn from
    ``rng`` (seed it for reproducible tests).
    """

    def __init__(
        self,
        source: StatusSource,
        config: ConfirmConfig,
        clock: Clock,
        *,
        log: FilteringBoundLogger | None = None,
        on_status: Callable[[str, str], None] | None = None,
        gate: RateGate | None = None,
        jitter: float = 0.0,
        rng: random.Random | None = None,
        listing_hold: float = 0.0,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self._source = source
        self._config = config
        self._clock = clock
        self._log = log if log is not None else get_logger()
        self._gate = gate
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._listing_hold = listing_hold
        self._on_wait = on_wait  # told when the gate (not the schedule) makes polls wait
        self._gate_waiting = False
        self._known = VENUE_STATUSES | config.terminal_statuses
        self.ledger = OrderLedger(self._log, on_status)  # the orders, statuses, outcomes
        self._schedule_of: PollSchedule[TrackedOrder] = PollSchedule()
        self._closed = False
        self._started = False
        self._turn = asyncio.Lock()  # one worker at a time plans the next poll
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ feeding

    def add(self, order_ids: Iterable[str]) -> None:
        """Queue ids for their first poll; ids already known are ignored.

        An order the exchange just acknowledged is still ``CANCELLATION_RAISED``:
        its first poll waits ``first_poll_delay`` (a poll at once would be wasted
        budget), and, when listings confirm, ``listing_hold`` (the next listing
        will show it open or gone, for free).
        """
        self._check_open()
        now = self._clock.monotonic()
        ready_at = now + max(self._config.first_poll_delay, self._listing_hold)
        for order_id in order_ids:
            if not self.ledger.knows(order_id):
                order = self.ledger.track(TrackedOrder(order_id))
                self._schedule(order, ready_at)
        self._changed.set()

    def add_known(
        self, order_id: str, status: str, *, first_polled_at: float | None = None
    ) -> None:
        """Resume an order whose last status is known (e.g. from the state store).

        A terminal ``status`` is counted without a request.  Otherwise the order
        is polled again; its deadline runs from ``first_polled_at`` (wall clock,
        from an earlier run) when given, and it still gets at least one poll.
        """
        self._check_open()
        if self.ledger.knows(order_id):
            return
        order = self.ledger.track(TrackedOrder(order_id, status=status))
        if first_polled_at is not None:
            age = max(0.0, self._clock.time() - first_polled_at)
            order.first_polled = self._clock.monotonic() - age
            order.first_polled_wall = first_polled_at
        if status in self._config.terminal_statuses:
            self._resolve(order, outcome_of(status))
        else:
            self._schedule(order, self._clock.monotonic() + self._listing_hold)
        self._changed.set()

    def observe(self, order_id: str, status: str, *, via: str) -> None:
        """A listing showed ``order_id`` with ``status`` (an id not added yet is added).

        A terminal status resolves the order without a request.  A working one
        (an open listing) proves it is not terminal yet: its next status poll
        waits ``listing_hold`` (the next listing will tell), and it counts
        against its deadline like a poll.
        """
        self._check_open()
        order = self.ledger.get(order_id)
        if order is None:
            order = self.ledger.track(TrackedOrder(order_id))
        if order.outcome is not None:
            return
        self._started_deadline(order)
        self._changed.set()
        if status not in self._known:
            return  # a listing's odd value: the status poll will tell
        self.ledger.record(order, status, via=via)
        if status in self._config.terminal_statuses:
            self.ledger.listed += 1
            self._resolve(order, outcome_of(status))
            return
        now = self._clock.monotonic()
        assert order.first_polled is not None
        if now >= order.first_polled + self._config.deadline:
            self._unconfirmed(order)
            return
        order.hold_until = max(order.hold_until, now + self._listing_hold)
        self._schedule(order, order.hold_until)

    def hold(self, order_ids: Iterable[str], seconds: float) -> None:
        """No status poll of these (unresolved) ids for ``seconds`` (a listing will tell)."""
        until = self._clock.monotonic() + seconds
        for order_id in order_ids:
            order = self.ledger.get(order_id)
            if order is not None and order.outcome is None:
                order.hold_until = max(order.hold_until, until)
                self._schedule(order, until)
        self._changed.set()

    def release(self, order_ids: Iterable[str]) -> None:
        """Poll these (unresolved) ids as soon as the gate allows: no listing will resolve them."""
        now = self._clock.monotonic()
        for order_id in order_ids:
            order = self.ledger.get(order_id)
            if order is not None and order.outcome is None:
                order.hold_until = now
                self._schedule(order, now)
        self._changed.set()

    def close(self) -> None:
        """No more ids will be added: :meth:`run` returns once every id is resolved."""
        self._closed = True
        self._changed.set()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Confirmer is closed: no ids may be added")

    # ------------------------------------------------------------------ reading

    @property
    def listed(self) -> int:
        """Orders resolved from a listing, without a status request."""
        return self.ledger.listed

    @property
    def polls(self) -> int:
        """Status requests made so far."""
        return self.ledger.polls

    def progress(self) -> tuple[int, int]:
        """(resolved, total) ids so far."""
        return self.ledger.progress()

    async def settled(self) -> None:
        """Wait until every id added so far is resolved."""
        await self.ledger.settled()

    def counts(self) -> dict[str, int]:
        """The outcome counts so far, by name (:data:`OUTCOME_FIELDS`), without a snapshot."""
        return self.ledger.counts()

    def knows(self, order_id: str) -> bool:
        return self.ledger.knows(order_id)

    def unresolved(self, order_ids: Iterable[str] | None = None) -> list[str]:
        """The ids (of ``order_ids``, or all) not resolved yet, in the order they were added."""
        return self.ledger.unresolved(order_ids)

    def outcome(self, order_id: str) -> Outcome | None:
        return self.ledger.outcome(order_id)

    def snapshot(self) -> ConfirmResult:
        """Counts and statuses so far, with the ids still pending (to persist and resume)."""
        return self.ledger.snapshot()

    # ------------------------------------------------------------------ running

    async def run(self) -> ConfirmResult:
        """Poll until closed and every id is resolved; cancelling it stops every worker.

        An unexpected exception in a worker (not an :class:`ExchangeError`) ends
        the run and is raised from here as is; several at once, as an ExceptionGroup.
        """
        if self._started:
            raise RuntimeError("Confirmer.run() may only be called once")
        self._started = True
        try:
            async with asyncio.TaskGroup() as workers:
                for n in range(self._config.max_concurrency):
                    workers.create_task(self._worker(), name=f"confirm-worker-{n}")
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return self.snapshot()

    async def _worker(self) -> None:
        while (order := await self._next()) is not None:
            await self._poll(order)

    async def _next(self) -> TrackedOrder | None:
        """The next order to poll, once it is due and the gate has a slot; None when done."""
        async with self._turn:
            while True:
                if self._closed and self.ledger.all_resolved():
                    return None
                wait = self._due_in()
                gated = False
                if wait == 0.0 and self._gate is not None:
                    wait = max(0.0, self._gate.next_free_in())
                    gated = wait > 0.0
                if gated and not self._gate_waiting and self._on_wait is not None:
                    self._on_wait(wait or 0.0)  # once per stretch of waiting, not per wake-up
                self._gate_waiting = gated
                if wait == 0.0:
                    return self._take()
                await self._wait(wait)

    def _schedule(self, order: TrackedOrder, at: float) -> None:
        """(Re)schedule the next poll of ``order`` at ``at`` (not before its hold, not after
        its deadline); any earlier entry for it becomes stale."""
        at = max(at, order.hold_until)
        if order.first_polled is not None:
            at = min(at, order.first_polled + self._config.deadline)
        self._schedule_of.put(order, at)

    def _take(self) -> TrackedOrder:
        return self._schedule_of.take(self._clock.monotonic())

    def _due_in(self) -> float | None:
        return self._schedule_of.due_in(self._clock.monotonic())

    async def _wait(self, seconds: float | None) -> None:
        """Sleep ``seconds`` on the clock (None: indefinitely), or until the schedule changes."""
        self._changed.clear()
        await sleep_or_wake(self._clock, seconds, self._changed)

    def _started_deadline(self, order: TrackedOrder) -> None:
        if order.first_polled is None:
            order.first_polled = self._clock.monotonic()
            order.first_polled_wall = self._clock.time()

    async def _poll(self, order: TrackedOrder) -> None:
        self._started_deadline(order)
        order.polled = True
        self.ledger.polls += 1
        try:
            answer = await self._source.order_status(order.order_id)
        except OrderNotFound:
            if order.outcome is None:
                self._not_found(order)
        except ExchangeError as error:
            self._log.warning(
                "order.poll_failed",
                order_id=order.order_id,
                error=error.kind,
                http_status=error.status,
            )
            # A 429 says nothing about this order: the client has already deferred
            # the limiter, so poll again soon without slowing this order down.
            if order.outcome is None:
                self._retry(order, back_off=not isinstance(error, RateLimited))
        else:
            if order.outcome is None:  # a listing may have resolved it meanwhile
                self._answer(order, answer if isinstance(answer, str) else answer.status)
        finally:
            self._changed.set()

    # ------------------------------------------------------------------ outcomes

    def _answer(self, order: TrackedOrder, status: str) -> None:
        order.not_found = 0
        if status not in self._known:
            self._log.warning(
                "order.status_unknown_value",
                order_id=order.order_id,
                value=status[:_SHOWN_CHARS],
                last_status=order.status,
            )
            self._retry(order)
            return
        self.ledger.record(order, status)
        if status in self._config.terminal_statuses:
            self._resolve(order, outcome_of(status))
        else:
            self._retry(order)

    def _not_found(self, order: TrackedOrder) -> None:
        order.not_found += 1
        if order.not_found >= self._config.unknown_after:
            self._log.warning(
                "order.not_found",
                order_id=order.order_id,
                attempts=order.not_found,
                last_status=order.status,
            )
            self._resolve(order, Outcome.UNKNOWN)
            return
        self._log.warning(
            "order.poll_failed", order_id=order.order_id, error=OrderNotFound.kind, http_status=404
        )
        self._retry(order)

    def _retry(self, order: TrackedOrder, *, back_off: bool = True) -> None:
        """Schedule the next poll, or give up on an order past its deadline."""
        assert order.first_polled is not None
        now = self._clock.monotonic()
        deadline = order.first_polled + self._config.deadline
        if now >= deadline:
            self._unconfirmed(order)
            return
        delay = self._config.poll_interval
        if back_off:
            delay = min(delay * 2.0**order.backoff, self._config.max_poll_interval)
            if delay < self._config.max_poll_interval:
                order.backoff += 1
        if self._jitter:
            delay *= 1.0 + self._rng.uniform(-self._jitter, self._jitter)
        self._schedule(order, now + delay)
        self._changed.set()

    def _unconfirmed(self, order: TrackedOrder) -> None:
        self._log.warning("order.unconfirmed", order_id=order.order_id, last_status=order.status)
        self._resolve(order, Outcome.UNCONFIRMED)

    def _resolve(self, order: TrackedOrder, outcome: Outcome) -> None:
        self.ledger.resolve(order, outcome)
        self._changed.set()

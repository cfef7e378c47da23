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
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from killswitch.clock import Clock, sleep_or_wake
from killswitch.config import ConfirmConfig
from killswitch.errors import ExchangeError, OrderNotFound, RateLimited
from killswitch.log import get_logger

__all__ = [
    "VENUE_STATUSES",
    "ConfirmResult",
    "Confirmer",
    "Outcome",
    "RateGate",
    "StatusSource",
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

_SHOWN_CHARS: Final = 64  # how much of an unexpected status string goes into an event


class StatusSource(Protocol):
    async def order_status(self, order_id: str) -> str:
        """The exchange's status for ``order_id``; raises :class:`ExchangeError` subclasses."""
        ...


class RateGate(Protocol):
    """The status limiter as the confirmer sees it: read, never acquired."""

    def next_free_in(self) -> float: ...


class Outcome(StrEnum):
    CANCELLED = "cancelled"
    FILLED = "filled"
    OTHER = "other"
    UNKNOWN = "unknown"
    UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class ConfirmResult:
    """Counts by outcome, and what was seen of each order (also mid-run, as a snapshot)."""

    cancelled: int
    filled: int
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
        return self.cancelled + self.filled + self.other + self.unknown + self.unconfirmed


@dataclass(eq=False)
class _Order:
    order_id: str
    status: str = ""
    outcome: Outcome | None = None
    first_polled: float | None = None  # monotonic
    ready_at: float = 0.0  # monotonic: not polled for the first time before this
    first_polled_wall: float | None = None
    backoff: int = 0  # doublings of poll_interval so far
    not_found: int = 0  # 404 answers in a row


def _outcome(status: str) -> Outcome:
    if status == "CANCELLED":
        return Outcome.CANCELLED
    if status == "EXECUTED":
        return Outcome.FILLED
    return Outcome.OTHER


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
        log: Any = None,
        on_status: Callable[[str, str], None] | None = None,
        gate: RateGate | None = None,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self._source = source
        self._config = config
        self._clock = clock
        self._log = log if log is not None else get_logger()
        self._on_status = on_status
        self._gate = gate
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._known = VENUE_STATUSES | config.terminal_statuses
        self._orders: dict[str, _Order] = {}
        self._fresh: deque[_Order] = deque()  # never polled in this run
        self._due: list[tuple[float, int, _Order]] = []  # (due, seq, order) re-polls
        self._seq = itertools.count()
        self._counts = dict.fromkeys(Outcome, 0)
        self._resolved = 0
        self._polls = 0
        self._closed = False
        self._started = False
        self._turn = asyncio.Lock()  # one worker at a time plans the next poll
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ feeding

    def add(self, order_ids: Iterable[str]) -> None:
        """Queue ids for their first poll; ids already known are ignored."""
        self._check_open()
        ready_at = self._clock.monotonic() + self._config.first_poll_delay
        for order_id in order_ids:
            if order_id not in self._orders:
                # An order the exchange just acknowledged is still CANCELLATION_RAISED:
                # a poll at once would be wasted budget.
                order = _Order(order_id, ready_at=ready_at)
                self._orders[order_id] = order
                self._fresh.append(order)
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
        if order_id in self._orders:
            return
        order = _Order(order_id, status=status)
        self._orders[order_id] = order
        if first_polled_at is not None:
            age = max(0.0, self._clock.time() - first_polled_at)
            order.first_polled = self._clock.monotonic() - age
            order.first_polled_wall = first_polled_at
        if status in self._config.terminal_statuses:
            self._resolve(order, _outcome(status))
        else:
            self._fresh.append(order)
        self._changed.set()

    def close(self) -> None:
        """No more ids will be added: :meth:`run` returns once every id is resolved."""
        self._closed = True
        self._changed.set()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Confirmer is closed: no ids may be added")

    # ------------------------------------------------------------------ reading

    def progress(self) -> tuple[int, int]:
        """(resolved, total) ids so far."""
        return self._resolved, len(self._orders)

    def snapshot(self) -> ConfirmResult:
        """Counts and statuses so far, with the ids still pending (to persist and resume)."""
        orders = self._orders.values()
        return ConfirmResult(
            cancelled=self._counts[Outcome.CANCELLED],
            filled=self._counts[Outcome.FILLED],
            other=self._counts[Outcome.OTHER],
            unknown=self._counts[Outcome.UNKNOWN],
            unconfirmed=self._counts[Outcome.UNCONFIRMED],
            statuses={o.order_id: o.status for o in orders},
            polls=self._polls,
            outcomes={o.order_id: o.outcome for o in orders if o.outcome is not None},
            pending=tuple(o.order_id for o in orders if o.outcome is None),
            first_polled_at={
                o.order_id: o.first_polled_wall for o in orders if o.first_polled_wall is not None
            },
        )

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

    async def _next(self) -> _Order | None:
        """The next order to poll, once it is due and the gate has a slot; None when done."""
        async with self._turn:
            while True:
                if self._closed and self._resolved == len(self._orders):
                    return None
                wait = self._due_in()
                if wait == 0.0 and self._gate is not None:
                    wait = max(0.0, self._gate.next_free_in())
                if wait == 0.0:
                    return self._take()
                await self._wait(wait)

    def _take(self) -> _Order:
        """A due order: never-polled ones first; a re-poll only when no first poll is due."""
        now = self._clock.monotonic()
        if self._fresh and self._fresh[0].ready_at <= now:
            return self._fresh.popleft()
        return heapq.heappop(self._due)[2]

    def _due_in(self) -> float | None:
        """Seconds until the next poll is due; None when nothing is scheduled."""
        now = self._clock.monotonic()
        times = [self._fresh[0].ready_at] if self._fresh else []
        if self._due:
            times.append(self._due[0][0])
        return max(0.0, min(times) - now) if times else None

    async def _wait(self, seconds: float | None) -> None:
        """Sleep ``seconds`` on the clock (None: indefinitely), or until the schedule changes."""
        self._changed.clear()
        await sleep_or_wake(self._clock, seconds, self._changed)

    async def _poll(self, order: _Order) -> None:
        if order.first_polled is None:
            order.first_polled = self._clock.monotonic()
            order.first_polled_wall = self._clock.time()
        self._polls += 1
        try:
            status = await self._source.order_status(order.order_id)
        except OrderNotFound:
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
            self._retry(order, back_off=not isinstance(error, RateLimited))
        else:
            self._answer(order, status)
        finally:
            self._changed.set()

    # ------------------------------------------------------------------ outcomes

    def _answer(self, order: _Order, status: str) -> None:
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
        if status != order.status:
            order.status = status
            self._log.info("order.status", order_id=order.order_id, status=status)
            if self._on_status is not None:
                self._on_status(order.order_id, status)
        else:
            self._log.debug("order.status_unchanged", order_id=order.order_id, status=status)
        if status in self._config.terminal_statuses:
            self._resolve(order, _outcome(status))
        else:
            self._retry(order)

    def _not_found(self, order: _Order) -> None:
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

    def _retry(self, order: _Order, *, back_off: bool = True) -> None:
        """Schedule the next poll, or give up on an order past its deadline."""
        assert order.first_polled is not None
        now = self._clock.monotonic()
        deadline = order.first_polled + self._config.deadline
        if now >= deadline:
            self._log.warning(
                "order.unconfirmed", order_id=order.order_id, last_status=order.status
            )
            self._resolve(order, Outcome.UNCONFIRMED)
            return
        delay = self._config.poll_interval
        if back_off:
            delay = min(delay * 2.0**order.backoff, self._config.max_poll_interval)
            if delay < self._config.max_poll_interval:
                order.backoff += 1
        if self._jitter:
            delay *= 1.0 + self._rng.uniform(-self._jitter, self._jitter)
        heapq.heappush(self._due, (min(now + delay, deadline), next(self._seq), order))
        self._changed.set()

    def _resolve(self, order: _Order, outcome: Outcome) -> None:
        order.outcome = outcome
        self._counts[outcome] += 1
        self._resolved += 1
        self._changed.set()

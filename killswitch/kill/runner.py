"""One kill: ``cancel_all`` on every target, the flat proof, every order confirmed.

The sweeps (one ``cancel_all`` per target, or per symbol of a scoped target)
go out concurrently; each is retried until the exchange acknowledges it, every
attempt paid through the sliding-window limiter inside the client.  How a
failed attempt is retried depends on what the failure says (contract §2):

- 429: at once (the client has already deferred the endpoint's limiter);
- 5xx, timeout, lost connection, unreadable 200: the outcome is unknown (the
  cancel may have happened): capped exponential backoff with jitter, and the
  target is marked *lost*, so the flat proof also looks for orders the lost
  answer would have named;
- 401 or another 4xx: ``exchange.rejected`` and a slow, growing cadence
  (:data:`REJECT_FIRST` s doubling to :data:`REJECT_MAX` s), forever; the kill
  is *stuck* (``status`` says why) until it succeeds or an operator ends it.

Order ids are handed to the confirmer as each acknowledgement arrives.  Once
every sweep of a target is answered, the flat proof lists the target
completely (:mod:`killswitch.kill.flat`): an open order an answer named is
confirmed, not swept again; one no answer named is a leftover
(``flat.leftover``), swept again scoped to its symbol and confirmed; the
target is listed again, after a short wait while named orders are still
cancelling, until a listing is empty.  ``kill.flat`` when every target listed
empty.  Ids missing from a complete listing are terminal: their outcomes come
from closed-order pages (in parallel with status polls when the pages do not
fit the budget), status polls stay the fallback.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from killswitch.clock import Clock
from killswitch.config import Config, Target
from killswitch.exchange.errors import (
    BadResponse,
    ConnectionFailed,
    ExchangeError,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from killswitch.kill.confirm import Confirmer, ConfirmResult, RateGate, StatusSource
from killswitch.kill.flat import ListedOrder, Listings
from killswitch.kill.progress import PROGRESS_EVERY, Budget, report
from killswitch.log import get_logger
from killswitch.store import StateStore

__all__ = [
    "LISTING_HOLD",
    "REJECT_FIRST",
    "REJECT_MAX",
    "CancelSource",
    "KillPlan",
    "KillRunner",
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
RELIST_FIRST: Final = 0.5
"""Seconds between the first and second listing of a target while named orders are still
cancelling; doubling from there up to :data:`RELIST_MAX`."""
RELIST_MAX: Final = 5.0
PAGE: Final = 50  # orders per listing page (the venue's maximum)
NEW_PER_PAGE: Final = PAGE - 1  # a page may repeat the last order of the one before
RECOVER_SLACK_MS: Final = 2_000  # closed since the kill started, give or take clock error

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


def _relist(wait: float) -> float:
    """The wait before the next listing of a target that still lists named orders open."""
    return min(max(wait * 2, RELIST_FIRST), RELIST_MAX)


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
    announce: Callable[[], None] | None = None  # events and records deferred past the first send
    started_at: float | None = None  # wall clock (resumed: from the store)
    order_units: dict[str, SweepKey] = field(default_factory=dict)  # resumed: id -> sweep key
    leftovers: set[str] = field(default_factory=set)  # resumed: ids found as leftovers
    leftover_sweeps: set[SweepKey] = field(default_factory=set)  # resumed: unacked, leftover
    lost: set[SweepKey] = field(default_factory=set)  # resumed: sweeps whose answer was lost


@dataclass
class _Unit:
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


class KillRunner:
    """Executes kills; owns no state between them beyond what it reports."""

    def __init__(
        self,
        config: Config,
        exchange: CancelSource,
        store: StateStore,
        clock: Clock,
        *,
        on_outcome: Callable[[str, str], None] | None = None,
        status_gate: RateGate | None = None,
        listings: Listings | None = None,
        rng: random.Random | None = None,
        on_gate_wait: Callable[[float], None] | None = None,
        budgets: Mapping[str, Budget] | None = None,
    ) -> None:
        self.status_gate = status_gate
        self.budgets: Mapping[str, Budget] = budgets or {}  # for kill.progress and its estimate
        self.on_gate_wait = on_gate_wait
        self.config = config
        self.exchange = exchange
        self.store = store
        self.clock = clock
        self.on_outcome = on_outcome
        self.listings = listings
        self.confirmer: Confirmer | None = None
        self.stuck: dict[SweepKey, dict[str, Any]] = {}
        self._rng = rng or random.Random()
        self._log = get_logger()
        self._units: dict[SweepKey, _Unit] = {}
        self._leftovers: set[str] = set()
        self._created: dict[str, int] = {}  # created_at (venue ms) of orders a listing showed
        self._answered: set[str] = set()  # ids some cancel_all answer named
        self._gone: set[str] = set()  # named ids a complete listing no longer showed
        self._started = 0.0
        self._flat_ms: float | None = None
        self._kill_id: str | None = None  # while a kill runs

    # ------------------------------------------------------------------ reading

    def stuck_info(self) -> dict[str, Any] | None:
        """Why the running kill cannot finish (a ``cancel_all`` the venue keeps rejecting)."""
        if not self.stuck:
            return None
        now = self.clock.monotonic()
        sweeps = [
            {
                "exchange": exchange,
                "symbol": symbol,
                "why": info["why"],
                "http_status": info["http_status"],
                "since": info["since"],
                "attempts": info["attempts"],
                "next_retry_in": round(max(0.0, info["next_retry_at"] - now), 3),
            }
            for (exchange, symbol), info in sorted(self.stuck.items(), key=lambda kv: str(kv[0]))
        ]
        first = sweeps[0]
        return {
            "why": first["why"],
            "http_status": first["http_status"],
            "since": min(s["since"] for s in sweeps),
            "next_retry_in": min(s["next_retry_in"] for s in sweeps),
            "sweeps": sweeps,
        }

    def progress(self) -> tuple[int, int] | None:
        """(orders known terminal, orders) of the running kill: resolved ones, and those a
        complete listing no longer shows (terminal, outcome still to be read)."""
        confirmer = self.confirmer
        if confirmer is None:
            return None
        resolved, total = confirmer.progress()
        return resolved + len(confirmer.unresolved(self._gone)), total

    def progress_report(self) -> dict[str, Any] | None:
        """The running kill's progress report (:func:`killswitch.kill.progress.report`): what
        ``kill.progress``, ``GET /status`` and ``STATUS=`` show; None when no kill runs."""
        confirmer = self.confirmer
        counted = self.progress()
        if self._kill_id is None or confirmer is None or counted is None:
            return None
        resolved, total = counted
        sweeps_left = sum(1 for u in self._units.values() for t in u.sweeps if not t.done())
        pending = total - confirmer.progress()[0]  # gone from a listing: outcome still to read
        if self.use_listings:  # outcomes come from listings: a page per 49 orders
            remaining = {
                "cancel_all": sweeps_left,
                "open_orders": sum(1 for u in self._units.values() if not u.flat),
                "closed_orders": math.ceil(pending / NEW_PER_PAGE),
            }
        else:
            remaining = {"cancel_all": sweeps_left, "order_status": pending}
        return report(
            kill_id=self._kill_id,
            elapsed=self.clock.monotonic() - self._started,
            resolved=resolved,
            total=total,
            outcomes=confirmer.counts(),
            sweeps_left=sweeps_left,
            remaining=remaining,
            budgets=self.budgets,
            stuck=bool(self.stuck),
        )

    async def _report_progress(self) -> None:
        """``kill.progress`` every :data:`PROGRESS_EVERY` seconds until cancelled."""
        while True:
            await self.clock.sleep(PROGRESS_EVERY)
            progress = self.progress_report()
            if progress is not None:
                budgets = progress.pop("budgets")
                available = {name: b["available"] for name, b in budgets.items()}
                self._log.info("kill.progress", **progress, budgets=available)

    @property
    def use_listings(self) -> bool:
        return self.listings is not None and self.config.confirm.use_listings

    # ------------------------------------------------------------------ sweeps

    def _backoff(self, attempt: int) -> float:
        cap = min(
            self.config.cancel_all.retry_max, self.config.cancel_all.retry_base * 2 ** (attempt - 1)
        )
        return self._rng.uniform(cap / 2, cap)  # "equal jitter": never 0, never in lockstep

    async def _sweep(
        self, plan: KillPlan, unit: _Unit, exchange: str, symbol: str | None, confirmer: Confirmer
    ) -> list[str]:
        """``cancel_all`` until acknowledged; the ids it named."""
        structlog.contextvars.bind_contextvars(exchange=exchange, symbol=symbol)
        key = (exchange, symbol)
        attempt = rejected = 0
        while True:
            attempt += 1
            try:
                order_ids = await self.exchange.cancel_all(exchange, symbol)
            except ExchangeError as exc:
                delay, rejected = self._failed(plan, unit, key, exc, attempt, rejected)
                await self.clock.sleep(delay)
                continue
            if self.stuck.pop(key, None) is not None:
                self._log.warning("kill.unstuck", attempts=attempt)
            if self.on_outcome is not None:
                self.on_outcome("cancel_all", "accepted")
            confirmer.add(order_ids)
            unit.named.update(dict.fromkeys(order_ids))
            self._answered.update(order_ids)
            self.store.sweep_acked(plan.kill_id, exchange, symbol, order_ids, self.clock.time())
            self._log.info("cancel_all.accepted", order_count=len(order_ids), attempt=attempt)
            return order_ids

    def _failed(
        self,
        plan: KillPlan,
        unit: _Unit,
        key: SweepKey,
        exc: ExchangeError,
        attempt: int,
        rejected: int,
    ) -> tuple[float, int]:
        """Log a failed ``cancel_all``; the delay before the next attempt, and how many
        attempts in a row the venue rejected."""
        if self.on_outcome is not None:
            self.on_outcome("cancel_all", exc.kind)
        message = error_message(exc)
        unknown = outcome_unknown(exc)
        if isinstance(exc, RateLimited):
            delay = 0.0  # the client deferred the limiter: the next attempt waits there
        elif unknown:
            delay = self._backoff(attempt)
            if not unit.lost:
                unit.lost = True
                self.store.sweep_lost(plan.kill_id, key[0], key[1])
        else:
            rejected += 1
            delay = min(REJECT_FIRST * 2 ** (rejected - 1), REJECT_MAX)
            self._log.error(
                "exchange.rejected",
                endpoint="cancel_all",
                http_status=exc.status,
                message=message,
                error=exc.kind,
                attempt=attempt,
                retry_in=round(delay, 3),
            )
            info = self.stuck.setdefault(key, {"since": self.clock.time()})
            info.update(
                why=message or str(exc),
                http_status=exc.status,
                attempts=rejected,
                next_retry_at=self.clock.monotonic() + delay,
            )
        self._log.error(
            "cancel_all.failed",
            attempt=attempt,
            error=exc.kind,
            http_status=exc.status,
            detail=exc.detail,
            message=message,
            outcome_unknown=unknown,
            retry_in=round(delay, 3),
        )
        return delay, rejected

    # ------------------------------------------------------------------ the kill

    async def run(self, plan: KillPlan) -> dict[str, Any]:
        """Run ``plan`` to ``kill.completed``; returns the summary that was logged."""
        self._started = self.clock.monotonic()
        self._kill_id = plan.kill_id
        structlog.contextvars.bind_contextvars(kill_id=plan.kill_id)
        try:
            return await self._run(plan, self._started)
        finally:
            self._kill_id = None
            self.stuck.clear()
            structlog.contextvars.unbind_contextvars("kill_id")

    def _unit_for(self, key: SweepKey) -> _Unit:
        unit = self._units.get(key) or self._units.get((key[0], None))
        if unit is None:
            unit = self._units[key] = _Unit(*key)
        return unit

    async def _run(self, plan: KillPlan, started: float) -> dict[str, Any]:
        kill_id = plan.kill_id
        listing = self.use_listings

        def persist(order_id: str, status: str) -> None:
            self.store.order_status(kill_id, order_id, status, self.clock.time())

        confirmer = Confirmer(
            self.exchange,
            self.config.confirm,
            self.clock,
            log=self._log,
            on_status=persist,
            gate=self.status_gate,
            listing_hold=LISTING_HOLD if listing else 0.0,
            on_wait=self.on_gate_wait,
        )
        self.confirmer = confirmer
        self._units = {key: _Unit(*key) for key in plan_sweeps(self.config.targets)}
        self._leftovers = set(plan.leftovers)
        self._created = {}
        self._answered = set(plan.known_orders) - plan.leftovers
        self._gone = set()
        self._flat_ms = None
        for order_id, status in plan.known_orders.items():
            # A resumed order keeps its deadline from its first poll before the restart.
            confirmer.add_known(order_id, status, first_polled_at=plan.first_polled.get(order_id))
            unit_key = plan.order_units.get(order_id)
            if unit_key is not None:
                self._unit_for(unit_key).named[order_id] = None
        for key in plan.lost:
            self._unit_for(key).lost = True
        async with asyncio.TaskGroup() as tg:
            for exchange, symbol in plan.sweeps:
                unit = self._unit_for((exchange, symbol))
                unit.sweeps.append(
                    tg.create_task(self._sweep(plan, unit, exchange, symbol, confirmer))
                )
            # Let every sweep put its first request on the wire before anything else
            # runs: a sweep's first step queues aiohttp's body-writing task, the second
            # yield lets that task send.  (Only latency depends on this; if a step
            # yields sooner, the bookkeeping below simply runs a little earlier.)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if plan.announce is not None:
                plan.announce()
            if plan.started_at is None:
                plan.started_at = self.clock.time()
            if plan.resumed:
                self._log.info(
                    "kill.resumed",
                    pending_orders=sum(
                        1
                        for s in plan.known_orders.values()
                        if s not in self.config.confirm.terminal_statuses
                    ),
                    pending_sweeps=len(plan.sweeps),
                    source=plan.source,
                )
            else:
                self._log.info(
                    "kill.started",
                    source=plan.source,
                    reason=plan.reason,
                    sweeps=len(plan.sweeps),
                )
            confirming = tg.create_task(confirmer.run())
            reporting = tg.create_task(self._report_progress())
            work: list[asyncio.Task[Any]] = [s for u in self._units.values() for s in u.sweeps]
            if listing:
                work += [
                    tg.create_task(self._prove(plan, unit, confirmer))
                    for unit in list(self._units.values())
                ]
            for task in work:
                await task
            confirmer.close()
            result = await confirming
            reporting.cancel()
        summary = self._summary(plan, result, started)
        self._log.info("kill.completed", **summary)
        self.store.complete_kill(kill_id, self.clock.time(), summary)
        return summary

    # ------------------------------------------------------------------ the flat proof

    async def _prove(self, plan: KillPlan, unit: _Unit, confirmer: Confirmer) -> None:
        """List ``unit`` until it is flat, sweeping leftovers; then resolve what it named."""
        assert self.listings is not None
        cfg = self.config.confirm
        if unit.sweeps:
            await asyncio.wait(unit.sweeps)
        wait = cfg.first_poll_delay
        pages = 1  # what the last listing cost
        while True:
            if self.listings.open_budget() < pages + 1:
                # Listing now would spend the last of the open-orders budget on orders
                # still cancelling: let them finish first (the limiter would wait anyway).
                wait = max(wait, RELIST_MAX)
            await self.clock.sleep(wait)
            listed = await self._list(unit)
            pages = max(1, math.ceil(len(listed) / NEW_PER_PAGE))
            self._created.update((i, o.created_at) for i, o in listed.items())
            for order_id, order in listed.items():
                if confirmer.knows(order_id):
                    confirmer.observe(order_id, order.status, via="open_orders")
            missing = [i for i in confirmer.unresolved(unit.named) if i not in listed]
            confirmer.hold(missing, LISTING_HOLD)  # the closed pages below will tell
            self._gone.update(missing)
            # Open, and no answer named it: a leftover, swept (again) until an answer
            # names it or its deadline gives up on it (unconfirmed).
            leftovers = {
                i: o
                for i, o in listed.items()
                if i not in self._answered and confirmer.outcome(i) is None
            }
            if leftovers:
                fresh = not set(leftovers) <= self._leftovers
                await self._sweep_leftovers(plan, unit, leftovers, confirmer)
                # New leftovers: look again soon.  The same ones again (the venue named
                # none of them): back off, inside the cancel_all budget.
                wait = cfg.first_poll_delay if fresh else _relist(wait)
                continue
            if not listed:
                unit.flat = True
                break
            if not confirmer.unresolved(listed):
                unit.flat = False  # what still lists open was given up on (unconfirmed)
                self._log.warning(
                    "flat.not_proven",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    open=len(listed),
                    order_ids=sorted(listed),
                )
                break
            wait = _relist(wait)
        if unit.flat and all(u.flat for u in self._units.values()) and self._flat_ms is None:
            self._flat_ms = round((self.clock.monotonic() - self._started) * 1000, 1)
            self._log.info("kill.flat", duration_ms=self._flat_ms)
        if unit.lost:
            await self._recover(plan, unit, confirmer)
        await self._closed_round(unit, confirmer)

    async def _list(self, unit: _Unit) -> Mapping[str, ListedOrder]:
        """One complete deep listing of ``unit``, retried until it succeeds."""
        assert self.listings is not None
        attempt = rejected = 0
        while True:
            attempt += 1
            try:
                return await self.listings.list_open(unit.exchange, unit.symbol, deep=True)
            except ExchangeError as exc:
                if isinstance(exc, RateLimited):
                    delay = 0.0
                elif outcome_unknown(exc):
                    delay = self._backoff(attempt)
                else:
                    rejected += 1
                    delay = min(REJECT_FIRST * 2 ** (rejected - 1), REJECT_MAX)
                self._log.warning(
                    "flat.list_failed",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    attempt=attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    message=error_message(exc),
                    retry_in=round(delay, 3),
                )
                await self.clock.sleep(delay)

    async def _sweep_leftovers(
        self,
        plan: KillPlan,
        unit: _Unit,
        leftovers: Mapping[str, ListedOrder],
        confirmer: Confirmer,
    ) -> None:
        """``flat.leftover`` per symbol; sweep each symbol again; confirm the ids."""
        by_symbol: dict[str, list[str]] = {}
        for order_id, order in leftovers.items():
            by_symbol.setdefault(unit.symbol or order.symbol, []).append(order_id)
        sweeps = []
        for symbol, ids in sorted(by_symbol.items()):
            self._log.warning(
                "flat.leftover", exchange=unit.exchange, symbol=symbol, order_ids=sorted(ids)
            )
            self._leftovers.update(ids)
            self.store.leftover_sweep(plan.kill_id, unit.exchange, symbol, ids, self.clock.time())
            confirmer.add(ids)
            unit.named.update(dict.fromkeys(ids))
            sweeps.append(self._sweep(plan, unit, unit.exchange, symbol, confirmer))
        await asyncio.gather(*sweeps)

    async def _recover(self, plan: KillPlan, unit: _Unit, confirmer: Confirmer) -> None:
        """A lost answer: count the orders it cancelled (closed since the kill started)."""
        assert self.listings is not None
        assert plan.started_at is not None
        since = self.listings.venue_ms(plan.started_at) - RECOVER_SLACK_MS
        attempt = 0
        while True:
            attempt += 1
            try:
                closed = await self.listings.closed_since(unit.exchange, unit.symbol, since)
                break
            except ExchangeError as exc:
                delay = 0.0 if isinstance(exc, RateLimited) else self._backoff(attempt)
                self._log.warning(
                    "flat.list_failed",
                    exchange=unit.exchange,
                    symbol=unit.symbol,
                    listing="closed_orders",
                    attempt=attempt,
                    error=exc.kind,
                    http_status=exc.status,
                    message=error_message(exc),
                    retry_in=round(delay, 3),
                )
                await self.clock.sleep(delay)
        found = {i: o for i, o in closed.items() if not confirmer.knows(i)}
        if found:
            by_symbol: dict[str, list[str]] = {}
            for order_id, order in found.items():
                by_symbol.setdefault(order.symbol, []).append(order_id)
            for symbol, ids in sorted(by_symbol.items()):
                self._log.warning(
                    "flat.recovered", exchange=unit.exchange, symbol=symbol, order_ids=sorted(ids)
                )
                self.store.orders_found(plan.kill_id, unit.exchange, symbol, ids, self.clock.time())
            for order_id, order in found.items():
                unit.named[order_id] = None
                confirmer.observe(order_id, order.status, via="closed_orders")

    async def _closed_round(self, unit: _Unit, confirmer: Confirmer) -> None:
        """Outcomes of the ids ``unit`` named that are still unresolved.

        Closed-order pages (50 orders a request, newest first) when they fit the
        closed-orders budget now; when they do not, the oldest ids go to status polls
        at the same time, as many as the status budget allows now (both budgets in
        parallel).  Whatever the pages do not find is polled (the closed listing never
        shows EXPIRED, DISCARDED, FAILED or REJECTED).
        """
        assert self.listings is not None
        wanted = confirmer.unresolved(unit.named)
        if len(wanted) < 2:
            confirmer.release(wanted)  # one status request is the cheapest answer
            return
        pages_now = self.listings.closed_budget()
        polls_now = 0 if self.status_gate is None else self.status_gate.available()
        polled: list[str] = []
        if math.ceil(len(wanted) / NEW_PER_PAGE) > pages_now and polls_now > 0:
            # The pages that fit now cover the newest ids, less a page's worth of margin
            # (ids no listing showed have no known age); the oldest go to status polls.
            oldest_first = sorted(wanted, key=lambda i: self._created.get(i, math.inf))
            spill = len(wanted) - max(0, pages_now - 1) * NEW_PER_PAGE
            polled = oldest_first[: min(spill, polls_now)]
            confirmer.release(polled)
        skip = set(polled)
        paged = [i for i in wanted if i not in skip]
        confirmer.hold(paged, LISTING_HOLD * 4)
        try:
            found = await self.listings.find_closed(
                unit.exchange,
                unit.symbol,
                set(paged),
                max_pages=math.ceil(len(paged) / NEW_PER_PAGE) + 1,
            )
        except ExchangeError as exc:
            self._log.warning(
                "flat.list_failed",
                exchange=unit.exchange,
                symbol=unit.symbol,
                listing="closed_orders",
                error=exc.kind,
                http_status=exc.status,
                message=error_message(exc),
            )
            found = {}
        for order_id, order in found.items():
            if order_id in unit.named:
                confirmer.observe(order_id, order.status, via="closed_orders")
        confirmer.release(confirmer.unresolved(paged))

    # ------------------------------------------------------------------ the summary

    def _summary(self, plan: KillPlan, result: ConfirmResult, started: float) -> dict[str, Any]:
        flat = self.use_listings and all(u.flat for u in self._units.values())
        return {
            "source": plan.source,
            "reason": plan.reason,
            "orders": len(result.statuses),
            **result.counts(),
            "flat": flat,
            "leftover": len(self._leftovers),
            "polls": result.polls,
            "listed": self.confirmer.listed if self.confirmer is not None else 0,
            "flat_ms": self._flat_ms,
            "duration_ms": round((self.clock.monotonic() - started) * 1000, 1),
            "resumed": plan.resumed,
        }

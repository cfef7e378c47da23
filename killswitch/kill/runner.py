"""One kill: ``cancel_all`` on every target, the flat proof, every order confirmed.

:class:`KillRunner` runs a :class:`~killswitch.kill.plan.KillPlan`: the sweeps
go out concurrently (:mod:`killswitch.kill.sweeps`: each ``cancel_all`` retried
by what its failure says), every order id an acknowledgement names goes to the
confirmer, and once every sweep of a target is answered the flat proof lists
it until it is empty (:mod:`killswitch.kill.flat`, :mod:`killswitch.kill.proof`).
``kill.progress`` is logged while it runs, ``kill.completed`` with the summary
at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.kill.confirm import Confirmer, ConfirmResult, RateGate
from killswitch.kill.exposure import KillFacts, PositionsStep
from killswitch.kill.flat import Listings
from killswitch.kill.plan import (
    ANNOUNCE_WITHIN,
    LISTING_HOLD,
    NEW_PER_PAGE,
    CancelSource,
    KillPlan,
    SweepKey,
    Unit,
    plan_sweeps,
)
from killswitch.kill.progress import PROGRESS_EVERY, Budget, report
from killswitch.kill.proof import FlatProof
from killswitch.log import get_logger
from killswitch.store.state import StateStore

__all__ = ["KillRunner"]


class KillRunner(FlatProof):
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
        after_flat: PositionsStep | None = None,
    ) -> None:
        self.after_flat = after_flat  # contract §12: the positions step (kill/exposure.py)
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
        self._units: dict[SweepKey, Unit] = {}
        self._leftovers: set[str] = set()
        self._created: dict[str, int] = {}  # created_at (venue ms) of orders a listing showed
        self._answered: set[str] = set()  # ids some cancel_all answer named
        self._announced = asyncio.Event()
        self._gone: set[str] = set()  # named ids a complete listing no longer showed
        self._started = 0.0
        self._flat_ms: float | None = None
        self._kill_id: str | None = None  # while a kill runs

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

    def _unit_for(self, key: SweepKey) -> Unit:
        unit = self._units.get(key) or self._units.get((key[0], None))
        if unit is None:
            unit = self._units[key] = Unit(*key)
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
        self._units = {key: Unit(*key) for key in plan_sweeps(self.config.targets)}
        self._leftovers = set(plan.leftovers)
        self._created = {}
        self._answered = set(plan.known_orders) - plan.leftovers
        self._announced = asyncio.Event()
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
            # Then stand aside until the first answer, or ANNOUNCE_WITHIN: the events,
            # the durable record and the confirmer's start follow.  A process that keeps
            # a core busy right after its write delays the receiving side whenever the
            # two share a host (the simulated exchange, a co-located gateway): measured
            # as the whole tail of SIGUSR1 -> cancel_all (BENCHMARKS.md, 0.3.0).
            if plan.sweeps:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ANNOUNCE_WITHIN):
                        await self._announced.wait()
            self._announce(plan)
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
        # --- contract §12: the positions the kill leaves (and, opted in, their closes). ---
        # The ONE call site of the positions step: after the flat proof, before
        # kill.completed, which carries positions_open and exposure_read (kill/exposure.py).
        if self.after_flat is not None:
            flat = {unit.key: unit.flat for unit in self._units.values()}
            summary.update(
                await self.after_flat.run(KillFacts(plan.kill_id, result.statuses, flat))
            )
        self._log.info("kill.completed", **summary)
        self.store.complete_kill(kill_id, self.clock.time(), summary)
        return summary

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

"""One kill: ``cancel_all`` on every target, the flat proof, every order confirmed.

:class:`KillRunner` runs a :class:`~killswitch.kill.plan.KillPlan` with its
parts, each handed the kill's :class:`~killswitch.kill.context.KillContext`:
the :class:`~killswitch.kill.sweeps.Sweeper` sends the ``cancel_all``
requests, every id an acknowledgement names goes to the confirmer, the
:class:`~killswitch.kill.proof.FlatProof` lists each target once its sweeps
are answered, and the kill is **proven** (``kill.completed``, contract v3 §1)
when every named id is terminal and every target is flat.  What is not known
yet of how each order ended (``unclassified``) the
:class:`~killswitch.kill.classify.Classifier` learns afterwards, in a task of
the caller's ``background`` group, ending with ``kill.classified``.  An
explicit trigger after the sweeps were answered sweeps again (:meth:`resweep`).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from killswitch.clock import Clock, sleep_or_wake
from killswitch.config.model import Config
from killswitch.kill.classify import Classifier
from killswitch.kill.confirm import Confirmer, RateGate
from killswitch.kill.context import KillContext, StuckInfo
from killswitch.kill.events import Announcer, KillEvents, NoEvents
from killswitch.kill.exposure import KillFacts, PositionsStep
from killswitch.kill.flat import Listings
from killswitch.kill.plan import (
    ANNOUNCE_WITHIN,
    CLASSIFY_GRACE,
    LISTING_HOLD,
    NEW_PER_PAGE,
    CancelSource,
    KillPlan,
    Unit,
    plan_sweeps,
)
from killswitch.kill.progress import PROGRESS_EVERY, Budget, report
from killswitch.kill.proof import FlatProof
from killswitch.kill.sweeps import Sweeper
from killswitch.log import get_logger
from killswitch.store.state import StateStore

__all__ = ["KillResult", "KillRunner"]


@dataclass(frozen=True)
class KillResult:
    summary: dict[str, Any]  # as ``kill.completed`` logged it
    classified: asyncio.Task[dict[str, Any]]  # ends with ``kill.classified``'s summary


class KillRunner:
    """Executes kills; owns no state between them beyond what it reports."""

    def __init__(
        self,
        config: Config,
        exchange: CancelSource,
        store: StateStore,
        clock: Clock,
        *,
        events: KillEvents | None = None,
        status_gate: RateGate | None = None,
        listings: Listings | None = None,
        rng: random.Random | None = None,
        budgets: Mapping[str, Budget] | None = None,
        after_flat: PositionsStep | None = None,
    ) -> None:
        self.config = config  # replaced on reload
        self.events: KillEvents = events or NoEvents()
        self.budgets: Mapping[str, Budget] = budgets or {}
        self.after_flat = after_flat  # contract §12: the positions step (kill/exposure.py)
        self._exchange = exchange
        self._store = store
        self._clock = clock
        self._gate = status_gate
        self._listings = listings
        self._log = get_logger()
        self.sweeper = Sweeper(
            lambda: self.config,
            exchange,
            store,
            clock,
            self.events,
            self._log,
            rng or random.Random(),
            self._announce,
        )
        self.proof = (
            None
            if listings is None
            else FlatProof(
                lambda: self.config, listings, self.sweeper, store, clock, self._log, self.budgets
            )
        )
        self.classifier = (
            None
            if listings is None
            else Classifier(
                listings, store, clock, self._log, self.sweeper.retry, self.budgets, status_gate
            )
        )
        self.current: KillContext | None = None  # while a kill runs, until it is proven

    @property
    def use_listings(self) -> bool:
        return self._listings is not None and self.config.confirm.use_listings

    # ------------------------------------------------------------------ what it shows

    def progress(self) -> tuple[int, int] | None:
        """(orders known terminal, orders) of the running kill: resolved ones, and those a
        complete listing no longer shows (terminal, outcome still to be read)."""
        ctx = self.current
        if ctx is None:
            return None
        resolved, total = ctx.confirmer.progress()
        return resolved + len(ctx.confirmer.unresolved(ctx.gone)), total

    def stuck_info(self) -> StuckInfo | None:
        """Why the running kill cannot finish (a ``cancel_all`` the venue keeps rejecting)."""
        ctx = self.current
        return None if ctx is None else ctx.stuck_info(self._clock.monotonic())

    def progress_report(self) -> dict[str, Any] | None:
        """The running kill's progress report (:func:`killswitch.kill.progress.report`): what
        ``kill.progress``, ``GET /status`` and ``STATUS=`` show; None when no kill runs."""
        ctx = self.current
        counted = self.progress()
        if ctx is None or counted is None:
            return None
        resolved, total = counted
        units = ctx.units.values()
        sweeps_left = sum(1 for u in units for t in u.sweeps if not t.done())
        pending = total - ctx.confirmer.progress()[0]  # gone from a listing: outcome to read
        if ctx.listing:  # outcomes come from listings: a page per 49 orders
            remaining = {
                "cancel_all": sweeps_left,
                "open_orders": sum(1 for u in units if not u.flat),
                "closed_orders": math.ceil(pending / NEW_PER_PAGE),
            }
        else:
            remaining = {"cancel_all": sweeps_left, "order_status": pending}
        return report(
            kill_id=ctx.kill_id,
            elapsed=self._clock.monotonic() - ctx.started,
            resolved=resolved,
            total=total,
            outcomes=ctx.confirmer.counts(),
            sweeps_left=sweeps_left,
            remaining=remaining,
            budgets=self.budgets,
            stuck=bool(ctx.stuck),
        )

    async def _report_progress(self) -> None:
        """``kill.progress`` every :data:`PROGRESS_EVERY` seconds until cancelled."""
        while True:
            await self._clock.sleep(PROGRESS_EVERY)
            progress = self.progress_report()
            if progress is not None:
                budgets = progress.pop("budgets")
                available = {name: b["available"] for name, b in budgets.items()}
                self._log.info("kill.progress", **progress, budgets=available)

    # ------------------------------------------------------------------ the kill

    def resweep(self) -> bool:
        """An explicit trigger joins the running kill: once every sweep was answered, sweep
        every target again and list them again (contract v3 §1).  False when the kill's own
        sweeps are still unanswered (the trigger is simply coalesced) or it is proven."""
        ctx = self.current
        if ctx is None or ctx.proven or ctx.tg is None or not ctx.sweeps_answered():
            return False
        ctx.resweeps += 1
        for key in plan_sweeps(self.config.targets):
            unit = ctx.unit_for(key)
            # Registered before this returns: a trigger handled in the same loop turn finds
            # the resweep unanswered and is coalesced into it (a burst is one resweep).
            sweep = ctx.spawn(self.sweeper.sweep(ctx, unit, *key), name=f"resweep-{key}")
            unit.sweeps.append(sweep)
            ctx.spawn(self._prove_after(ctx, unit, sweep), name=f"reprove-{key}")
        return True

    async def _prove_after(self, ctx: KillContext, unit: Unit, sweep: asyncio.Task[Any]) -> None:
        await sweep
        if self.proof is not None and ctx.listing and (unit.proving is None or unit.proving.done()):
            unit.proving = ctx.spawn(self.proof.prove(ctx, unit), name=f"prove-{unit.key}")

    def _announce(self, ctx: KillContext) -> None:
        """Once per kill: the announcer's part (its events and the durable record, which the
        kill's own records follow in the store's queue), then ``kill.started``."""
        if ctx.announced.is_set():
            return
        ctx.announced.set()
        plan = ctx.plan
        if ctx.announcer is not None:
            ctx.announcer.announce(plan)
        if plan.started_at is None:
            plan.started_at = self._clock.time()
        if plan.resumed:
            terminal = self.config.confirm.terminal_statuses
            self._log.info(
                "kill.resumed",
                pending_orders=sum(1 for s in plan.known_orders.values() if s not in terminal),
                pending_sweeps=len(plan.sweeps),
                source=plan.source,
                by_proof=plan.by_proof,
            )
        else:
            self._log.info(
                "kill.started", source=plan.source, reason=plan.reason, sweeps=len(plan.sweeps)
            )

    def _context(self, plan: KillPlan, announcer: Announcer | None) -> KillContext:
        listing = self.use_listings
        kill_id = plan.kill_id
        store, clock = self._store, self._clock

        def persist(order_id: str, status: str) -> None:
            store.order_status(kill_id, order_id, status, clock.time())

        confirmer = Confirmer(
            self._exchange,
            self.config.confirm,
            clock,
            log=self._log,
            on_status=persist,
            gate=self._gate,
            listing_hold=LISTING_HOLD if listing else 0.0,
            on_wait=self.events.status_gate_waited,
        )
        ctx = KillContext(plan, confirmer, clock.monotonic(), listing, announcer=announcer)
        ctx.units = {key: Unit(*key) for key in plan_sweeps(self.config.targets)}
        ctx.leftovers = set(plan.leftovers)
        ctx.answered = set(plan.known_orders) - plan.leftovers
        for order_id, status in plan.known_orders.items():
            # A resumed order keeps its deadline from its first poll before the restart.
            confirmer.add_known(order_id, status, first_polled_at=plan.first_polled.get(order_id))
            unit_key = plan.order_units.get(order_id)
            if unit_key is not None:
                ctx.unit_for(unit_key).named[order_id] = None
        for key in plan.lost:
            ctx.unit_for(key).lost = True
        return ctx

    async def run(
        self,
        plan: KillPlan,
        announcer: Announcer | None = None,
        *,
        background: asyncio.TaskGroup | None = None,
    ) -> KillResult:
        """Run ``plan`` to ``kill.completed``; the classification goes on in ``background``
        (without one, it is awaited here: the result's ``classified`` is done)."""
        if background is None:
            async with asyncio.TaskGroup() as tg:
                return await self.run(plan, announcer, background=tg)
        ctx = self._context(plan, announcer)
        self.current = ctx
        structlog.contextvars.bind_contextvars(kill_id=plan.kill_id)
        confirming: asyncio.Task[Any] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                ctx.tg = tg
                for key in plan.sweeps:
                    unit = ctx.unit_for(key)
                    unit.sweeps.append(ctx.spawn(self.sweeper.sweep(ctx, unit, *key), name="sweep"))
                # Stand aside while the sweeps write their first requests, then until the
                # first answer, at most ANNOUNCE_WITHIN each: the events, the durable record
                # and the confirmer follow.  A process that keeps a core busy right after its
                # write delays the receiving side whenever the two share a host.
                if plan.sweeps:
                    await sleep_or_wake(self._clock, ANNOUNCE_WITHIN, ctx.all_sent)
                    await sleep_or_wake(self._clock, ANNOUNCE_WITHIN, ctx.announced)
                self._announce(ctx)
                confirming = background.create_task(ctx.confirmer.run(), name="confirm")
                reporting = tg.create_task(self._report_progress(), name="progress")
                if self.proof is not None and ctx.listing:
                    for unit in list(ctx.units.values()):
                        unit.proving = ctx.spawn(self.proof.prove(ctx, unit), name="prove")
                await self._proven(ctx)
                ctx.proven = True
                reporting.cancel()
            ctx.tg = None
            classified = background.create_task(
                self._classified(ctx, confirming), name=f"classify-{plan.kill_id}"
            )
            classifier = self.classifier
            if ctx.confirmer.unresolved() and classifier and classifier.free_now(ctx):
                # What the budgets can learn at once: kill.completed with it, never later
                # than CLASSIFY_GRACE; anything that needs a budget wait comes after.
                learned = asyncio.Event()
                classified.add_done_callback(lambda _: learned.set())
                await sleep_or_wake(self._clock, CLASSIFY_GRACE, learned)
            summary = self._summary(ctx)
            # --- contract §12: the positions the kill leaves (and, opted in, their closes).
            # The ONE call site of the positions step: after the flat proof, before
            # kill.completed, which carries positions_open and exposure_read.
            if self.after_flat is not None:
                flat = {unit.key: unit.flat for unit in ctx.units.values()}
                statuses = ctx.confirmer.snapshot().statuses
                summary.update(await self.after_flat.run(KillFacts(plan.kill_id, statuses, flat)))
            self._log.info("kill.completed", **summary)
            self._store.complete_kill(plan.kill_id, self._clock.time(), summary)
            self.events.kill_completed(plan.kill_id, summary)
            return KillResult(summary, classified)
        except BaseException:
            if confirming is not None:
                confirming.cancel()
            raise
        finally:
            if self.current is ctx:
                self.current = None
            structlog.contextvars.unbind_contextvars("kill_id")

    async def _proven(self, ctx: KillContext) -> None:
        """Until every sweep and proof is done and (without listings) every id resolved."""
        while True:
            pending = {t for t in ctx.work if not t.done()}
            if not pending and (ctx.listing or not ctx.confirmer.unresolved()):
                return
            ctx.more_work.clear()
            waiters: set[asyncio.Future[Any]] = set(pending)
            more = asyncio.ensure_future(ctx.more_work.wait())
            waiters.add(more)
            settled = None
            if not pending:
                settled = asyncio.ensure_future(ctx.confirmer.settled())
                waiters.add(settled)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                more.cancel()
                if settled is not None:
                    settled.cancel()
            for task in pending:
                if task.done():
                    task.result()  # a failed part is the kill's failure

    async def _classified(
        self, ctx: KillContext, confirming: asyncio.Task[Any] | None
    ) -> dict[str, Any]:
        """The outcomes the proof did not learn; ``kill.classified`` with the final counts."""
        structlog.contextvars.bind_contextvars(kill_id=ctx.kill_id)
        if self.classifier is not None and ctx.listing:
            await self.classifier.classify(ctx)
        ctx.confirmer.release(ctx.confirmer.unresolved())
        ctx.confirmer.close()
        if confirming is not None:
            await confirming
        summary = self._summary(ctx)
        final = {"kill_id": ctx.kill_id, **summary}
        self._log.info("kill.classified", **summary)
        self._store.classify_kill(ctx.kill_id, summary)
        self.events.kill_classified(ctx.kill_id, final)
        return final

    def _summary(self, ctx: KillContext) -> dict[str, Any]:
        confirmer = ctx.confirmer
        resolved, total = confirmer.progress()
        return {
            "source": ctx.plan.source,
            "reason": ctx.plan.reason,
            "orders": total,
            **confirmer.counts(),
            "unclassified": total - resolved,
            "flat": ctx.listing and all(u.flat for u in ctx.units.values()),
            "leftover": len(ctx.leftovers),
            "resweeps": ctx.resweeps,
            "polls": confirmer.polls,
            "listed": confirmer.listed,
            "flat_ms": ctx.flat_ms,
            "duration_ms": round((self._clock.monotonic() - ctx.started) * 1000, 1),
            "resumed": ctx.plan.resumed,
        }

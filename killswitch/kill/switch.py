"""The switch: an explicit state machine, latched until an operator resets it.

``ARMED`` → (trigger) → ``KILLING`` → (kill.completed) → ``TRIPPED`` → (reset) → ``ARMED``.
``KILLING`` → (reset --force: ``kill.abandoned``) → ``ARMED``.

Triggers only record intent and wake :meth:`KillSwitch.run`, which owns the
kill.  A trigger during a kill is coalesced into it; an explicit trigger
(signal, manual, cluster) while tripped starts a new sweep; an automatic one (heartbeat,
PnL) while tripped is logged and changes nothing — the switch is already
latched.  Every state change is a ``switch.state`` event.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from killswitch.clock import Clock, sleep_or_wake
from killswitch.damping import Damper
from killswitch.kill.events import KillEvents, NoEvents
from killswitch.kill.plan import KillPlan, SweepKey, plan_sweeps
from killswitch.kill.runner import KillResult, KillRunner
from killswitch.log import get_logger
from killswitch.store.file import KillIntent
from killswitch.store.state import KillRecord, StateStore

__all__ = ["EXPLICIT_SOURCES", "KillSwitch", "ResetOutcome", "State", "TriggerOutcome"]

# cluster: an operator pressed the firm-wide button (killswitch fleet trigger).
# sentinel: the desk's host went silent, or its sentinel killed the account (contract §1, §15).
EXPLICIT_SOURCES = frozenset({"signal", "manual", "cluster", "sentinel"})


class State(enum.StrEnum):
    ARMED = "ARMED"
    KILLING = "KILLING"
    TRIPPED = "TRIPPED"


class ResetOutcome(enum.StrEnum):
    REARMED = "re-armed"
    ALREADY_ARMED = "already armed"
    ABANDONED = "abandoned"  # --force ended a running kill, then re-armed
    REFUSED = "refused"  # a kill is running and force was not given


class TriggerOutcome(enum.StrEnum):
    STARTED = "started"
    COALESCED = "coalesced"
    LATCHED = "latched"  # automatic trigger while tripped: nothing new to do
    # The daemon is stopping: the kill is recorded at once and started; if the stop
    # cuts it short, the next start resumes it (a SIGUSR1 is never lost, contract §7).
    STOPPING = "stopping"


@dataclass(frozen=True)
class _Announcement:
    """A started kill's ``trigger.fired``, state change and record, held until its first
    requests have left (:meth:`KillSwitch.announce`)."""

    source: str
    reason: str
    outcome: TriggerOutcome
    previous: State
    started_at: float
    sweeps: list[SweepKey]
    detail: dict[str, Any] = field(default_factory=dict)


class KillSwitch:
    def __init__(
        self,
        runner: KillRunner,
        store: StateStore,
        clock: Clock,
        *,
        events: KillEvents | None = None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.clock = clock
        self.events: KillEvents = events or NoEvents()
        self._unannounced: dict[str, _Announcement] = {}
        self.state = State.ARMED
        self.last_kill: dict[str, Any] | None = None
        self.current_kill_id: str | None = None
        self._pending: KillPlan | None = None
        self._kill: asyncio.Task[KillResult] | None = None
        self._running_plan: KillPlan | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._resets: list[Callable[[], None]] = []
        self._damper = Damper()  # for automatic triggers while latched only
        self._log = get_logger()

    # ------------------------------------------------------------------ state

    def _set_state(self, state: State, why: str, *, announced: State | None = None) -> None:
        """Change state (or, with ``announced``, report a change already made) as an event."""
        if announced is None:
            if state is self.state:
                return
            previous, self.state = self.state, state
        else:
            previous = announced
        self._log.info("switch.state", state=state.value, previous=previous.value, why=why)
        self.events.state_changed(state.value, why)

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each reset (trigger sources re-arm their edges)."""
        self._resets.append(callback)

    def restore(
        self,
        tripped: bool,
        last: KillRecord | None,
        unfinished: KillRecord | None,
        lost: KillIntent | None = None,
    ) -> None:
        """Adopt what the state store remembers, before :meth:`run` starts.

        ``lost``: a kill decided (its intent file is there) whose record never reached
        the database: resumed by proof (contract §9) — every target swept and listed
        again, and the orders closed since it started counted as its own.
        """
        if last is not None and last.summary is not None:
            self.last_kill = {"kill_id": last.kill_id, **last.summary}
        if lost is not None and (unfinished is None or lost.started_at >= unfinished.started_at):
            sweeps = plan_sweeps(self.runner.config.targets)
            reason = "resumed by proof: the kill's record was lost"
            self.store.start_kill(lost.kill_id, lost.source, reason, lost.started_at, sweeps)
            self._pending = KillPlan(
                kill_id=lost.kill_id,
                source=lost.source,
                reason=reason,
                sweeps=sweeps,
                resumed=True,
                by_proof=True,
                started_at=lost.started_at,
                lost=set(sweeps),
            )
            self.current_kill_id = lost.kill_id
            self.state = State.KILLING
            self._idle.clear()
            self._wake.set()
        elif unfinished is not None:
            pending = [(s.exchange, s.symbol) for s in unfinished.sweeps if not s.acked]
            self._pending = KillPlan(
                kill_id=unfinished.kill_id,
                source=unfinished.source,
                reason=unfinished.reason,
                sweeps=pending,
                known_orders=dict(unfinished.orders),
                first_polled=dict(unfinished.first_polled),
                resumed=True,
                started_at=unfinished.started_at,
                order_units=dict(unfinished.order_units),
                leftovers=set(unfinished.leftovers),
                # An unacknowledged sweep's answer may have come and gone with the crash.
                lost={(s.exchange, s.symbol) for s in unfinished.sweeps if s.lost or not s.acked},
            )
            self.current_kill_id = unfinished.kill_id
            self.state = State.KILLING
            self._idle.clear()
            self._wake.set()
        elif tripped:
            self.state = State.TRIPPED

    # ------------------------------------------------------------------ triggers

    def trigger(self, source: str, reason: str, **detail: Any) -> TriggerOutcome:
        """Record a trigger; the kill itself runs in :meth:`run`.  Never blocks.

        ``detail`` goes on its ``trigger.fired`` event (the cluster's origin and trigger_id).
        """
        if self.state is State.KILLING:
            outcome = TriggerOutcome.COALESCED
        elif self.state is State.TRIPPED and source not in EXPLICIT_SOURCES:
            outcome = TriggerOutcome.LATCHED
        elif self._stopping:
            outcome = TriggerOutcome.STOPPING
        else:
            outcome = TriggerOutcome.STARTED
        if outcome not in (TriggerOutcome.STARTED, TriggerOutcome.STOPPING):
            # The button pressed again while a kill runs whose sweeps were answered:
            # something still trades, so the running kill sweeps again (contract v3 §1).
            explicit = outcome is TriggerOutcome.COALESCED and source in EXPLICIT_SOURCES
            if explicit and self.runner.resweep():
                detail = {**detail, "resweep": True}
            self._fired(source, reason, outcome, **detail)
            return outcome
        # The fast path: decide, latch (durably against a crash of the process: §9) and
        # wake the kill.  The events, the state change and the kill's record follow in
        # announce(), which the kill calls once its first cancel_all requests have left.
        kill_id = uuid.uuid4().hex[:16]
        sweeps = plan_sweeps(self.runner.config.targets)
        self.store.intend(kill_id, source)
        self._unannounced[kill_id] = _Announcement(
            source, reason, outcome, self.state, self.clock.time(), sweeps, detail
        )
        plan = KillPlan(kill_id=kill_id, source=source, reason=reason, sweeps=sweeps)
        if outcome is TriggerOutcome.STOPPING:
            # No time to wait for the first send: the record goes first, so that a
            # stop that cancels the kill leaves it for the next start to resume.
            self.announce(plan)
        self._pending = plan
        self.current_kill_id = kill_id
        self._idle.clear()
        self.state = State.KILLING
        self._wake.set()
        return outcome

    def announce(self, plan: KillPlan) -> None:
        """The kill's first requests have left: its ``trigger.fired``, the state change and
        its durable record (:class:`~killswitch.kill.events.Announcer`)."""
        held = self._unannounced.pop(plan.kill_id, None)
        if held is None:
            return  # resumed, or announced already
        self._fired(held.source, held.reason, held.outcome, **held.detail)
        why = f"{held.source}: {held.reason}"
        self._set_state(State.KILLING, why, announced=held.previous)
        self.store.start_kill(plan.kill_id, held.source, held.reason, held.started_at, held.sweeps)

    def _fired(self, source: str, reason: str, outcome: TriggerOutcome, **detail: Any) -> None:
        if outcome is TriggerOutcome.LATCHED:  # changes nothing: a flapping source is damped
            self._damper.warning(
                self._log,
                "trigger.fired",
                key=source,
                source=source,
                reason=reason,
                coalesced=False,
                outcome=outcome.value,
                **detail,
            )
            return
        self._log.warning(
            "trigger.fired",
            source=source,
            reason=reason,
            coalesced=outcome is TriggerOutcome.COALESCED,
            outcome=outcome.value,
            **detail,
        )

    def reset(
        self, *, force: bool = False, why: str = "reset --force", **detail: Any
    ) -> ResetOutcome:
        """Re-arm a tripped switch.  While a kill runs: refused, unless ``force``, which
        ends the kill (``kill.abandoned``, its record closed) and re-arms.  ``detail``
        (who reset it and why, contract §13) goes on ``switch.reset``."""
        if self.state is State.ARMED:
            return ResetOutcome.ALREADY_ARMED
        outcome = ResetOutcome.REARMED
        if self.state is State.KILLING:
            if not force:
                return ResetOutcome.REFUSED
            self._abandon(why)
            outcome = ResetOutcome.ABANDONED
        self.store.set_latch(False)
        self._set_state(State.ARMED, "reset" if outcome is ResetOutcome.REARMED else why)
        self._log.warning("switch.reset", force=force, **detail)
        for callback in self._resets:
            callback()
        return outcome

    def _abandon(self, why: str) -> None:
        """End the running (or pending) kill now: cancelled, logged, its record closed."""
        plan = self._running_plan or self._pending
        self._pending = None
        stuck = self.runner.stuck_info() if self._kill is not None else None
        current = self.runner.current
        confirmer = current.confirmer if self._kill is not None and current else None
        progress = None if confirmer is None else confirmer.snapshot()
        if self._kill is not None:
            self._kill.cancel(f"abandoned: {why}")
        kill_id = plan.kill_id if plan is not None else self.current_kill_id
        summary: dict[str, Any] = {
            "source": plan.source if plan is not None else None,
            "reason": plan.reason if plan is not None else None,
            "abandoned": True,
            "why": why,
            "stuck": None if stuck is None else stuck.why,
        }
        if progress is not None:
            summary.update(orders=len(progress.statuses), pending=len(progress.pending))
            summary.update(progress.counts())
        self._log.warning("kill.abandoned", **{"kill_id": kill_id, **summary})
        if kill_id is not None:
            self.store.complete_kill(kill_id, self.clock.time(), summary)
        self.last_kill = {"kill_id": kill_id, **summary}
        self.current_kill_id = None
        self._idle.set()

    # ------------------------------------------------------------------ the owner loop

    async def run(self) -> None:
        """Run kills as they are requested, until cancelled.  A completed kill's
        classification (:mod:`killswitch.kill.classify`) goes on beside the next one."""
        async with asyncio.TaskGroup() as background:
            while True:
                await self._wake.wait()
                self._wake.clear()
                plan, self._pending = self._pending, None
                if plan is not None:
                    await self._run_kill(plan, background)

    async def _run_kill(self, plan: KillPlan, background: asyncio.TaskGroup) -> None:
        self._running_plan = plan
        kill = asyncio.create_task(
            self.runner.run(plan, self, background=background), name=f"kill-{plan.kill_id}"
        )
        self._kill = kill
        try:
            await asyncio.wait({kill})
        except asyncio.CancelledError:
            kill.cancel()
            raise
        finally:
            self._kill, self._running_plan = None, None
        if kill.cancelled():
            return  # abandoned by a forced reset: already logged and closed
        result = kill.result()  # a crash of the kill is the daemon's crash
        self.last_kill = {"kill_id": plan.kill_id, **result.summary}
        self.current_kill_id = None
        self._set_state(State.TRIPPED, f"kill {plan.kill_id} completed")
        self._idle.set()
        background.create_task(self._classified(result), name=f"classified-{plan.kill_id}")

    async def _classified(self, result: KillResult) -> None:
        final = await result.classified
        if self.last_kill is not None and self.last_kill.get("kill_id") == final["kill_id"]:
            self.last_kill = dict(final)

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` s for a running kill.  True if idle.

        From here on a trigger is recorded at once (:attr:`TriggerOutcome.STOPPING`).
        """
        self._stopping = True
        if self._idle.is_set():
            return True
        return await sleep_or_wake(self.clock, grace, self._idle)

    @property
    def kill_source(self) -> str | None:
        """The trigger source of the kill that runs or is about to (for metrics)."""
        plan = self._running_plan or self._pending
        return None if plan is None else plan.source

    def progress(self) -> tuple[int, int] | None:
        """(orders known terminal, orders) of the running kill; None when none runs."""
        if self.state is not State.KILLING:
            return None
        return self.runner.progress()

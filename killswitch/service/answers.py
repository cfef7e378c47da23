"""The control API's answers (contract §6): what each endpoint returns.

:class:`ControlAnswers` is handed the parts it reads (the switch, the runner,
the triggers, the store, the limiters, the exchange, ...) and answers
``heartbeat``, ``trigger``, ``reset``, ``status``, ``metrics`` and
``flatten``; :class:`~killswitch.service.control.ControlServer` speaks HTTP
and calls it.  The parts are built and connected in
:mod:`killswitch.service.wiring`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from killswitch import __version__
from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.kill.guard import Guard
from killswitch.kill.runner import KillRunner
from killswitch.kill.switch import KillSwitch, ResetOutcome, State
from killswitch.logsink import status as log_status
from killswitch.service.access import Peer
from killswitch.service.approvals import ResetApprovals
from killswitch.service.halt import Halt
from killswitch.service.metrics import Metrics
from killswitch.service.positions import PositionsService
from killswitch.service.telling import Telling
from killswitch.store.state import StateStore
from killswitch.triggers.heartbeat import DeadManSwitch
from killswitch.triggers.pnl import PnlMonitor

if TYPE_CHECKING:
    from killswitch.cluster.connection import Cluster
    from killswitch.cluster.sentinel import Sentinel

__all__ = ["ControlAnswers", "triggers_enabled"]


def triggers_enabled(config: Config) -> dict[str, bool]:
    """Which triggers the config turns on (one definition: firing and status read it)."""
    t = config.triggers
    return {"signal": t.signal.enabled, "heartbeat": t.heartbeat.enabled, "pnl": t.pnl.enabled}


class ControlAnswers:
    """The answers of the control API, read from the parts they are handed."""

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        switch: KillSwitch,
        runner: KillRunner,
        deadman: DeadManSwitch,
        pnl: PnlMonitor,
        store: StateStore,
        limiters: Mapping[str, SlidingWindowLimiter],
        exchange: ExchangeClient,
        guard: Guard | None,
        positions: PositionsService,
        halt: Halt,
        approvals: ResetApprovals,
        telling: Telling,
        prom: Metrics,
        clock: Clock,
        started: float,
        cluster: Cluster | None = None,
        sentinel: Sentinel | None = None,
    ) -> None:
        self._config = config  # read at each answer: a reload replaces it
        self.switch = switch
        self.runner = runner
        self.deadman = deadman
        self.pnl = pnl
        self.store = store
        self.limiters = limiters
        self.exchange = exchange
        self.guard = guard
        self.positions = positions
        self.halt = halt
        self.approvals = approvals
        self.telling = telling
        self.prom = prom
        self.clock = clock
        self.started = started
        self.cluster = cluster
        self.sentinel = sentinel

    def heartbeat(self) -> dict[str, Any]:
        """A heartbeat (counted even with the trigger off); the state, so a trading
        process can stop itself when it reads KILLING or TRIPPED."""
        self.deadman.beat()
        return {
            "state": self.switch.state.value,
            "kill_id": self.switch.current_kill_id,
            "heartbeat_trigger": self._config().triggers.heartbeat.enabled,
        }

    def trigger(self, reason: str, peer: Peer | None = None) -> dict[str, Any]:
        detail = {} if peer is None else {"peer": peer.as_dict()}
        outcome = self.switch.trigger("manual", reason, **detail)
        self.prom.triggers.labels("manual", outcome.value).inc()
        return {"outcome": outcome.value, "kill_id": self.switch.current_kill_id}

    def reset(
        self, force: bool = False, peer: Peer | None = None, reason: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """200 reset (or already armed), 409 refused while a kill runs, 202 one approval
        of the two a four-eyes reset needs (contract §13)."""
        refusal, detail = self.approvals.decide(
            self.switch.state is State.KILLING and not force,
            self.switch.state is State.ARMED,
            None if peer is None else peer.as_dict(),
            reason,
        )
        if refusal is not None:  # 409 while a kill runs, 202 one approval of two
            return refusal[0], {**refusal[1], **self.status()}
        outcome = self.switch.reset(force=force, **detail)
        ok = outcome is not ResetOutcome.REFUSED
        if ok:
            self.store.acknowledge()  # the operator has seen a store problem it recovered from
        return 200 if ok else 409, {"reset": outcome.value, **self.status()}

    async def flatten(self, symbol: str | None) -> tuple[int, dict[str, Any]]:
        """``POST /flatten`` (contract §12): close what the last kill left, while TRIPPED."""
        state = self.switch.state
        if state is not State.TRIPPED:
            why = f"refused while {state.value}: flatten closes what a kill left, once TRIPPED"
            return 409, {"error": why, "state": state.value}
        kill_id = (self.switch.last_kill or {}).get("kill_id") or self.switch.current_kill_id
        return await self.positions.flatten(kill_id or "manual", symbol)

    def _trigger_states(self) -> dict[str, str]:
        """Each trigger's own state, in words (``killswitch status`` shows them)."""
        enabled = triggers_enabled(self._config())
        return {
            "signal": "watching" if enabled["signal"] else "off",
            "heartbeat": self.deadman.state(),
            "pnl": self.pnl.state() if enabled["pnl"] else "off",
        }

    def status(self) -> dict[str, Any]:
        hb_deadline = self.deadman.deadline
        return {
            "state": self.switch.state.value,
            "kill_id": self.switch.current_kill_id,
            # confirmed/total, outcomes, budgets and the estimate (killswitch/kill/progress.py)
            "progress": self.runner.progress_report()
            if self.switch.state is State.KILLING
            else None,
            "heartbeat_age": self.deadman.age(),
            "heartbeat_armed": hb_deadline is not None and self.deadman.enabled,
            "heartbeat_timeout": self.deadman.timeout,
            "pnl": self.pnl.value,
            "pnl_age": self.pnl.age(),
            "pnl_threshold": self.pnl.threshold,
            "pnl_before_reset": self.pnl.read_before_reset(),  # it does not count after a reset
            "last_kill": self.switch.last_kill,
            "store": self.store.health(),
            "stuck": stuck.as_dict()
            if (stuck := self.runner.stuck_info()) and self.switch.state is State.KILLING
            else None,
            "rate_limit": {
                name: {
                    "available": lim.available(),
                    "limit": lim.requests,
                    "next_free_in": round(lim.next_free_in(), 3),
                }
                for name, lim in self.limiters.items()
            },
            "exchange": self.exchange.health(),
            "guard": None if self.guard is None else self.guard.status(),
            "positions": self.positions.exposure,  # contract §12: what the last kill left
            "triggers": triggers_enabled(self._config()),
            "halt": self.halt.status(),
            "reset_pending": self.approvals.pending(),
            "trigger_states": self._trigger_states(),
            **({} if self.cluster is None else {"cluster": self.cluster.status()}),
            **({} if self.sentinel is None else {"sentinel": self.sentinel.status()}),
            "log": log_status(),
            **self.telling.status(),
            "uptime": round(self.clock.monotonic() - self.started, 3),
            "pid": os.getpid(),
            "version": __version__,
        }

    def metrics(self) -> bytes:
        return self.prom.render()

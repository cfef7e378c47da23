"""The daemon's side of the cluster and the sentinel: what they ask of this daemon.

:class:`ClusterHost` answers :class:`~killswitch.cluster.connection.Cluster`
(``cluster_trigger``, ``cancel_sent``, ``status``, ``switch_state``) and
:class:`~killswitch.cluster.sentinel.Sentinel` (``sentinel_trigger``,
``account_killed``), from the switch and the metrics it is handed.  The
engine's ``cancel_all.sent`` reaches it through :meth:`ClusterHost.sent`, which
resolves the cluster's waiting acks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from killswitch.kill.switch import KillSwitch, State, TriggerOutcome
from killswitch.service.metrics import Metrics

__all__ = ["ClusterHost"]


class ClusterHost:
    """What the cluster and the sentinel need from the daemon, from the parts handed."""

    def __init__(
        self, switch: KillSwitch, prom: Metrics, status: Callable[[], dict[str, Any]]
    ) -> None:
        self.switch = switch
        self.prom = prom
        self._status = status  # the control API's status (service/answers.py)
        self._sent_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._sent_kills: deque[str] = deque(maxlen=16)

    def sent(self, kill_id: str | None) -> None:
        """A ``cancel_all`` was written (the engine logged ``cancel_all.sent``)."""
        kill_id = kill_id or self.switch.current_kill_id
        if kill_id is None:
            return
        if kill_id not in self._sent_kills:
            self._sent_kills.append(kill_id)
        for waiter in self._sent_waiters.pop(kill_id, []):
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ the cluster

    def cancel_sent(self, kill_id: str) -> asyncio.Future[None]:
        """Resolves once a ``cancel_all`` of kill ``kill_id`` has left (the cluster's ack)."""
        for known, waiters in list(self._sent_waiters.items()):  # drop the abandoned ones
            if all(w.done() for w in waiters):
                del self._sent_waiters[known]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if kill_id in self._sent_kills:
            waiter.set_result(None)
        else:
            self._sent_waiters.setdefault(kill_id, []).append(waiter)
        return waiter

    def cluster_trigger(self, reason: str, **detail: Any) -> tuple[TriggerOutcome, str | None]:
        """A broadcast trigger from the cluster (source ``cluster``: explicit, like a signal)."""
        outcome = self.switch.trigger("cluster", reason, **detail)
        self.prom.triggers.labels("cluster", outcome.value).inc()
        return outcome, self.switch.current_kill_id

    def status(self) -> dict[str, Any]:
        """The daemon's status, as ``killswitch status`` reads it (cluster status requests)."""
        return self._status()

    # ------------------------------------------------------------------ sentinel (§15)

    def switch_state(self) -> str:
        """The switch's state, for this desk's liveness messages."""
        return self.switch.state.value

    def sentinel_trigger(self, reason: str, **detail: Any) -> TriggerOutcome:
        """Source ``sentinel``: this daemon's sentinel found its desk silent, or (on a desk)
        the desk's sentinel says it killed the account while the desk was away."""
        outcome = self.switch.trigger("sentinel", reason, **detail)
        self.prom.triggers.labels("sentinel", outcome.value).inc()
        return outcome

    def account_killed(self) -> tuple[str, str | None, str] | None:
        """(kill_id, source, state) while this daemon holds a kill; the sentinel's verdict."""
        if self.switch.state is State.ARMED:
            return None
        kill_id = self.switch.current_kill_id or (self.switch.last_kill or {}).get("kill_id")
        if kill_id is None:  # tripped without a kill (a store that failed closed): no verdict
            return None
        source = self.switch.kill_source or (self.switch.last_kill or {}).get("source")
        return kill_id, source, self.switch.state.value

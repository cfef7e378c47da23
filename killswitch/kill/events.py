"""What the kill engine announces, and who listens (the service implements it).

The engine (:mod:`killswitch.kill`) never calls up into the service: it tells
one :class:`KillEvents` what happened, and the daemon's wiring turns that into
metrics, systemd's ``STATUS=``, the cluster's acknowledgements and the guard's
wake-up.  The structured log events themselves (``kill.started``,
``cancel_all.accepted``, ...) are the engine's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from killswitch.kill.plan import KillPlan

__all__ = ["Announcer", "KillEvents", "NoEvents"]


class KillEvents(Protocol):
    def state_changed(self, state: str, why: str) -> None:
        """The switch changed state (``ARMED``, ``KILLING``, ``TRIPPED``)."""
        ...

    def cancel_all_sent(self, kill_id: str | None, exchange: str, symbol: str | None) -> None:
        """A ``cancel_all`` of kill ``kill_id`` was written to the connection."""
        ...

    def request_done(self, endpoint: str, outcome: str) -> None:
        """A request the engine made ended: ``accepted`` or the error's kind."""
        ...

    def status_gate_waited(self, seconds: float) -> None:
        """Status polls wait ``seconds`` for the order-status budget (once per stretch)."""
        ...

    def kill_completed(self, kill_id: str, summary: Mapping[str, Any]) -> None:
        """The kill is proven (``kill.completed``); the switch is about to be ``TRIPPED``."""
        ...

    def kill_classified(self, kill_id: str, summary: Mapping[str, Any]) -> None:
        """The kill's outcomes are all learned (``kill.classified``: the final counts)."""
        ...

    def guard_swept(self, orders: int) -> None:
        """The tripped guard found ``orders`` open and swept them."""
        ...


class NoEvents:
    """Nobody listens (tests, tools)."""

    def state_changed(self, state: str, why: str) -> None:
        pass

    def cancel_all_sent(self, kill_id: str | None, exchange: str, symbol: str | None) -> None:
        pass

    def request_done(self, endpoint: str, outcome: str) -> None:
        pass

    def status_gate_waited(self, seconds: float) -> None:
        pass

    def kill_completed(self, kill_id: str, summary: Mapping[str, Any]) -> None:
        pass

    def kill_classified(self, kill_id: str, summary: Mapping[str, Any]) -> None:
        pass

    def guard_swept(self, orders: int) -> None:
        pass


class Announcer(Protocol):
    """Who decided the kill, told once its first requests have left (the switch: its
    ``trigger.fired``, the state change and the kill's durable record)."""

    def announce(self, plan: KillPlan) -> None: ...

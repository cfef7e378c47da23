"""Four-eyes reset (contract §13, ``reset_approvals = 2``).

The first ``reset`` by a holder of the right is recorded (``reset.pending``)
and answered 202; a ``reset`` by a different user (another uid) within
``control.approval_window`` seconds completes it, and ``switch.reset`` then
carries both peers.  The same user again changes nothing.  A pending approval
lapses after the window (``reset.lapsed``) and a new kill cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from killswitch.clock import Clock
from killswitch.log import get_logger

__all__ = ["Approval", "ResetApprovals"]


@dataclass(frozen=True)
class Approval:
    """One approval given: who (``peer`` as in events), when (monotonic), and why."""

    peer: dict[str, Any]
    at: float
    reason: str | None


class ResetApprovals:
    def __init__(
        self, clock: Clock, needed: Callable[[], int], window: Callable[[], float]
    ) -> None:
        self.clock = clock
        self.needed = needed
        self.window = window
        self._first: Approval | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._log = get_logger()

    def decide(
        self, running: bool, armed: bool, peer: dict[str, Any] | None, reason: str | None
    ) -> tuple[tuple[int, dict[str, Any]] | None, dict[str, Any]]:
        """A reset asked for: (the HTTP status and answer when it does not happen now, the
        ``switch.reset`` fields when it does).  ``running``: a kill runs and the reset is
        not forced (409); ``armed``: nothing to approve."""
        if running:
            return (409, {"reset": "refused"}), {}
        detail: dict[str, Any] = {"reason": reason}
        if armed or peer is None:
            return None, detail
        approvals = self.approve(peer, reason)
        if approvals is None:
            return (202, {"pending": True, "approvals": 1, "needed": 2}), {}
        detail["peer"] = approvals[-1].peer
        if len(approvals) > 1:
            detail["peers"] = [a.peer for a in approvals]
            detail["reason"] = "; ".join(a.reason for a in approvals if a.reason) or None
        return None, detail

    def approve(self, peer: dict[str, Any], reason: str | None) -> list[Approval] | None:
        """The approvals that complete a reset now, or None while one more is needed."""
        now = self.clock.monotonic()
        mine = Approval(peer, now, reason)
        if self.needed() < 2:
            return [mine]
        self._lapse_if_due(now)
        first = self._first
        if first is None:
            self._first = mine
            self._log.warning(
                "reset.pending",
                peer=peer,
                reason=reason,
                approvals=1,
                needed=2,
                window=self.window(),
            )
            self._arm_timer()
            return None
        if first.peer["uid"] == peer["uid"]:
            return None  # the same user twice is still one pair of eyes
        self._clear()
        return [first, mine]

    def pending(self) -> dict[str, Any] | None:
        """The pending approval for ``GET /status`` (None when there is none)."""
        first = self._first
        if first is None:
            return None
        left = first.at + self.window() - self.clock.monotonic()
        return {"approvals": 1, "needed": 2, "by": first.peer, "lapses_in": round(left, 1)}

    def cancel(self, why: str) -> None:
        """A new kill: a pending approval no longer applies."""
        if self._first is not None:
            self._log.warning("reset.lapsed", peer=self._first.peer, why=why)
            self._clear()

    def _lapse_if_due(self, now: float) -> None:
        first = self._first
        if first is not None and now - first.at >= self.window():
            self._log.warning("reset.lapsed", peer=first.peer, why="approval window ended")
            self._clear()

    def _arm_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous test): approve() lapses it when asked
        self._timer = loop.call_later(self.window(), self._due)

    def _due(self) -> None:
        self._timer = None
        first = self._first
        if first is None:
            return
        now = self.clock.monotonic()
        if now - first.at >= self.window():
            self._lapse_if_due(now)
        else:  # an injected clock runs behind the loop's: check again when it says so
            self._timer = asyncio.get_running_loop().call_later(
                first.at + self.window() - now, self._due
            )

    def _clear(self) -> None:
        self._first = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

"""Count-based fault injection: each injected fault answers ``count`` requests, then clears.

Kinds (see :meth:`killswitch.sim.server.SimExchange.inject`): ``500``/``502``/
``503``; ``429`` (``Retry-After: 1``) and ``429_bare`` (none); ``401``; ``422``
(its ``message`` names a field); ``timeout`` (held ``delay`` or
``slow_seconds``, then a read is answered, a ``cancel_all`` gets 504 having
cancelled nothing); ``reset``; ``malformed`` (not JSON); ``shape`` (JSON of
the wrong shape); ``slow`` (held ``delay``, then served); ``lost_ack_502``
(served, the cancel happens, the answer is replaced by a 502) and
``lost_ack_timeout`` (served, then held like ``timeout`` and answered 504).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from killswitch.sim.config import FAULT_ENDPOINTS, FAULT_KINDS, FaultKind

__all__ = ["Fault", "FaultQueue"]


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    remaining: int
    delay: float | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"kind": self.kind, "remaining": self.remaining}
        answer["delay"] = self.delay
        if self.message is not None:
            answer["message"] = self.message
        return answer


class FaultQueue:
    """Pending faults per endpoint, served in the order they were injected."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {e: deque() for e in FAULT_ENDPOINTS}

    def inject(
        self,
        endpoint: str,
        kind: str,
        count: int = 1,
        delay: float | None = None,
        message: str | None = None,
    ) -> Fault:
        if endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint: expected one of {list(FAULT_ENDPOINTS)}, got {endpoint!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind: expected one of {list(FAULT_KINDS)}, got {kind!r}")
        if count < 1:
            raise ValueError("count: expected at least 1")
        if delay is not None and delay < 0:
            raise ValueError("delay: expected seconds >= 0")
        if kind == "slow" and delay is None:
            raise ValueError("delay: the slow fault needs a delay in seconds")
        fault = Fault(kind, count, delay, message)
        self._queues[endpoint].append(fault)
        return fault

    def take(self, endpoint: str) -> Fault | None:
        """The fault that answers the next request to ``endpoint``, if any."""
        queue = self._queues[endpoint]
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        return {e: [f.to_json() for f in q] for e, q in self._queues.items()}

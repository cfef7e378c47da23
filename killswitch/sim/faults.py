"""Count-based fault injection: each injected fault answers ``count`` requests, then clears."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from killswitch.sim.config import ENDPOINTS, FAULT_KINDS, Endpoint, FaultKind

__all__ = ["Fault", "FaultQueue"]


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    remaining: int
    delay: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "remaining": self.remaining, "delay": self.delay}


class FaultQueue:
    """Pending faults per endpoint, served in the order they were injected."""

    def __init__(self) -> None:
        self._queues: dict[Endpoint, deque[Fault]] = {e: deque() for e in ENDPOINTS}

    def inject(self, endpoint: str, kind: str, count: int = 1, delay: float | None = None) -> Fault:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint: expected one of {list(ENDPOINTS)}, got {endpoint!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind: expected one of {list(FAULT_KINDS)}, got {kind!r}")
        if count < 1:
            raise ValueError("count: expected at least 1")
        if delay is not None and delay < 0:
            raise ValueError("delay: expected seconds >= 0")
        if kind == "slow" and delay is None:
            raise ValueError("delay: the slow fault needs a delay in seconds")
        fault = Fault(kind, count, delay)
        self._queues[endpoint].append(fault)
        return fault

    def take(self, endpoint: Endpoint) -> Fault | None:
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

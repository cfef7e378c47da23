"""A strict exchange's sliding-window counter: the referee of contract §3."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Admission", "StrictWindow"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one arrival: ``retry_after`` (whole seconds) when refused."""

    violation: bool
    in_window: int
    retry_after: int = 0


class StrictWindow:
    """``requests`` per ``per_seconds``, counted at arrival, every arrival counts.

    An arrival is a violation when ``requests`` arrivals already happened in
    the last ``per_seconds`` (an arrival exactly ``per_seconds`` ago has left
    the window).  Refused arrivals count too, as on a real strict exchange.
    """

    def __init__(self, requests: int, per_seconds: float) -> None:
        self.requests = requests
        self.per_seconds = per_seconds
        self._arrivals: deque[float] = deque()
        self.violations = 0
        self.peak = 0

    def arrive(self, now: float) -> Admission:
        while self._arrivals and self._arrivals[0] <= now - self.per_seconds:
            self._arrivals.popleft()
        violation = len(self._arrivals) >= self.requests
        self._arrivals.append(now)
        self.peak = max(self.peak, len(self._arrivals))
        if not violation:
            return Admission(False, len(self._arrivals))
        self.violations += 1
        # The next arrival is admitted once only requests - 1 remain in the window.
        frees_at = self._arrivals[-self.requests] + self.per_seconds
        return Admission(True, len(self._arrivals), max(1, math.ceil(frees_at - now)))

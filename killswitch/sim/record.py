"""What the simulated exchange received: one entry per request, in arrival order."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ReceivedRequest"]


@dataclass(slots=True)
class ReceivedRequest:
    """One request as the exchange saw it.

    ``endpoint`` is ``cancel_all``, ``order_status``, ``open_orders``,
    ``closed_orders``, ``time`` or ``other``; ``path`` is
    the raw path with its query; ``monotonic`` and ``wall`` are the arrival
    times (``time.monotonic()`` and ``time.time()`` by default).  ``status``
    is the answer (``None`` until answered, and for a reset connection).
    ``fault`` names the injected fault that answered it; ``violation`` is set
    when it broke the rate limit; ``in_window`` counts the arrivals in its
    window, itself included.
    """

    endpoint: str
    method: str
    path: str
    monotonic: float
    wall: float
    status: int | None = None
    fault: str | None = None
    violation: bool = False
    in_window: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

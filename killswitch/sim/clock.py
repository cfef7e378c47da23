"""The venue's clock: the real wall clock plus an offset an admin can move."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["VenueClock"]


class VenueClock:
    """``now_ms()`` is ``wall()`` in integer milliseconds plus ``offset_ms``.

    It stamps ``created_at``/``updated_at``, answers the server-time call and
    is what a request's epoch is checked against.
    """

    def __init__(self, wall: Callable[[], float], offset_ms: int = 0) -> None:
        self._wall = wall
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return int(self._wall() * 1000) + self.offset_ms

"""One retry policy by error kind, for every request the kill engine repeats (contract §2).

What a failed request says decides how soon it is tried again:

- 429 (:class:`~killswitch.exchange.errors.RateLimited`): at once — the client has
  already deferred that endpoint's limiter, so the next attempt waits there;
- refused as sent (a 4xx, 401 after the client's own re-sync): slowly,
  :data:`REJECT_FIRST` s doubling to :data:`REJECT_MAX` s, never given up (the
  venue's side may change: a symbol suspended, then resumed);
- anything else (5xx, timeout, a lost or refused connection, an unreadable
  answer): capped exponential backoff with equal jitter.

Whether the request may have had its effect is the error's own
``outcome_unknown`` flag, set by the client, which knows whether any byte of
the request can have left: a refused connection sent nothing (known: nothing
happened), a 5xx or a timeout may have cancelled (unknown).  It is never
re-derived from the error's class.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from killswitch.exchange.errors import ExchangeError, RateLimited, RejectedRequest

__all__ = ["REJECT_FIRST", "REJECT_MAX", "Failure", "Retry", "is_rejected", "venue_message"]

REJECT_FIRST: Final = 5.0
"""Seconds before the first retry of a request the venue refused as sent (4xx)."""
REJECT_MAX: Final = 300.0
"""The slowest cadence of those retries: never given up, never spinning."""


def is_rejected(exc: ExchangeError) -> bool:
    """The venue refused the request as sent (4xx other than 429): retrying at once won't help."""
    return isinstance(exc, RejectedRequest)


def venue_message(exc: ExchangeError) -> str | None:
    """The venue's ``{"message"}`` when it sent one."""
    return exc.message


@dataclass(frozen=True)
class Failure:
    """One failed attempt as the policy reads it."""

    error: ExchangeError
    attempt: int  # 1 for the first attempt
    delay: float  # seconds before the next attempt
    rejected: int  # attempts in a row the venue refused as sent (0: not refused)

    @property
    def outcome_unknown(self) -> bool:
        """The request may have had its effect (the error's own flag)."""
        return self.error.outcome_unknown


class Retry:
    """The attempts of one request that is repeated until it succeeds.

    ``failed(exc)`` counts an attempt and answers how long to wait; a success
    needs no call (a new request gets a new :class:`Retry`).
    """

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng
        self.attempt = 0
        self._rejected = 0
        self._transient = 0

    def failed(self, exc: ExchangeError) -> Failure:
        self.attempt += 1
        if isinstance(exc, RateLimited):
            return Failure(exc, self.attempt, 0.0, 0)
        if is_rejected(exc):
            self._rejected += 1
            delay = min(REJECT_FIRST * 2 ** (self._rejected - 1), REJECT_MAX)
            return Failure(exc, self.attempt, delay, self._rejected)
        self._rejected = 0
        self._transient += 1
        cap = min(self._cap, self._base * 2 ** (self._transient - 1))
        delay = self._rng.uniform(cap / 2, cap)  # "equal jitter": never 0, never in lockstep
        return Failure(exc, self.attempt, delay, 0)

"""A running kill as an operator watches it: how far it is, and how long the rest should take.

The kill engine logs ``kill.progress`` every :data:`PROGRESS_EVERY` seconds
while a kill runs; ``GET /status`` ("progress"), ``killswitch status --watch``
and systemd's ``STATUS=`` line show the same report.

The estimate (``eta_s``) is the time the budgets need for the requests
still to come: a ``cancel_all`` per sweep not yet acknowledged, and for the
orders not yet resolved either one status poll each (``confirm.use_listings =
false``) or, with the flat proof, one open listing per target not yet flat and
a closed-orders page per 49 orders.  Each endpoint's sliding window is played
forward from its real send log (:meth:`SlidingWindowLimiter.time_for`); the
slowest endpoint sets the time.  It is the budgets' pace only: what they
cannot see (an order the venue keeps in ``CANCELLATION_RAISED``, status polls
the confirmer adds when pages do not fit the budget) makes a kill take longer.
A stuck kill (a ``cancel_all`` the venue keeps rejecting) has no estimate
(``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

__all__ = ["PROGRESS_EVERY", "Budget", "estimate", "format_eta", "report"]

PROGRESS_EVERY: Final = 5.0
"""Seconds between two ``kill.progress`` events while a kill runs."""


class Budget(Protocol):
    """An endpoint's limiter as the estimate reads it (:class:`SlidingWindowLimiter`)."""

    requests: int
    per_seconds: float

    def available(self) -> int: ...

    def time_for(self, n: int) -> float: ...


def estimate(remaining: Mapping[str, int], budgets: Mapping[str, Budget]) -> float:
    """Seconds until the ``remaining`` requests of every endpoint could have left."""
    return max(
        (budgets[name].time_for(n) for name, n in remaining.items() if n > 0 and name in budgets),
        default=0.0,
    )


def report(
    *,
    kill_id: str | None,
    elapsed: float,
    resolved: int,
    total: int,
    outcomes: Mapping[str, int],
    sweeps_left: int,
    remaining: Mapping[str, int],
    budgets: Mapping[str, Budget],
    stuck: bool,
) -> dict[str, Any]:
    """The progress report of a running kill (``GET /status`` "progress"); ``remaining``
    is the requests still needed, by endpoint."""
    return {
        "kill_id": kill_id,
        "elapsed_s": round(elapsed, 3),
        "confirmed": resolved,
        "total": total,
        "outcomes": dict(outcomes),
        "sweeps_left": sweeps_left,
        "requests_left": {name: n for name, n in remaining.items() if n > 0},
        "budgets": {
            name: {
                "available": budget.available(),
                "limit": budget.requests,
                "per_seconds": budget.per_seconds,
            }
            for name, budget in budgets.items()
        },
        "eta_s": None if stuck else round(estimate(remaining, budgets), 1),
    }


def format_eta(seconds: float | None) -> str:
    """``~40 s left``, ``~3.5 min left``; ``no estimate`` (stuck) when None; under a second,
    the budgets hold nothing back: the rest is the venue's time."""
    if seconds is None:
        return "no estimate"
    if seconds < 1:
        return "waiting on the venue"
    if seconds < 120:
        return f"~{seconds:.0f} s left"
    return f"~{seconds / 60:.1f} min left"

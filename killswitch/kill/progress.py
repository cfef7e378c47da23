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
(``None``).  So that a slow venue does not read as "~1 s left" for half a minute,
when no request still needed waits for a full window the estimate is the later
of the budgets' time and the time the rest takes at the pace so far (orders
terminal per second since the trigger); ``eta_basis`` says which one set it
(``budgets``, ``pace``), or ``venue`` while no order is terminal yet: then it is
the budgets' time at least, and the venue's time after that is not known yet.

``confirmed`` counts every order known terminal; ``outcomes`` adds up to it:
orders a complete listing no longer shows are terminal with their outcome still
to be read, ``unclassified`` (contract §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

__all__ = ["PROGRESS_EVERY", "Budget", "at_pace", "estimate", "format_eta", "report"]

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


def at_pace(elapsed: float, done: int, total: int) -> float | None:
    """Seconds the rest takes at the pace so far; None before the first order is done."""
    if done <= 0:
        return None
    return max(0, total - done) * elapsed / done


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
    counts = dict(outcomes)
    unclassified = resolved - sum(counts.values())
    if unclassified > 0:  # terminal (a listing no longer shows them), outcome not read yet
        counts["unclassified"] = unclassified
    budget_eta = estimate(remaining, budgets)
    pace_eta = at_pace(elapsed, resolved, total)
    held_back = any(  # a request still needed finds its window full: the budgets set the pace
        budgets[name].available() == 0 for name, n in remaining.items() if n > 0 and name in budgets
    )
    if pace_eta is None:  # nothing terminal yet: the budgets' time, then the venue's (unknown)
        eta, basis = budget_eta, "venue"
    elif held_back or pace_eta <= budget_eta:
        eta, basis = budget_eta, "budgets"
    else:
        eta, basis = pace_eta, "pace"
    return {
        "kill_id": kill_id,
        "elapsed_s": round(elapsed, 3),
        "confirmed": resolved,
        "total": total,
        "outcomes": counts,
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
        "eta_s": None if stuck else round(eta, 1),
        "eta_basis": None if stuck else basis,
    }


def format_eta(seconds: float | None, basis: str | None = None) -> str:
    """``~40 s left``, ``~3.5 min left`` (``at the pace so far`` when the pace set it;
    ``at least`` before any order is terminal, ``basis`` ``venue``); ``no estimate``
    (stuck) when None; under a second the budgets hold nothing back: the rest is the
    venue's time."""
    if seconds is None:
        return "no estimate"
    if seconds < 1:
        return "waiting on the venue"
    text = f"~{seconds:.0f} s left" if seconds < 120 else f"~{seconds / 60:.1f} min left"
    if basis == "venue":
        return f"at least {text}: no order terminal yet"
    return text + (" at the pace so far" if basis == "pace" else "")

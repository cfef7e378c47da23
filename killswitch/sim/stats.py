"""``GET /_sim/stats``: what the exchange saw, per endpoint, and its own truth."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from killswitch.sim.config import ENDPOINTS

if TYPE_CHECKING:
    from killswitch.sim.server import SimExchange

__all__ = ["stats_of"]

_COUNTED = (*ENDPOINTS, "time", "other")


def stats_of(sim: SimExchange) -> dict[str, Any]:
    """The stats document.

    - ``requests``/``answers``: arrivals and answer codes per endpoint (the
      four limited ones, ``time`` and ``other``).
    - ``violations``/``peak_in_window``/``limits``: the four limited endpoints.
    - ``orders``: counts by status now; ``open``: ids still working
      (``CANCELLATION_RAISED`` included) and ``flat`` when there are none;
      ``cancelled``/``executed``/``partially_executed``/``expired``: counts
      of each final status.
    - ``clock``, ``behaviour``, ``trader``, ``rejected``, ``faults_pending``,
      ``cancel_all_arrivals``: the admin switches as they stand.
    - ``position_truth``: positions, fills, ``flips``, ``overcloses``,
      ``orders_while_open`` and every accepted ``placed`` order body.
    """
    counted = Counter(r.endpoint for r in sim.requests)
    answers: dict[str, Counter[str]] = {e: Counter() for e in _COUNTED}
    for r in sim.requests:
        answers[r.endpoint][str(r.status) if r.status is not None else "none"] += 1
    return {
        "requests": {e: counted[e] for e in _COUNTED},
        "violations": {e: w.violations for e, w in sim.windows.items()},
        "peak_in_window": {e: w.peak for e, w in sim.windows.items()},
        "limits": {
            e: {"requests": w.requests, "per_seconds": w.per_seconds}
            for e, w in sim.windows.items()
        },
        "answers": {e: dict(c) for e, c in answers.items()},
        "orders": sim.book.by_status(),
        **sim.book.truth(),
        "clock": {"offset_ms": sim.clock.offset_ms, "server_time": sim.clock.now_ms()},
        "behaviour": sim.behaviour.to_json(),
        "trader": sim.trader.to_json(),
        "rejected": {s: r.to_json() for s, r in sim.venue.rejections.items()},
        "cancel_all_arrivals": [
            {"wall": wall, "monotonic": mono} for wall, mono in sim.cancel_all_arrivals
        ],
        "faults_pending": sim.faults.pending(),
        "position_truth": _positions(sim),
    }


def _positions(sim: SimExchange) -> dict[str, Any]:
    """The positions now (fills settled) and the referee's counts (:mod:`.positions`)."""
    sim.book.settle()
    return {**sim.book.positions.truth(), "placed": list(sim.venue.placed)}

"""11. Positions after a kill, at the venue's default limits (issue 18, contract §12).

The sim holds one position on each of 10 symbols (LONG and SHORT alternately,
each with a stop-loss the kill cancels) and 2 open orders per symbol; every
endpoint runs at the venue's default limit on the sim and in the daemon's
config (positions and place order 20/60 s each), ``[flatten] enabled``.  One
kill, a fresh sim and daemon.  Measured from SIGUSR1 (wall clock) to the
daemon's ``kill.exposure`` (every symbol's positions read: 10 positions calls,
which a full window lets leave at once) and to the last ``flatten.done`` (every
position closed by one reduce-only MARKET order and read again: 10 more calls,
the window's 20).  Violations on all six endpoints as the sim counted them,
and its own truth: no flip, no double close, nothing left open.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bench.flat import VENUE_LIMITS
from bench.harness import Settings, event_time, progress, sim_and_daemon
from bench.report import Figure

__all__ = ["run"]

SYMBOLS = tuple(f"S{i:02d}USDT" for i in range(10))
ENDPOINTS = (
    "cancel_all",
    "order_status",
    "open_orders",
    "closed_orders",
    "positions",
    "place_order",
)
TARGET_READ = 5.0  # s: 10 symbols read well inside one window, not one a few seconds apart
TARGET_CLOSED = 10.0  # s


async def run(settings: Settings) -> list[Figure]:
    """Scenario ``positions``: trigger → 10 symbols read, trigger → all 10 closed."""
    daemon_cfg: dict[str, Any] = {
        "confirm": {"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}},
        "flat": {"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}},
        "guard": {"enabled": False},
        "positions": {"symbols": list(SYMBOLS)},
        "flatten": {"enabled": True},
    }
    sim_cfg: dict[str, Any] = {"cancel_delay": [0.05, 0.3], "seed": 18, **VENUE_LIMITS}
    book = {
        symbol: {
            "side": "LONG" if i % 2 == 0 else "SHORT",
            "size": str(i + 1),
            "entry_price": "100",
            "stops": 1,
        }
        for i, symbol in enumerate(SYMBOLS)
    }
    async with sim_and_daemon(settings, "positions", sim=sim_cfg, daemon=daemon_cfg) as (
        sim,
        daemon,
    ):
        await sim._call("POST", "/_sim/positions", {"positions": book})
        await sim.seed(dict.fromkeys(SYMBOLS, 2))
        t0 = time.time()
        os.kill(daemon.pid, signal.SIGUSR1)
        done = await daemon.completed(1, timeout=300.0, interval=0.05)
        exposure = daemon.log.named("kill.exposure")[0]
        closes = daemon.log.named("flatten.done")
        stats = await sim.stats()
    read_s = event_time(exposure) - t0
    closed_s = max(event_time(e) for e in closes) - t0 if closes else None
    truth = stats["position_truth"]
    violations = {e: stats["violations"].get(e, 0) for e in ENDPOINTS}
    requests = {e: stats["requests"].get(e, 0) for e in ENDPOINTS}
    safe = (
        truth["flips"] == 0
        and truth["overcloses"] == 0
        and truth["orders_while_open"] == 0
        and not truth["positions"]
        and len(closes) == len(SYMBOLS)
    )
    details = {
        "requests": requests,
        "violations": violations,
        "kill": {k: done.get(k) for k in ("positions_open", "exposure_read", "flattened")},
        "truth": {k: truth[k] for k in ("flips", "overcloses", "orders_while_open")},
        "positions_read": len(exposure["positions"]),
    }
    progress(
        f"positions: read {read_s:.2f} s, closed {closed_s} s, requests {requests}, "
        f"violations {sum(violations.values())}, safe {safe}"
    )
    return [
        Figure(
            settings.key("positions.10.read"),
            settings.label("11. 10 symbols: trigger → kill.exposure (positions read)"),
            "s",
            [read_s],
            target=f"≤ {TARGET_READ:g} s",
            met=read_s <= TARGET_READ,
            details=details,
        ),
        Figure(
            settings.key("positions.10.closed"),
            settings.label("11b. 10 positions: trigger → all closed (flatten.done)"),
            "s",
            [] if closed_s is None else [closed_s],
            target=f"≤ {TARGET_CLOSED:g} s",
            met=closed_s is not None and closed_s <= TARGET_CLOSED and safe,
            details=details,
        ),
        Figure(
            settings.key("positions.10.violations"),
            settings.label("11c. rate-limit violations, all six endpoints; flips, double closes"),
            "count",
            [float(sum(violations.values()) + truth["flips"] + truth["overcloses"])],
            target="0",
            met=sum(violations.values()) == 0 and safe,
            details=details,
        ),
    ]

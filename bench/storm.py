"""6. Rate-limit safety: a storm of 1,000 SIGUSR1 with injected 429s, refereed by the sim.

Tight limits so the storm presses on them: ``cancel_all`` 5 per 2 s and order
status 100 per 1 s, the same in the daemon's config as in the sim's, with the
daemon's default margin (0.5 s).  The signals go 5 ms apart (about 6 s in
all), so the storm outlasts the first kills: signals during a kill are
coalesced, signals while TRIPPED start new sweeps, which soon wait for the
``cancel_all`` window.  50 open orders at the start and 20 more every 100
signals, so later sweeps find orders to confirm; 429s (``Retry-After: 1``)
injected on both endpoints during the storm.  The kernel merges a SIGUSR1
that arrives while one is pending, so the daemon may see fewer.  Afterwards the bench
waits until the daemon is idle and TRIPPED, then counts what the strict sim
saw: every arrival, refused or not, counts in its window.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from bench.harness import Settings, progress, sim_and_daemon
from bench.procs import DaemonProcess
from bench.report import Figure

__all__ = ["run"]

SIGNALS = 1000
SIM = {"cancel_all_limit": [5, 2.0], "status_limit": [100, 1.0], "cancel_delay": [0.02, 0.3]}
DAEMON = {
    "cancel_all": {"rate_limit": {"requests": 5, "per_seconds": 2}},
    "confirm": {"rate_limit": {"requests": 100, "per_seconds": 1}},
}


async def _idle(daemon: DaemonProcess, timeout: float) -> None:
    """Until the daemon is TRIPPED with every started kill completed, twice 1 s apart."""
    calm = 0
    async with asyncio.timeout(timeout):
        while calm < 2:
            await asyncio.sleep(1.0)
            started = len(daemon.log.named("kill.started"))
            completed = len(daemon.log.named("kill.completed"))
            state = (await daemon.status())["state"]
            calm = calm + 1 if state == "TRIPPED" and started == completed else 0


async def run(settings: Settings) -> list[Figure]:
    async with sim_and_daemon(settings, "storm", sim=SIM, daemon=DAEMON) as (sim, daemon):
        await sim.seed({"BTCUSDT": 50})
        progress(f"storm: {SIGNALS} SIGUSR1, 5 ms apart")
        start = time.monotonic()
        for i in range(SIGNALS):
            os.kill(daemon.pid, signal.SIGUSR1)
            if i % 100 == 99:
                await sim.seed({"ETHUSDT": 20})
            if i in (200, 700):
                await sim.inject("cancel_all", "429", 2)
            if i in (400, 800):
                await sim.inject("order_status", "429", 5)
            await asyncio.sleep(0.005)
        storm_s = time.monotonic() - start
        await _idle(daemon, timeout=180)
        settle_s = time.monotonic() - start
        stats = await sim.stats()
        fired = daemon.log.named("trigger.fired")
        kills = daemon.log.named("kill.completed")
        waits = len(daemon.log.named("ratelimit.wait"))
    violations = stats["violations"]
    answers: dict[str, dict[str, int]] = stats["answers"]
    details: dict[str, Any] = {
        "signals_sent": SIGNALS,
        "storm_seconds": storm_s,
        "until_idle_seconds": settle_s,
        "triggers_seen": len(fired),
        "coalesced": sum(1 for e in fired if e.get("coalesced")),
        "kills": len(kills),
        "orders_confirmed": sum(int(k["cancelled"]) + int(k["filled"]) for k in kills),
        "unconfirmed": sum(int(k["unconfirmed"]) for k in kills),
        "requests": stats["requests"],
        "answers": answers,
        "peak_in_window": stats["peak_in_window"],
        "limits": stats["limits"],
        "ratelimit_wait_events": waits,
        "violations": violations,
    }
    total = sum(violations.values())
    return [
        Figure(
            settings.key("storm.violations"),
            settings.label(
                f"6. storm of {SIGNALS:,} SIGUSR1 + injected 429s: violations seen by the sim"
            ),
            "count",
            [float(total)],
            target="0",
            met=total == 0,
            details=details,
            note=(
                f"{len(fired)} triggers seen, {len(kills)} kills, "
                f"{stats['requests']['cancel_all']} cancel_all and "
                f"{stats['requests']['order_status']} status requests"
            ),
        )
    ]

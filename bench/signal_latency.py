"""1. SIGUSR1 → ``cancel_all`` arrival at the exchange, against two floors.

One daemon is signalled again and again: each SIGUSR1 after the first hits a
TRIPPED switch, which an explicit trigger answers with a new sweep.  Floor 1
is a minimal process (:mod:`bench.baseline_sender`) holding a warm aiohttp
keep-alive connection that posts the same signed request on SIGUSR1; floor 2
(:mod:`bench.raw_sender`) has no HTTP library: asyncio streams, the request
built at the signal and written in one call.  The three are signalled in
turn, in random order, one at a time, with a random pause between runs (one
interleaved run, so load on the machine hits all three alike).  Times: the
bench's ``time.monotonic()`` just before ``kill(2)`` and the sim's
``time.monotonic()`` when the request reaches its handler (one clock on Linux,
whatever the process).

``cancel_all`` is limited to 10 per 60 s by default; here both the daemon's
``[cancel_all.rate_limit]`` and the sim's limit are 1000 per 1 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

from bench.harness import Settings, event_time, progress, sim_and_daemon
from bench.procs import Child, DaemonProcess, daemon_env
from bench.report import Figure, percentile

__all__ = ["run"]

LIMIT = {"requests": 1000, "per_seconds": 1, "margin": 0.05}
TARGET_RATIO = 1.5
WARMUP = 20


async def run(settings: Settings) -> list[Figure]:
    runs = settings.runs(300, 100)
    sim_cfg = {"cancel_all_limit": [1000, 1.0]}
    daemon_cfg = {"cancel_all": {"rate_limit": LIMIT}}
    async with sim_and_daemon(settings, "signal", sim=sim_cfg, daemon=daemon_cfg) as (sim, daemon):
        baseline = Child(
            "baseline",
            [sys.executable, "-m", "bench.baseline_sender", sim.base_url],
            daemon.directory,
            daemon_env(),
        )
        raw = Child(
            "raw",
            [sys.executable, "-m", "bench.raw_sender", sim.base_url],
            daemon.directory,
            daemon_env(),
        )
        await baseline.start()
        await raw.start()
        try:
            await baseline.log.wait_for("baseline.ready", timeout=20, alive=baseline.alive)
            await raw.log.wait_for("raw.ready", timeout=20, alive=raw.alive)
            fired = await _fire(daemon, baseline, raw, runs)
        finally:
            await baseline.stop()
            await raw.stop()
        arrivals = await sim.arrivals()
        stats = await sim.stats()
    if len(arrivals) != len(fired):
        raise RuntimeError(f"{len(fired)} signals but {len(arrivals)} cancel_all arrivals")
    sent = [float(e["sent"]) for e in baseline.log.named("sent")]
    fired_at = [event_time(e) for e in daemon.log.named("trigger.fired")]
    sent_at = [event_time(e) for e in daemon.log.named("cancel_all.sent")]
    daemon_ms: list[float] = []
    signal_ms: list[float] = []
    raw_ms: list[float] = []
    post_ms: list[float] = []
    parts: dict[str, list[float]] = {
        "signal_to_trigger": [],
        "trigger_to_sent": [],
        "sent_to_arrival": [],
    }
    counts = {"daemon": 0, "baseline": 0, "raw": 0}
    for i, (run, (arrived, arrived_wall)) in enumerate(zip(fired, arrivals, strict=True)):
        if i + 1 < len(fired) and arrived >= fired[i + 1].mono:
            raise RuntimeError("an arrival came after the next signal: runs overlapped")
        counts[run.who] += 1
        if i < 3 * WARMUP:
            continue
        if run.who == "daemon":
            k = counts["daemon"] - 1
            daemon_ms.append((arrived - run.mono) * 1000)
            parts["signal_to_trigger"].append((fired_at[k] - run.wall) * 1000)
            parts["trigger_to_sent"].append((sent_at[k] - fired_at[k]) * 1000)
            parts["sent_to_arrival"].append((arrived_wall - sent_at[k]) * 1000)
        elif run.who == "raw":
            raw_ms.append((arrived - run.mono) * 1000)
        else:
            signal_ms.append((arrived - run.mono) * 1000)
            post_ms.append((arrived - sent[counts["baseline"] - 1]) * 1000)
    base = percentile(signal_ms, 99)
    ratio = percentile(daemon_ms, 99) / base
    ratio_p50 = percentile(daemon_ms, 50) / percentile(signal_ms, 50)
    ratios = {
        "aiohttp_p50": ratio_p50,
        "aiohttp_p99": ratio,
        "raw_p50": percentile(daemon_ms, 50) / percentile(raw_ms, 50),
        "raw_p99": percentile(daemon_ms, 99) / percentile(raw_ms, 99),
    }
    violations = sum(stats["violations"].values())
    breakdown = {
        name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v)}
        for name, v in parts.items()
    }
    return [
        Figure(
            settings.key("signal.daemon"),
            settings.label("1. SIGUSR1 → cancel_all arrival (daemon)"),
            "ms",
            daemon_ms,
            target=f"p50, p99 ≤ {TARGET_RATIO}x baseline",
            met=max(ratio, ratio_p50) <= TARGET_RATIO and violations == 0,
            base=base,
            base_label="baseline",
            details={
                "p50_overhead_ms": percentile(daemon_ms, 50) - percentile(signal_ms, 50),
                "p50_overhead_vs_raw_ms": percentile(daemon_ms, 50) - percentile(raw_ms, 50),
                "ratios": ratios,
                "breakdown_ms (wall clock, event timestamps)": breakdown,
                "violations": violations,
            },
        ),
        Figure(
            settings.key("signal.baseline"),
            settings.label("1b. baseline: SIGUSR1 → arrival (minimal aiohttp process)"),
            "ms",
            signal_ms,
        ),
        Figure(
            settings.key("signal.raw"),
            settings.label("1d. floor 2: SIGUSR1 → arrival (asyncio streams, built at the signal)"),
            "ms",
            raw_ms,
        ),
        Figure(
            settings.key("signal.baseline_post"),
            settings.label("1c. baseline: warm POST → arrival"),
            "ms",
            post_ms,
        ),
    ]


@dataclass(frozen=True)
class _Run:
    who: str
    mono: float
    wall: float


async def _fire(daemon: DaemonProcess, baseline: Child, raw: Child, runs: int) -> list[_Run]:
    """Signal the daemon and both floors in turn (random order), one run at a time."""
    rng = random.Random(1)
    fired: list[_Run] = []
    done = {"daemon": 0, "baseline": 0, "raw": 0}
    floors = {"baseline": baseline, "raw": raw}
    total = WARMUP + runs
    for i in range(total):
        turn = ["daemon", "baseline", "raw"]
        rng.shuffle(turn)
        for who in turn:
            pid = daemon.pid if who == "daemon" else floors[who].pid
            wall, t0 = time.time(), time.monotonic()
            os.kill(pid, signal.SIGUSR1)
            fired.append(_Run(who, t0, wall))
            done[who] += 1
            await asyncio.sleep(0.01)  # the bench sleeps through the measured path
            if who == "daemon":
                await daemon.completed(done["daemon"])
            else:
                child = floors[who]
                await child.log.wait_for("sent", count=done[who], alive=child.alive)
            await asyncio.sleep(rng.uniform(0.02, 0.04))
        if (i + 1) % 100 == 0:
            progress(f"signal: {i + 1}/{total} rounds")
    return fired

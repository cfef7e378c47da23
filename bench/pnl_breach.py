"""3. PnL breach → ``cancel_all`` arrival, after an atomic rename.

The strategy's way of writing the file: write a temp file in the same
directory, then ``os.replace`` it over the watched name.  Each run: write a
value above the threshold and wait until ``GET /status`` shows it, then
prepare the breaching value in a temp file, pause 5 ms (so the daemon has
digested the temp file's own inotify events), take the time and rename.
After the kill, ``POST /reset`` re-arms the edge.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from bench.harness import Settings, progress, sim_and_daemon
from bench.procs import DaemonProcess
from bench.report import Figure, percentile

__all__ = ["run"]

THRESHOLD = 0.0
TARGET_P99_MS = 10.0
WARMUP = 10


def write_pnl(path: Path, value: float, *, rename: bool = True) -> Path:
    """Write ``{"pnl": value}`` to a temp file beside ``path``; rename it over unless told not."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps({"pnl": value, "ts": time.time()}))
    if rename:
        os.replace(temp, path)
    return temp


async def _shows(daemon: DaemonProcess, value: float) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await daemon.status())["pnl"] == value:
                return
            await asyncio.sleep(0.005)


async def run(settings: Settings) -> list[Figure]:
    runs = settings.runs(300, 100)
    total = WARMUP + runs
    sim_cfg = {"cancel_all_limit": [1000, 1.0]}
    daemon_cfg = {
        "cancel_all": {"rate_limit": {"requests": 1000, "per_seconds": 1, "margin": 0.05}},
        "triggers": {"pnl": {"enabled": True, "threshold": THRESHOLD, "stale_after": 0}},
    }

    def first_reading(directory: Path) -> None:
        (directory / "pnl").mkdir(exist_ok=True)
        write_pnl(directory / "pnl" / "pnl.json", 1000.0)

    renamed: list[float] = []
    async with sim_and_daemon(
        settings, "pnl", sim=sim_cfg, daemon=daemon_cfg, before_start=first_reading
    ) as (sim, daemon):
        path = daemon.directory / "pnl" / "pnl.json"
        for i in range(total):
            if i:
                await daemon.reset()
            above = 1000.0 + i
            write_pnl(path, above)
            await _shows(daemon, above)
            temp = write_pnl(path, -1000.0 - i, rename=False)
            await asyncio.sleep(0.005)
            t0 = time.monotonic()
            os.replace(temp, path)
            renamed.append(t0)
            await asyncio.sleep(0.015)
            await daemon.completed(i + 1)
            if (i + 1) % 100 == 0:
                progress(f"pnl: {i + 1}/{total}")
        arrivals = await sim.arrivals()
        breaches = len(daemon.log.named("pnl.breach"))
    if len(arrivals) != total or breaches != total:
        raise RuntimeError(f"{total} runs, {len(arrivals)} arrivals, {breaches} breaches")
    ms = [(a - t0) * 1000 for (a, _), t0 in zip(arrivals, renamed, strict=True)][WARMUP:]
    return [
        Figure(
            settings.key("pnl.arrival"),
            settings.label("3. PnL breach (os.replace) → cancel_all arrival"),
            "ms",
            ms,
            target=f"p99 ≤ {TARGET_P99_MS:g} ms",
            met=percentile(ms, 99) <= TARGET_P99_MS,
        )
    ]

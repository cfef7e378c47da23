"""5. Idle cost: CPU and peak memory of an armed daemon that only receives heartbeats.

Every trigger is on (dead-man armed by the heartbeats, PnL file watched,
signal), the exchange pools are kept warm.  CPU is ``utime + stime`` of the
daemon (all its threads) from ``/proc/<pid>/stat``, as a percentage of one
core; the kernel counts it in ticks of 10 ms, so a 60 s phase resolves
0.017 %.  Two phases:

A. heartbeats every 100 ms for 60 s (``--quick``: 10 s).  At the same time,
   50 ms out of step, the same heartbeats go to a bare aiohttp application
   on a UNIX socket (:mod:`bench.bare_control`): what handling a heartbeat
   costs at the least.  "Beyond the heartbeats' own handling" is the
   daemon's CPU minus the bare server's.
B. no heartbeats at all for 30 s (``--quick``: 10 s; the dead-man stays
   armed, its timeout is 600 s): what the daemon costs by itself.

Peak RSS is ``VmHWM`` from ``/proc/<pid>/status``, read at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

from bench.harness import Settings, progress, sim_and_daemon
from bench.pnl_breach import write_pnl
from bench.procs import CLK_TCK, Child, DaemonProcess, daemon_env, proc_status_kb
from bench.report import Figure

__all__ = ["run"]

INTERVAL = 0.1
TARGET_CPU_PCT = 0.2
TARGET_RSS_MB = 50.0


async def _beating(
    daemon: DaemonProcess, bare: Child, bare_session: aiohttp.ClientSession, seconds: float
) -> dict[str, float]:
    """Heartbeats every INTERVAL to both, half an interval apart, for ``seconds``."""
    loop = asyncio.get_running_loop()
    d0, b0, start = daemon.cpu_ticks(), bare.cpu_ticks(), time.monotonic()
    beats = 0
    next_at = loop.time()
    end = next_at + seconds
    while next_at < end:
        await daemon.heartbeat()
        await asyncio.sleep(max(0.0, next_at + INTERVAL / 2 - loop.time()))
        async with bare_session.post("http://bare/heartbeat") as resp:
            await resp.read()
        beats += 1
        next_at += INTERVAL
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    return {
        "daemon_cpu_s": (daemon.cpu_ticks() - d0) / CLK_TCK,
        "bare_cpu_s": (bare.cpu_ticks() - b0) / CLK_TCK,
        "wall_s": time.monotonic() - start,
        "heartbeats": beats,
    }


async def run(settings: Settings) -> list[Figure]:
    seconds_a = settings.runs(60, 10)
    seconds_c = settings.runs(30, 10)
    daemon_cfg = {
        "triggers": {
            "heartbeat": {"enabled": True, "timeout": 600.0},
            "pnl": {"enabled": True, "threshold": -5000.0, "stale_after": 0},
        },
    }

    def pnl_file(directory: Path) -> None:
        (directory / "pnl").mkdir(exist_ok=True)
        write_pnl(directory / "pnl" / "pnl.json", 100.0)

    async with sim_and_daemon(
        settings, "idle", sim={}, daemon=daemon_cfg, before_start=pnl_file
    ) as (_, daemon):
        socket = daemon.directory / "bare.sock"
        bare = Child(
            "bare",
            [sys.executable, "-m", "bench.bare_control", str(socket)],
            daemon.directory,
            daemon_env(),
        )
        await bare.start()
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)))
        try:
            await bare.log.wait_for("bare.ready", timeout=20, alive=bare.alive)
            await daemon.heartbeat()
            await asyncio.sleep(1.0)  # start-up settles
            progress(f"idle: A, heartbeats every {INTERVAL * 1000:g} ms for {seconds_a} s")
            a = await _beating(daemon, bare, session, seconds_a)
            progress(f"idle: B, no heartbeats for {seconds_c} s")
            ticks0, start = daemon.cpu_ticks(), time.monotonic()
            await asyncio.sleep(seconds_c)
            cpu_c, wall_c = (daemon.cpu_ticks() - ticks0) / CLK_TCK, time.monotonic() - start
            hwm_mb = proc_status_kb(daemon.pid, "VmHWM") / 1024
            rss_mb = proc_status_kb(daemon.pid, "VmRSS") / 1024
            bare_hwm_mb = proc_status_kb(bare.pid, "VmHWM") / 1024
        finally:
            await session.close()
            await bare.stop()
    wall_a, beats = a["wall_s"], a["heartbeats"]
    pct_a = 100 * a["daemon_cpu_s"] / wall_a
    pct_bare = 100 * a["bare_cpu_s"] / wall_a
    pct_c = 100 * cpu_c / wall_c
    beyond = pct_a - pct_bare
    details = {
        "phase_a": a,
        "phase_b": {"daemon_cpu_s": cpu_c, "wall_s": wall_c},
        "cpu_resolution_pct": 100 / CLK_TCK / wall_a,
        "daemon_us_per_heartbeat": 1e6 * (a["daemon_cpu_s"] - cpu_c / wall_c * wall_a) / beats,
        "bare_us_per_heartbeat": 1e6 * a["bare_cpu_s"] / beats,
        "vm_rss_mb": rss_mb,
        "bare_vm_hwm_mb": bare_hwm_mb,
    }
    return [
        Figure(
            settings.key("idle.cpu_with_heartbeats"),
            settings.label(
                f"5. idle CPU, heartbeats every {INTERVAL * 1000:g} ms ({wall_a:.0f} s)"
            ),
            "% core",
            [pct_a],
            base=pct_bare,
            base_label="bare server",
            details=details,
        ),
        Figure(
            settings.key("idle.cpu_bare"),
            settings.label("5a. baseline: the same heartbeats to a bare aiohttp UNIX server"),
            "% core",
            [pct_bare],
        ),
        Figure(
            settings.key("idle.cpu_beyond_heartbeats"),
            settings.label("5b. idle CPU beyond the heartbeats' own handling (5 - 5a)"),
            "% core",
            [beyond],
            target=f"≤ {TARGET_CPU_PCT} %",
            met=beyond <= TARGET_CPU_PCT,
        ),
        Figure(
            settings.key("idle.cpu_no_heartbeats"),
            settings.label(f"5c. idle CPU, no heartbeats at all ({wall_c:.0f} s)"),
            "% core",
            [pct_c],
            target=f"≤ {TARGET_CPU_PCT} %",
            met=pct_c <= TARGET_CPU_PCT,
        ),
        Figure(
            settings.key("idle.hwm"),
            settings.label("5d. idle peak RSS (VmHWM)"),
            "MB",
            [hwm_mb],
            base=bare_hwm_mb,
            base_label="bare server",
            target=f"≤ {TARGET_RSS_MB:g} MB",
            met=hwm_mb <= TARGET_RSS_MB,
        ),
    ]

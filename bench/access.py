"""Access control's cost (contract §13): heartbeat and SIGUSR1 latency, rights on vs off.

Two daemons side by side against one simulated exchange each: ``off`` without
``[control.access]`` (0.3.0's socket, mode 0600, the bench as root), ``on`` with
every right given to one non-root uid (65534 when the bench runs as root: the
client drops to it, so each request takes the whole path — peer credentials,
the rights check; as another user, its own uid).  Measured alternately, in
rounds: heartbeat round trips from a separate process, each on a new
connection; SIGUSR1 → ``cancel_all`` arrival at the exchange (the bench's and
the sim's ``time.monotonic()``, one clock).  Target: on within 10 % of off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time

from bench.harness import Settings, progress, sim_and_daemon
from bench.procs import DaemonProcess, SimProcess
from bench.report import Figure

__all__ = ["run"]

LIMIT = {"requests": 1000, "per_seconds": 1, "margin": 0.05}
TARGET = 1.10
NOBODY = 65534


async def run(settings: Settings) -> list[Figure]:
    rounds = settings.runs(10, 4)
    beats, signals = 50, settings.runs(15, 8)
    peer = NOBODY if os.geteuid() == 0 else os.geteuid()
    on_cfg = {
        "control": {
            "socket_mode": "0666",
            "access": {r: [peer] for r in ("status", "heartbeat", "trigger", "reset")},
        }
    }
    base = {"cancel_all": {"rate_limit": LIMIT}}
    sim_cfg = {"cancel_all_limit": [1000, 1.0]}
    hb: dict[str, list[float]] = {"off": [], "on": []}
    sig: dict[str, list[float]] = {"off": [], "on": []}
    async with contextlib.AsyncExitStack() as stack:
        pairs: dict[str, tuple[SimProcess, DaemonProcess]] = {}
        for mode, extra in (("off", {}), ("on", on_cfg)):
            pairs[mode] = await stack.enter_async_context(
                sim_and_daemon(settings, f"access-{mode}", sim=sim_cfg, daemon={**base, **extra})
            )
        # The non-root client must reach the socket (its mode, 0666, decides then).
        for directory in (settings.root, pairs["on"][1].directory):
            directory.chmod(directory.stat().st_mode | 0o111)
        fired: dict[str, list[float]] = {"off": [], "on": []}
        rng = random.Random(19)
        for i in range(rounds):
            order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
            for mode in order:
                daemon = pairs[mode][1]
                uid = peer if mode == "on" and peer != os.geteuid() else None
                hb[mode] += await _heartbeats(daemon, beats, uid)
            for mode in order:
                daemon = pairs[mode][1]
                for _ in range(signals):
                    fired[mode].append(time.monotonic())
                    os.kill(daemon.pid, signal.SIGUSR1)
                    await daemon.completed(len(fired[mode]))
                    await asyncio.sleep(rng.uniform(0.02, 0.04))
            progress(f"access: round {i + 1}/{rounds}")
        for mode, (sim, _) in pairs.items():
            arrivals = await sim.arrivals()
            if len(arrivals) != len(fired[mode]):
                raise RuntimeError(f"{mode}: {len(fired[mode])} signals, {len(arrivals)} arrivals")
            sig[mode] = [(a - t) * 1000 for (a, _), t in zip(arrivals, fired[mode], strict=True)]
    figures = []
    for name, samples, what in (
        ("heartbeat", hb, "heartbeat round trip (new connection)"),
        ("signal", sig, "SIGUSR1 → cancel_all arrival"),
    ):
        off = Figure(f"access.{name}.off", f"13. {what}, rights off", "ms", samples["off"])
        on = Figure(
            f"access.{name}.on",
            f"13. {what}, rights on (peer uid {peer})",
            "ms",
            samples["on"],
            target=f"p50 ≤ {TARGET:.2f}x rights off",
            met=Figure("", "", "", samples["on"]).p50 <= off.p50 * TARGET,
            base=off.p99,
            base_label="rights off",
            details={"p50_ratio": Figure("", "", "", samples["on"]).p50 / off.p50},
        )
        figures += [on, off]
    return figures


async def _heartbeats(daemon: DaemonProcess, count: int, uid: int | None) -> list[float]:
    argv = [sys.executable, "-m", "bench.access_client", str(daemon.socket), str(count)]
    proc = await asyncio.create_subprocess_exec(
        *argv, *([] if uid is None else [str(uid)]), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"access_client exited {proc.returncode}")
    times: list[float] = json.loads(out)
    return times[5:]  # the first few warm the process, not the daemon

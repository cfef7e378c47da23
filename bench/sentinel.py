"""10. The sentinel (contract §15): a frozen desk → the sentinel's first ``cancel_all``,
and a soak in which it must never fire.

Both run a real nats-server on loopback, a real desk daemon and a real sentinel
daemon (``[sentinel] desk``), one simulated exchange in its own process that both
daemons share, as the desk and its sentinel share one account and key.

- ``sentinel``: each round seeds 5 orders, waits a random phase of the liveness
  interval, then SIGSTOPs the desk (a frozen host).  The sample is the sim's
  arrival time of the first ``cancel_all`` after the freeze minus the bench's
  ``time.monotonic()`` just before ``kill(2)`` (one machine, one monotonic
  clock).  The bound is ``timeout + liveness_interval``: the desk's last liveness
  came at most one interval before the freeze.  Then SIGCONT; the desk agrees
  (it trips too), and both are reset for the next round.
- ``sentinel_soak``: the desk healthy for 10 minutes (``--quick``: 60 s) with a
  busy loop on every core, nats-server restarted twice and the sentinel
  restarted twice; the figure is the number of sentinel kills (target 0), with
  the blind spells for context.  The contract's defaults: timeout 3 s,
  liveness every 0.5 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Settings, progress
from bench.procs import DaemonProcess, SimProcess, daemon_config
from bench.report import Figure, percentile
from tests.natsserver import NatsServer, NatsUser, desk_permissions, sentinel_permissions

__all__ = ["run", "run_soak"]

PREFIX = "killswitch.bench"
DESK, SENTINEL = "desk-a", "desk-a-sentinel"
CREDS_ENV = "KILLSWITCH_NATS_CREDS"
FAST = {"requests": 100_000, "per_seconds": 1, "margin": 0.05}
ORDERS = 5


class Pair:
    """nats-server, the shared sim, the desk and its sentinel (restartable)."""

    def __init__(self, directory: Path, timeout: float, liveness: float) -> None:
        self.directory = directory
        self.timeout = timeout
        self.liveness = liveness
        self.desk_user = NatsUser.new(desk_permissions(PREFIX, DESK))
        self.sentinel_user = NatsUser.new(sentinel_permissions(PREFIX, SENTINEL, DESK))
        self.nats = NatsServer(directory, [self.desk_user, self.sentinel_user])
        self.sim = SimProcess(
            directory,
            cancel_all_limit=[100_000, 1.0],
            status_limit=[100_000, 1.0],
            positions_limit=[100_000, 1.0],
        )
        self.desk: DaemonProcess | None = None
        self.sentinel: DaemonProcess | None = None

    def _daemon(self, name: str, seed: str, **extra: Any) -> DaemonProcess:
        directory = self.directory / name
        directory.mkdir(exist_ok=True)
        config = daemon_config(
            directory,
            self.sim.base_url,
            {
                "cancel_all": {"rate_limit": FAST},
                "confirm": {"rate_limit": FAST},
                "positions": {"rate_limit": FAST},
                "guard": {"interval": 1},
                "cluster": {
                    "servers": [self.nats.url],
                    "firm": "bench",
                    "desk": name,
                    "credentials_env": CREDS_ENV,
                    "liveness_interval": self.liveness,
                },
                **extra,
            },
        )
        daemon = DaemonProcess(directory, config)
        daemon.env[CREDS_ENV] = seed
        return daemon

    async def start(self) -> None:
        await self.nats.start()
        await self.sim.start()
        self.desk = self._daemon(DESK, self.desk_user.seed)
        await self.desk.start()
        await self.start_sentinel()

    async def start_sentinel(self) -> None:
        self.sentinel = self._daemon(
            SENTINEL, self.sentinel_user.seed, sentinel={"desk": DESK, "timeout": self.timeout}
        )
        await self.sentinel.start()
        await self.sentinel.log.wait_for(
            "sentinel.watching", timeout=30, interval=0.02, alive=self.sentinel.alive
        )

    async def stop(self) -> None:
        for daemon in (self.desk, self.sentinel):
            if daemon is not None and daemon.proc is not None:
                if daemon.alive():
                    daemon.send(signal.SIGCONT)
                code = await daemon.stop()
                if code not in (0, None):
                    progress(f"sentinel: {daemon.directory.name} exited {code}")
        await self.sim.stop()
        await self.nats.stop()


def sentinel_kills(daemon: DaemonProcess) -> int:
    return sum(1 for e in daemon.log.named("trigger.fired") if e.get("source") == "sentinel")


async def run(settings: Settings) -> list[Figure]:
    """Desk frozen → the sentinel's first cancel_all, against timeout + liveness_interval."""
    timeout, liveness = 1.0, 0.2
    rounds = settings.runs(40, 20)
    pair = Pair(settings.directory("sentinel"), timeout, liveness)
    samples: list[float] = []
    rng = random.Random(21)
    try:
        await pair.start()
        assert pair.desk is not None
        assert pair.sentinel is not None
        desk, sentinel = pair.desk, pair.sentinel
        seen = 0
        for i in range(rounds):
            await pair.sim.seed({"BTCUSDT": ORDERS})
            await asyncio.sleep(0.5 + rng.uniform(0, liveness))
            t0 = time.monotonic()
            desk.send(signal.SIGSTOP)
            await sentinel.completed(i + 1, timeout=30, interval=0.01)
            arrivals = await pair.sim.arrivals()
            first, seen = arrivals[seen][0], len(arrivals)
            samples.append((first - t0) * 1000)
            desk.send(signal.SIGCONT)
            await desk.completed(i + 1, timeout=30, interval=0.01)  # it agrees: tripped too
            await sentinel.reset()
            await desk.reset()
            await sentinel.log.wait_for("sentinel.watching", count=i + 2, timeout=30)
            seen = len(await pair.sim.arrivals())
            if (i + 1) % 10 == 0:
                progress(f"sentinel: {i + 1}/{rounds} rounds")
    finally:
        await pair.stop()
    bound = (timeout + liveness) * 1000
    return [
        Figure(
            settings.key("sentinel.frozen"),
            settings.label(
                f"10. desk SIGSTOPped → sentinel's first cancel_all (timeout {timeout:g} s, "
                f"liveness {liveness:g} s)"
            ),
            "ms",
            samples,
            target=f"p99 ≤ timeout + liveness_interval = {bound:.0f} ms",
            met=percentile(samples, 99) <= bound,
            base=bound,
            base_label="timeout + liveness_interval",
        )
    ]


async def run_soak(settings: Settings) -> list[Figure]:
    """A healthy desk under CPU load, the bus and the sentinel restarted twice: 0 kills."""
    duration = 60.0 if settings.quick else 600.0
    pair = Pair(settings.directory("sentinel-soak"), 3.0, 0.5)
    burners: list[asyncio.subprocess.Process] = []
    kills = blind = 0
    try:
        await pair.start()
        for _ in range(os.cpu_count() or 1):  # a busy loop on every core
            burners.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-c", "while True: pass", stdin=asyncio.subprocess.DEVNULL
                )
            )
        step = duration / 6
        for phase in ("nats", "sentinel", "nats", "sentinel", None):
            await asyncio.sleep(step)
            if phase == "nats":
                progress("sentinel_soak: nats-server restart")
                await pair.nats.stop()
                await asyncio.sleep(2.0)
                await pair.nats.start()
            elif phase == "sentinel":
                progress("sentinel_soak: sentinel restart")
                assert pair.sentinel is not None
                kills += sentinel_kills(pair.sentinel)
                blind += len(pair.sentinel.log.named("sentinel.blind"))
                await pair.sentinel.stop()
                await pair.start_sentinel()
        await asyncio.sleep(step)
        assert pair.sentinel is not None
        kills += sentinel_kills(pair.sentinel)
        blind += len(pair.sentinel.log.named("sentinel.blind"))
        desk_alive = pair.desk is not None and pair.desk.alive()
    finally:
        for burner in burners:
            burner.kill()
            await burner.wait()
        await pair.stop()
    return [
        Figure(
            settings.key("sentinel.soak"),
            settings.label(
                f"10b. soak {duration:.0f} s: busy cores, nats-server and sentinel restarted "
                "twice → sentinel kills"
            ),
            "kills",
            [float(kills)],
            target="0 sentinel kills",
            met=kills == 0 and desk_alive,
            note=f"{blind} blind spell(s) (no kill while blind)",
            details={"blind": blind, "desk_alive": desk_alive},
        )
    ]

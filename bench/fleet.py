"""9. Firm-wide kill: ``fleet trigger`` → each desk's first ``cancel_all`` at the exchange.

K = 1, 5 and 10 real daemons, each with ``[cluster]``, subscribe to a real
nats-server on loopback; one simulated exchange (its own process) serves them
all.  Two kinds of round alternate in random order, one at a time:

- fleet: the bench's operator connection runs :meth:`killswitch.cluster.fleet.Fleet.trigger`
  (what ``killswitch fleet trigger`` does: the trigger, then the status request,
  then the acknowledgements);
- local: SIGUSR1 to every daemon, back to back.

Each round yields K samples: every ``cancel_all`` arrival at the sim (its
``time.monotonic()``) minus the bench's ``time.monotonic()`` just before the
publish, or before the first ``kill(2)``.  The figure held against the target
is what NATS adds: p99(fleet) - p99(local) for the same K, same run.

``cancel_all`` is limited to 10 per 60 s by default; here both the daemons'
``[cancel_all.rate_limit]`` and the sim's limit are far above what the rounds use.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

from bench.harness import Settings, progress
from bench.procs import DaemonProcess, SimProcess, daemon_config
from bench.report import Figure, percentile
from killswitch.cluster.fleet import Fleet
from killswitch.cluster.settings import ClusterSettings, resolve_cluster
from killswitch.config.model import ClusterConfig
from tests.natsserver import NatsServer, NatsUser

__all__ = ["run"]

FLEET_SIZES = (1, 5, 10)
TARGET_ADDED_MS = 3.0  # at p99, for K = 10
LIMIT = {"requests": 100_000, "per_seconds": 1, "margin": 0.05}
PREFIX = "killswitch.bench"
CREDS_ENV = "KILLSWITCH_NATS_CREDS"
WARMUP = 5


async def run(settings: Settings) -> list[Figure]:
    figures: list[Figure] = []
    for k in FLEET_SIZES:
        figures += await _run_fleet(settings, k)
    return figures


async def _run_fleet(settings: Settings, k: int) -> list[Figure]:
    rounds = settings.runs(100, 20)
    directory = settings.directory(f"fleet{k}")
    desks = NatsUser.new(
        {
            "subscribe": {
                "allow": [f"{PREFIX}.trigger", f"{PREFIX}.*.trigger", f"{PREFIX}.status"]
            },
            "publish": {"allow": [f"{PREFIX}.*.events"]},
            "allow_responses": True,
        }
    )
    operator = NatsUser.new(
        {
            "publish": {"allow": [f"{PREFIX}.trigger", f"{PREFIX}.status"]},
            "subscribe": {"allow": ["_INBOX.>"]},
        }
    )
    server = NatsServer(directory, [desks, operator])
    await server.start()
    sim = SimProcess(directory, cancel_all_limit=[100_000, 1.0], status_limit=[100_000, 1.0])
    daemons: list[DaemonProcess] = []
    fleet: Fleet | None = None
    try:
        await sim.start()
        for i in range(k):
            desk_dir = directory / f"desk{i}"
            desk_dir.mkdir(exist_ok=True)
            config = daemon_config(
                desk_dir,
                sim.base_url,
                {
                    "cancel_all": {"rate_limit": LIMIT},
                    "cluster": {
                        "servers": [server.url],
                        "firm": "bench",
                        "desk": f"desk{i}",
                        "credentials_env": CREDS_ENV,
                    },
                },
            )
            daemon = DaemonProcess(desk_dir, config, loop=settings.loop)
            daemon.env[CREDS_ENV] = desks.seed
            daemons.append(daemon)
        await asyncio.gather(*(d.start() for d in daemons))
        for d in daemons:
            await d.log.wait_for("cluster.connected", timeout=30, interval=0.02, alive=d.alive)
        fleet = Fleet(_operator(server, operator))
        await fleet.connect(5.0)
        samples, acks = await _rounds(k, rounds, fleet, daemons, sim)
    finally:
        if fleet is not None:
            await fleet.close()
        for d in daemons:
            code = await d.stop()
            if code not in (0, None):
                progress(f"fleet{k}: daemon exited {code}: {d.stderr_tail()}")
        await sim.stop()
        await server.stop()
    fleet_p99, local_p99 = percentile(samples["fleet"], 99), percentile(samples["local"], 99)
    added = fleet_p99 - local_p99
    return [
        Figure(
            settings.key(f"fleet.k{k}"),
            settings.label(f"9. fleet trigger → first cancel_all, K={k} desks"),
            "ms",
            samples["fleet"],
            target=f"p99 adds ≤ {TARGET_ADDED_MS:g} ms over SIGUSR1" if k == 10 else "",
            met=(added <= TARGET_ADDED_MS) if k == 10 else None,
            base=local_p99,
            base_label=f"SIGUSR1 to all {k}",
            details={
                "added_p99_ms": added,
                "added_p50_ms": percentile(samples["fleet"], 50) - percentile(samples["local"], 50),
                "ack_ms": {"p50": percentile(acks, 50), "p99": percentile(acks, 99)},
            },
        ),
        Figure(
            settings.key(f"fleet.k{k}.local"),
            settings.label(f"9b. SIGUSR1 to all K={k} → first cancel_all (same run)"),
            "ms",
            samples["local"],
        ),
    ]


def _operator(server: NatsServer, user: NatsUser) -> ClusterSettings:
    config = ClusterConfig(servers=(server.url,), firm="bench", credentials_env=CREDS_ENV)
    settings = resolve_cluster(config, {CREDS_ENV: user.seed, "KILLSWITCH_DESK": "operator"})
    assert settings is not None
    return settings


async def _rounds(
    k: int, rounds: int, fleet: Fleet, daemons: list[DaemonProcess], sim: SimProcess
) -> tuple[dict[str, list[float]], list[float]]:
    """Fleet and local rounds in random order; K arrival latencies per round."""
    rng = random.Random(k)
    samples: dict[str, list[float]] = {"fleet": [], "local": []}
    acks: list[float] = []
    seen = 0
    kills = 0
    for i in range(WARMUP + rounds):
        pair = ["fleet", "local"] if rng.random() < 0.5 else ["local", "fleet"]
        for kind in pair:
            answer: Any = None
            t0 = time.monotonic()
            if kind == "fleet":
                answer = await fleet.trigger("bench", timeout=5.0)
                t0 = answer.sent_mono
            else:
                for d in daemons:
                    os.kill(d.pid, signal.SIGUSR1)
            kills += 1
            await asyncio.sleep(0.01)  # the bench sleeps through the measured path
            for d in daemons:
                await d.completed(kills)
            arrivals = await sim.arrivals()
            new, seen = arrivals[seen:], len(arrivals)
            if len(new) != k:
                raise RuntimeError(f"{kind} round: {len(new)} cancel_all arrivals for {k} desks")
            if i >= WARMUP:
                samples[kind] += [(mono - t0) * 1000 for mono, _ in new]
                if answer is not None:
                    if len(answer.acks) != k:
                        raise RuntimeError(f"{len(answer.acks)} acknowledgements from {k} desks")
                    acks += list(answer.ack_ms.values())
            await asyncio.sleep(rng.uniform(0.02, 0.04))
        if (i + 1) % 20 == 0:
            progress(f"fleet{k}: {i + 1}/{WARMUP + rounds} pairs")
    return samples, acks

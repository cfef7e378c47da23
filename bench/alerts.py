"""SIGUSR1 → ``cancel_all`` arrival with alert receivers that hang, against none (contract §16).

Two daemons, each against its own simulated exchange: one without
``[[alerts.webhook]]``, one with two receivers (Slack and PagerDuty formats)
that accept the connection and never answer.  Every kill alerts (each
SIGUSR1 after the first is an explicit trigger on a tripped switch: a new
sweep, a new ``trigger.fired``), so the hanging receivers always have a
request in flight and a queue behind it.  The two daemons are signalled
alternately, in random order; times as in scenario 1 (the bench's monotonic
clock before ``kill(2)``, the sim's when the request reaches its handler).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

from bench.harness import Settings, progress
from bench.procs import DaemonProcess, SimProcess, daemon_config
from bench.report import Figure, percentile
from bench.webhooks import Webhook

__all__ = ["run"]

LIMIT = {"requests": 1000, "per_seconds": 1, "margin": 0.05}
WARMUP = 10
TARGET_RATIO = 1.25


async def _pair(
    settings: Settings, name: str, alerts: dict[str, object] | None, env: dict[str, str]
) -> tuple[SimProcess, DaemonProcess]:
    directory = settings.directory(name)
    sim = SimProcess(directory, cancel_all_limit=[1000, 1.0])
    await sim.start()
    overrides: dict[str, object] = {"cancel_all": {"rate_limit": LIMIT}}
    if alerts is not None:
        overrides["alerts"] = alerts
    daemon = DaemonProcess(directory, daemon_config(directory, sim.base_url, overrides))
    daemon.env.update(env)
    await daemon.start()
    return sim, daemon


async def run(settings: Settings) -> list[Figure]:
    runs = settings.runs(150, 50)
    hook = Webhook("hang")
    await hook.start()
    receivers = {
        "webhook": [
            {"url_env": "BENCH_HOOK_SLACK", "format": "slack"},
            {"url_env": "BENCH_HOOK_PD", "format": "pagerduty", "routing_key_env": "BENCH_PD_KEY"},
        ],
        "timeout": 30.0,
    }
    env = {"BENCH_HOOK_SLACK": hook.url, "BENCH_HOOK_PD": hook.url, "BENCH_PD_KEY": "k" * 32}
    pairs = {
        "none": await _pair(settings, "alerts-none", None, {}),
        "hanging": await _pair(settings, "alerts-hanging", receivers, env),
    }
    fired: dict[str, list[float]] = {"none": [], "hanging": []}
    rng = random.Random(7)
    try:
        for i in range(WARMUP + runs):
            order = ["none", "hanging"] if rng.random() < 0.5 else ["hanging", "none"]
            for who in order:
                daemon = pairs[who][1]
                t0 = time.monotonic()
                os.kill(daemon.pid, signal.SIGUSR1)
                fired[who].append(t0)
                await asyncio.sleep(0.01)
                await daemon.completed(len(fired[who]))
                await asyncio.sleep(rng.uniform(0.02, 0.04))
            if (i + 1) % 50 == 0:
                progress(f"alerts: {i + 1}/{WARMUP + runs} pairs")
        arrivals = {who: await pair[0].arrivals() for who, pair in pairs.items()}
        in_flight = hook.requests
    finally:
        for sim, daemon in pairs.values():
            await daemon.stop()
            await sim.stop()
        await hook.stop()
    ms: dict[str, list[float]] = {}
    for who, sent in fired.items():
        if len(arrivals[who]) != len(sent):
            raise RuntimeError(f"{who}: {len(sent)} signals, {len(arrivals[who])} arrivals")
        ms[who] = [(a[0] - t) * 1000 for a, t in zip(arrivals[who], sent, strict=True)][WARMUP:]
    base = percentile(ms["none"], 99)
    ratio = percentile(ms["hanging"], 99) / base
    return [
        Figure(
            settings.key("alerts.hanging"),
            settings.label("16. SIGUSR1 → cancel_all, two alert receivers hanging"),
            "ms",
            ms["hanging"],
            target=f"p99 ≤ {TARGET_RATIO}x no receiver",
            met=ratio <= TARGET_RATIO,
            base=base,
            base_label="no receiver",
            details={"requests_held_by_the_receiver": in_flight},
        ),
        Figure(
            settings.key("alerts.none"),
            settings.label("16b. SIGUSR1 → cancel_all, no alert receiver"),
            "ms",
            ms["none"],
        ),
    ]

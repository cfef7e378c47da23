"""4. Confirmation under a status limit, and 7. the naive script on the same scenario.

The sim holds N open orders; each cancel takes 20-300 ms to reach CANCELLED.
The status endpoint allows R = 500 requests per 1 s (sim ``status_limit``;
the daemon's ``confirm.rate_limit`` is the same, margin 0.05 s).  Measured:
``cancel_all.accepted`` → ``kill.completed`` (the daemon's own event
timestamps), against the lower bound N / R, and status polls per order
(``kill.completed`` ``polls``).  Between runs the bench waits for a whole
status window to pass, so each run starts with the full burst.

``--slow`` adds scenario ``contract``: one kill of 40 orders with the
contract's default limit, 20 per 60 s (about two minutes).

The margin is small on purpose (the brief's "margin small").  The daemon
stamps a request's send time when it takes the slot, the sim stamps its
arrival when its handler starts; a request that waited longer on the way
(the sim is one Python process verifying one Ed25519 signature per request,
and 64 requests may be in flight) than one sent a window later can make the
sim count 501 in its 1 s window.  Rows 4c count what the sim saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from bench.harness import Settings, event_time, progress, sim_and_daemon
from bench.procs import CLK_TCK, Child, SimProcess, daemon_env, proc_status_kb
from bench.report import Figure, percentile

__all__ = ["run", "run_contract_default", "run_naive"]

RATE = 500
MARGIN = 0.05
TARGET_TIME = 1.1  # x N/R
TARGET_POLLS = 1.2  # per order
SIM = {"status_limit": [RATE, 1.0], "cancel_all_limit": [100, 1.0], "cancel_delay": [0.02, 0.3]}
DAEMON = {
    "cancel_all": {"rate_limit": {"requests": 100, "per_seconds": 1, "margin": 0.05}},
    # The per-id confirmer is what this measures (bench/flat.py measures the listings).
    "confirm": {
        "use_listings": False,
        "rate_limit": {"requests": RATE, "per_seconds": 1, "margin": MARGIN},
    },
}


def _seed_spec(n: int) -> dict[str, int]:
    return {"BTCUSDT": n // 2, "ETHUSDT": n - n // 2}


async def run(settings: Settings) -> list[Figure]:
    plan = [(1000, settings.runs(10, 3)), (10_000, settings.runs(3, 1))]
    figures: list[Figure] = []
    async with sim_and_daemon(settings, "confirm", sim=SIM, daemon=DAEMON) as (sim, daemon):
        kills = 0
        for n, runs in plan:
            violations_before = sum((await sim.stats())["violations"].values())
            seconds: list[float] = []
            polls: list[float] = []
            cpu: dict[str, list[float]] = {"daemon_ms_per_poll": [], "sim_ms_per_poll": []}
            for r in range(runs):
                await sim.seed(_seed_spec(n))
                await asyncio.sleep(1.2)  # a whole status window (1 s + margin) has passed
                ticks = daemon.cpu_ticks(), sim.cpu_ticks()
                daemon.send(signal.SIGUSR1)
                kills += 1
                timeout = 5 * n / RATE + 30
                done = await daemon.completed(kills, timeout=timeout, interval=0.05)
                for key, proc, before in (
                    ("daemon_ms_per_poll", daemon, ticks[0]),
                    ("sim_ms_per_poll", sim, ticks[1]),
                ):
                    used = (proc.cpu_ticks() - before) / CLK_TCK
                    cpu[key].append(1000 * used / max(1, done["polls"]))
                accepted = daemon.log.named("cancel_all.accepted")[kills - 1]
                if done["cancelled"] + done["filled"] != n or accepted["order_count"] != n:
                    raise RuntimeError(f"N={n}: kill.completed does not add up: {done}")
                seconds.append(event_time(done) - event_time(accepted))
                polls.append(done["polls"] / n)
                progress(f"confirm N={n} run {r + 1}/{runs}: {seconds[-1]:.2f} s")
            got = _figures(settings, n, RATE, seconds, polls)
            got[0].details["cpu (whole kill, per status poll)"] = cpu
            violations = sum((await sim.stats())["violations"].values()) - violations_before
            got.append(
                Figure(
                    settings.key(f"confirm.{n}.violations"),
                    settings.label(
                        f"4c. confirm N={n:,}: rate-limit violations seen by the sim"
                        f" (margin {MARGIN:g} s)"
                    ),
                    "count",
                    [float(violations)],
                    target="0",
                    met=violations == 0,
                )
            )
            figures += got
        hwm_mb = _hwm_mb(daemon.pid)
    figures.append(
        Figure(
            settings.key("confirm.hwm"),
            settings.label("4d. peak RSS (VmHWM) after the 10,000-order kills"),
            "MB",
            [hwm_mb],
        )
    )
    return figures


def _hwm_mb(pid: int) -> float:
    return proc_status_kb(pid, "VmHWM") / 1024


def _figures(
    settings: Settings,
    n: int,
    rate: float,
    seconds: list[float],
    polls: list[float],
    rate_label: str = "",
    numbers: tuple[str, str] = ("4", "4b"),
) -> list[Figure]:
    bound = n / rate
    time_ok = percentile(seconds, 99) <= TARGET_TIME * bound
    polls_ok = percentile(polls, 99) <= TARGET_POLLS
    return [
        Figure(
            settings.key(f"confirm.{n}.seconds"),
            settings.label(
                f"{numbers[0]}. confirm N={n:,}, R={rate_label or f'{rate:g}/s'}:"
                " ack → kill.completed"
            ),
            "s",
            seconds,
            target=f"≤ {TARGET_TIME}x N/R",
            met=time_ok,
            base=bound,
            base_label="N/R",
        ),
        Figure(
            settings.key(f"confirm.{n}.polls"),
            settings.label(f"{numbers[1]}. confirm N={n:,}: status polls per order"),
            "polls",
            polls,
            target=f"≤ {TARGET_POLLS}",
            met=polls_ok,
        ),
    ]


async def run_contract_default(settings: Settings) -> list[Figure]:
    """4e. One kill of 40 orders at the contract's default 20 status polls per 60 s."""
    n = 40
    sim = {"status_limit": [20, 60.0], "cancel_delay": [0.02, 0.3]}
    daemon = {"confirm": {"use_listings": False}}
    async with sim_and_daemon(settings, "confirm-default", sim=sim, daemon=daemon) as (exchange, d):
        await exchange.seed(_seed_spec(n))
        d.send(signal.SIGUSR1)
        progress("confirm at 20/60 s: 40 orders, about two minutes")
        done = await d.completed(1, timeout=600, interval=0.5)
        accepted = d.log.named("cancel_all.accepted")[0]
        stats = await exchange.stats()
    seconds = event_time(done) - event_time(accepted)
    violations = sum(stats["violations"].values())
    figures = _figures(
        settings,
        n,
        20 / 60,
        [seconds],
        [done["polls"] / n],
        "20 per 60 s (contract default)",
        ("4e", "4f"),
    )
    for f in figures:
        f.key += ".contract_default"
        f.details["violations"] = violations
        f.met = f.met and violations == 0
    return figures


async def run_naive(settings: Settings) -> list[Figure]:
    """7. The straightforward script (:mod:`bench.naive_confirm`) on scenario 4, N = 1,000."""
    n = 1000
    runs = settings.runs(3, 1)
    directory = settings.directory("naive")
    sim = SimProcess(directory, **SIM)
    await sim.start()
    results: list[dict[str, Any]] = []
    try:
        for r in range(runs):
            before = (await sim.stats())["violations"]["order_status"]
            await sim.seed(_seed_spec(n))
            await asyncio.sleep(1.2)
            script = Child(
                f"naive-{r}",
                [sys.executable, "-m", "bench.naive_confirm", sim.base_url],
                directory,
                daemon_env(),
            )
            await script.start()
            assert script.proc is not None
            await asyncio.wait_for(script.proc.wait(), 300)
            await script.stop()
            result = json.loads(script.out_path.read_text().strip().splitlines()[-1])
            after = (await sim.stats())["violations"]["order_status"]
            result["violations"] = after - before
            results.append(result)
            progress(f"naive N={n} run {r + 1}/{runs}: {result['seconds']:.2f} s")
    finally:
        await sim.stop()
    seconds = [float(x["seconds"]) for x in results]
    polls = [x["polls"] / n for x in results]
    violations = [float(x["violations"]) for x in results]
    details = {"runs": results}
    return [
        Figure(
            "naive.seconds",
            f"7. naive script N={n:,}: ack → all terminal",
            "s",
            seconds,
            base=n / RATE,
            base_label="N/R",
            note="context",
            details=details,
        ),
        Figure("naive.polls", "7b. naive script: status polls per order", "polls", polls),
        Figure(
            "naive.violations",
            "7c. naive script: rate-limit violations seen by the sim",
            "count",
            violations,
        ),
    ]

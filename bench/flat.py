"""8. Time to proven flat, at the venue's default limits (issue 9).

The sim holds N open orders over 2 symbols; each cancel takes 50-500 ms to
reach its final status.  Every endpoint runs at the venue's default limit
(``cancel_all`` 10/60 s, order status, open orders and closed orders 20/60 s
each), on the sim and in the daemon's config alike.  One kill per run, each
with a fresh sim and daemon (so every window starts full).  Measured from the
moment the bench sends SIGUSR1 (wall clock) to the daemon's ``kill.flat`` and
``kill.completed`` event timestamps; requests per endpoint and violations as
the sim counted them.

``flat_poll`` is the same run with ``confirm.use_listings = false``: per-id
status polls only, no flat proof, as the daemon confirmed before issue 9.
At 20 polls a minute that needs at least N/20 minutes: by default it runs
N = 50 and 200; ``--slow`` adds 1,000 (about 50 minutes).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bench.harness import Settings, event_time, progress, sim_and_daemon
from bench.report import Figure

__all__ = ["SIZES", "run", "run_large", "run_polling", "run_sizes"]

SIZES = (50, 200, 1000)
CANCEL_DELAY = [0.05, 0.5]
TARGET_FLAT = 1.0  # s, N = 200 (issue 22: "as fast as today")
TARGET_COMPLETED = 2.0  # s, N = 200 (issue 22)
ENDPOINTS = ("cancel_all", "order_status", "open_orders", "closed_orders")


VENUE_LIMITS: dict[str, Any] = {
    "cancel_all_limit": [10, 60.0],
    "status_limit": [20, 60.0],
    "open_orders_limit": [20, 60.0],
    "closed_orders_limit": [20, 60.0],
}
"""The venue's documented limits (the daemon's defaults): what this scenario is about."""


def _seed_spec(n: int) -> dict[str, int]:
    return {"BTCUSDT": n // 2, "ETHUSDT": n - n // 2}


async def one_kill(settings: Settings, n: int, *, listings: bool) -> dict[str, Any]:
    """One kill of ``n`` orders at the venue's defaults; what it took."""
    name = f"flat-{n}" if listings else f"flat-poll-{n}"
    daemon_cfg: dict[str, Any] = {
        "confirm": {"use_listings": listings, "deadline": 7200},
        "flat": {"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}},
        "guard": {"enabled": False},
    }
    sim_cfg: dict[str, Any] = {
        "cancel_delay": CANCEL_DELAY,
        "seed": n,
        **VENUE_LIMITS,
    }
    async with sim_and_daemon(settings, name, sim=sim_cfg, daemon=daemon_cfg) as (sim, daemon):
        await sim.seed(_seed_spec(n))
        t0 = time.time()
        os.kill(daemon.pid, signal.SIGUSR1)
        timeout = 600.0 if listings else 4 * 60 * n / 20 + 120
        completed = await daemon.completed(1, timeout=timeout, interval=0.05)
        done = await daemon.log.wait_for("kill.classified", timeout=timeout, interval=0.05)
        flat = daemon.log.named("kill.flat")
        stats = await sim.stats()
    requests = {e: stats["requests"].get(e, 0) for e in ENDPOINTS}
    violations = {e: stats["violations"].get(e, 0) for e in ENDPOINTS}
    truth = stats["orders"]
    result = {
        "n": n,
        "listings": listings,
        "flat_s": event_time(flat[0]) - t0 if flat else None,
        "completed_s": event_time(completed) - t0,
        "classified_s": event_time(done) - t0,
        "unclassified_at_completed": completed.get("unclassified"),
        "requests": requests,
        "violations": violations,
        "summary": {
            k: done.get(k)
            for k in (
                "cancelled",
                "filled",
                "partially_filled",
                "other",
                "unknown",
                "unconfirmed",
                "flat",
                "leftover",
                "polls",
                "listed",
            )
        },
        "truth": truth,
    }
    counted = sum(done.get(k, 0) for k in ("cancelled", "filled", "partially_filled"))
    if counted != n:  # the final counts (kill.classified)
        raise RuntimeError(f"{name}: kill.classified counts {counted} of {n} orders: {done}")
    progress(
        f"{name}: flat {result['flat_s']} s, completed {result['completed_s']:.2f} s, "
        f"requests {requests}, violations {sum(violations.values())}"
    )
    return result


def _figures(settings: Settings, r: dict[str, Any], *, listings: bool) -> list[Figure]:
    n = r["n"]
    tag = "" if listings else ".poll"
    what = "flat proof + listings" if listings else "per-id polling only"
    violations = sum(r["violations"].values())
    details = {
        "requests": r["requests"],
        "violations": r["violations"],
        "kill": r["summary"],
        "classified_s": r.get("classified_s"),
        "unclassified_at_completed": r.get("unclassified_at_completed"),
    }
    figures = []
    if listings:
        flat_s = r["flat_s"]
        figures.append(
            Figure(
                settings.key(f"flat.{n}.flat{tag}"),
                settings.label(f"8. N={n:,} ({what}): trigger → kill.flat"),
                "s",
                [] if flat_s is None else [flat_s],
                target=f"≤ {TARGET_FLAT:g} s" if n == 200 else "",
                met=(flat_s is not None and flat_s <= TARGET_FLAT) if n == 200 else None,
                details=details,
            )
        )
    target = f"≤ {TARGET_COMPLETED:g} s" if listings else "≥ 600 s (N=200)"
    met: bool | None = None
    if n == 200:
        met = r["completed_s"] <= TARGET_COMPLETED if listings else r["completed_s"] >= 600
    figures.append(
        Figure(
            settings.key(f"flat.{n}.completed{tag}"),
            settings.label(f"8b. N={n:,} ({what}): trigger → kill.completed"),
            "s",
            [r["completed_s"]],
            target=target if n == 200 else "",
            met=met,
            details=details,
        )
    )
    figures.append(
        Figure(
            settings.key(f"flat.{n}.requests{tag}"),
            settings.label(
                f"8c. N={n:,} ({what}): requests cancel_all/status/open/closed = "
                + "/".join(str(r["requests"][e]) for e in ENDPOINTS)
            ),
            "requests",
            [float(sum(r["requests"].values()))],
            details=details,
        )
    )
    figures.append(
        Figure(
            settings.key(f"flat.{n}.violations{tag}"),
            settings.label(f"8d. N={n:,} ({what}): rate-limit violations, all four endpoints"),
            "count",
            [float(violations)],
            target="0",
            met=violations == 0,
            details=details,
        )
    )
    return figures


async def run_sizes(settings: Settings, sizes: tuple[int, ...], *, listings: bool) -> list[Figure]:
    figures: list[Figure] = []
    for n in sizes:
        figures += _figures(
            settings, await one_kill(settings, n, listings=listings), listings=listings
        )
    return figures


async def run(settings: Settings) -> list[Figure]:
    """Scenario ``flat``: N = 50, 200, 1,000 with the flat proof (N = 50 with --quick)."""
    return await run_sizes(settings, (50,) if settings.quick else SIZES, listings=True)


async def run_polling(settings: Settings) -> list[Figure]:
    """Scenario ``flat_poll``: the same with per-id polling only (slow: minutes per run)."""
    sizes = (50,) if settings.quick else SIZES if settings.slow else (50, 200)
    return await run_sizes(settings, sizes, listings=False)


# --------------------------------------------------------------------------- large kills

LARGE_N = 10_000
LARGE_RATE = 500  # status requests per second: a venue tier above the default
TARGET_LARGE = 1.1  # x N / R


async def run_large(settings: Settings) -> list[Figure]:
    """Scenario ``large``: 10,000 orders with listings ON (the default), the status budget at
    500/s and the listings at the venue's 20 / 60 s: trigger → kill.completed against
    1.1 x N/R (issue 22 §3: listing pages and status polls used together)."""
    n = 1_000 if settings.quick else LARGE_N
    bound = n / LARGE_RATE
    daemon_cfg: dict[str, Any] = {
        "confirm": {
            "deadline": 7200,
            "rate_limit": {"requests": LARGE_RATE, "per_seconds": 1, "margin": 0.05},
        },
        "flat": {"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}},
        "guard": {"enabled": False},
    }
    sim_cfg: dict[str, Any] = {
        "cancel_delay": CANCEL_DELAY,
        "seed": n,
        **VENUE_LIMITS,
        "status_limit": [LARGE_RATE, 1.0],
    }
    async with sim_and_daemon(settings, f"large-{n}", sim=sim_cfg, daemon=daemon_cfg) as (
        sim,
        daemon,
    ):
        await sim.seed(_seed_spec(n))
        t0 = time.time()
        os.kill(daemon.pid, signal.SIGUSR1)
        completed = await daemon.completed(1, timeout=600, interval=0.05)
        done = await daemon.log.wait_for("kill.classified", timeout=600, interval=0.05)
        flat = daemon.log.named("kill.flat")
        stats = await sim.stats()
    completed_s = event_time(completed) - t0
    classified_s = event_time(done) - t0
    violations = sum(stats["violations"].get(e, 0) for e in ENDPOINTS)
    requests = {e: stats["requests"].get(e, 0) for e in ENDPOINTS}
    counted = sum(done.get(k, 0) for k in ("cancelled", "filled", "partially_filled"))
    details = {
        "requests": requests,
        "flat_s": event_time(flat[0]) - t0 if flat else None,
        "classified_s": classified_s,
        "unclassified_at_completed": completed.get("unclassified"),
        "counted": counted,
    }
    progress(
        f"large-{n}: completed {completed_s:.2f} s, classified {classified_s:.2f} s "
        f"(N/R {bound:.1f} s), requests {requests}, violations {violations}"
    )
    target = f"≤ {TARGET_LARGE * bound:.1f} s (1.1 x N/R)"
    return [
        Figure(
            settings.key(f"large.{n}.completed"),
            settings.label(
                f"8e. N={n:,}, listings on, status {LARGE_RATE}/s: trigger → kill.completed"
            ),
            "s",
            [completed_s],
            target=target,
            met=completed_s <= TARGET_LARGE * bound and counted == n,
            details=details,
        ),
        Figure(
            settings.key(f"large.{n}.classified"),
            settings.label(f"8f. N={n:,}, listings on: trigger → kill.classified (every outcome)"),
            "s",
            [classified_s],
            target=target,
            met=classified_s <= TARGET_LARGE * bound and counted == n,
            details=details,
        ),
        Figure(
            settings.key(f"large.{n}.violations"),
            settings.label(f"8g. N={n:,}, listings on: rate-limit violations"),
            "count",
            [float(violations)],
            target="0",
            met=violations == 0,
            details=details,
        ),
    ]

"""A kill you can watch: kill.progress on a virtual clock, its estimate from the budgets,
and the STATUS= line that carries it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.kill.plan import KillPlan, plan_sweeps
from killswitch.kill.progress import PROGRESS_EVERY, estimate, format_eta
from killswitch.kill.runner import KillRunner
from killswitch.store.state import StateStore
from tests.fake_venue import Listed, VenueFake
from tests.fakes import FakeClock
from tests.test_kill import make_config, named


class LimitedVenue(VenueFake):
    """The in-process venue, with cancels and status polls paid through real sliding windows."""

    limiter: SlidingWindowLimiter
    cancel_limiter: SlidingWindowLimiter

    async def cancel_all(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> list[str]:
        await self.cancel_limiter.acquire()
        return await super().cancel_all(exchange, symbol, on_sent=on_sent)

    async def order_status(self, order_id: str) -> Listed:
        await self.limiter.acquire()
        return await super().order_status(order_id)


def test_time_for_plays_the_window_forward() -> None:
    """20 per 60 s with 20 just sent: 1 more needs the window (60.5 s), 21 more need two."""
    clock = FakeClock(100.0)
    limiter = SlidingWindowLimiter("s", 20, 60.0, clock, margin=0.5, history=[100.0] * 20)
    assert limiter.time_for(0) == 0.0
    assert limiter.time_for(1) == 60.5
    assert limiter.time_for(20) == 60.5
    assert limiter.time_for(21) == 121.0
    fresh = SlidingWindowLimiter("s", 20, 60.0, clock)
    assert fresh.time_for(20) == 0.0
    assert estimate({"s": 21, "other": 5}, {"s": limiter}) == 121.0


def test_format_eta_reads_in_seconds_or_minutes() -> None:
    """Short estimates in s, long ones in min; a stuck kill has none."""
    assert format_eta(None) == "no estimate"
    assert format_eta(0.2) == "waiting on the venue"
    assert format_eta(42.4) == "~42 s left"
    assert format_eta(210.0) == "~3.5 min left"


async def test_kill_progress_every_few_seconds_with_an_estimate(tmp_path: Path) -> None:
    """50 orders at 20 status polls per minute: kill.progress every PROGRESS_EVERY s with
    confirmed/total, outcomes, the budgets left and an estimate that matches the real end."""
    clock = FakeClock(1_000.0)
    venue = LimitedVenue(clock)
    venue.limiter = SlidingWindowLimiter("order_status", 20, 60.0, clock, margin=0.5)
    cancel = venue.cancel_limiter = SlidingWindowLimiter("cancel_all", 10, 60.0, clock)
    venue.seed("BTC", 50)
    config = make_config(use_listings=False)
    store = StateStore(tmp_path / "state.db")
    store.open()
    runner = KillRunner(
        config,
        venue,
        store,
        clock,
        status_gate=venue.limiter,
        budgets={"cancel_all": cancel, "order_status": venue.limiter},
    )
    sweeps = plan_sweeps(config.targets)
    store.start_kill("k1", "manual", "test", clock.time(), sweeps)
    assert runner.progress_report() is None  # no kill yet
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run(KillPlan("k1", "manual", "test", sweeps)))
        await clock.run_until(task)
    store.close()
    summary: dict[str, Any] = task.result().summary
    duration = summary["duration_ms"] / 1000

    events = named(logs, "kill.progress")
    assert len(events) == int(duration // PROGRESS_EVERY)  # every 5 s, none after the end
    assert all(e["kill_id"] == "k1" and e["total"] == 50 for e in events)
    confirmed = [e["confirmed"] for e in events]
    assert confirmed == sorted(confirmed)
    assert confirmed[0] == 20
    assert confirmed[-1] < 50
    first = events[0]
    assert first["outcomes"]["cancelled"] == 20
    assert first["budgets"] == {"cancel_all": 9, "order_status": 0}
    assert first["sweeps_left"] == 0
    # 30 polls left at 20 per 60.5 s: the estimate names the end the kill really had.
    assert abs(first["elapsed_s"] + first["eta_s"] - duration) < 1.0
    assert all(abs(e["elapsed_s"] + e["eta_s"] - duration) < 1.0 for e in events)
    assert summary["cancelled"] == 50
    assert runner.progress_report() is None  # the kill is over


async def test_with_listings_the_estimate_counts_pages_not_polls(tmp_path: Path) -> None:
    """With the flat proof, the requests left are one open listing per target not yet flat
    and a closed page per 49 orders, not a status poll per order; with the budgets free and
    the venue still cancelling, the estimate says the rest is the venue's time."""
    clock = FakeClock(1_000.0)
    venue = VenueFake(clock)
    venue.cancel_delay = 30.0
    venue.seed("BTC", 100)
    config = make_config()
    budgets = {
        name: SlidingWindowLimiter(name, 20, 60.0, clock)
        for name in ("cancel_all", "order_status", "open_orders", "closed_orders")
    }
    store = StateStore(tmp_path / "state.db")
    store.open()
    runner = KillRunner(config, venue, store, clock, listings=venue, budgets=budgets)
    sweeps = plan_sweeps(config.targets)
    store.start_kill("k1", "manual", "test", clock.time(), sweeps)
    task = asyncio.create_task(runner.run(KillPlan("k1", "manual", "test", sweeps)))
    await clock.advance(1.0)
    progress = runner.progress_report()
    assert progress is not None
    assert progress["confirmed"] == 0
    assert progress["total"] == 100
    assert progress["requests_left"] == {"open_orders": 1, "closed_orders": 3}
    assert format_eta(progress["eta_s"]) == "waiting on the venue"
    await clock.run_until(task)
    store.close()
    assert task.result().classified.result()["cancelled"] == 100

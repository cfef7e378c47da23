"""The tripped guard: lists every interval while TRIPPED, sweeps and confirms what is open,
stops at reset, on a virtual clock against the in-process venue."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from killswitch.config.load import parse_config
from killswitch.kill.guard import Guard
from tests.fake_venue import VenueFake
from tests.fakes import FakeClock, settle

START = 1_000.0


async def test_guard_sweeps_orders_placed_after_the_kill_until_reset() -> None:
    """While tripped, each guard.interval the targets are listed (default window); open
    orders are logged as guard.swept, swept per symbol and confirmed; after a reset the
    guard sends nothing."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    config = parse_config(
        {
            "targets": [{"exchange": "EX", "symbols": []}],
            "guard": {"interval": 10},
            "confirm": {"first_poll_delay": 0.25},
        }
    )
    tripped = True
    guard = Guard(lambda: config, venue, venue, clock, tripped=lambda: tripped)
    task = asyncio.create_task(guard.run())
    with capture_logs() as logs:
        await clock.advance(10.0)  # first run: nothing open
        assert venue.count("open_orders") == 1
        assert venue.calls[0].detail == (None, False, 0)  # unscoped, default window
        late = venue.seed("BTC", 3) + venue.seed("ETH", 1)
        await clock.advance(10.0)
        await clock.advance(5.0)
        swept = [e for e in logs if e["event"] == "guard.swept"]
        assert [(e["symbol"], e["order_ids"]) for e in swept] == [
            ("BTC", sorted(late[:3])),
            ("ETH", late[3:]),
        ]
        assert venue.truth() == {"CANCELLED": 4}
        assert guard.last_run is not None
        assert (guard.last_run["open"], guard.last_run["cancelled"]) == (4, 4)
        tripped = False
        guard.state_changed()
        await settle()
        calls = len(venue.calls)
        venue.seed("BTC", 2)
        await clock.advance(100.0)
        assert len(venue.calls) == calls  # reset: the guard is idle
        assert guard.status()["active"] is False
    task.cancel()


async def test_guard_disabled_never_lists() -> None:
    """guard.enabled = false: no listing while tripped."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    config = parse_config({"targets": [{"exchange": "EX"}], "guard": {"enabled": False}})
    guard = Guard(lambda: config, venue, venue, clock, tripped=lambda: True)
    task = asyncio.create_task(guard.run())
    venue.seed("BTC", 1)
    await clock.advance(100.0)
    assert venue.calls == []
    task.cancel()

"""Damped warnings: a burst, then a few a minute, the count never lost."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from killswitch.damping import Damper
from killswitch.log import get_logger


async def test_burst_then_suppressed_count_on_the_next_one_through() -> None:
    """A flood logs `rate` events, then the next one admitted carries the suppressed count."""
    damper = Damper(rate=3, per=3)  # a burst of 3, then one a second
    log = get_logger()
    with capture_logs() as logs:
        logged = [damper.warning(log, "pnl.invalid", n=i) for i in range(3)]
        await asyncio.sleep(0.5)  # the flood starts after the burst filled the bucket
        logged += [damper.warning(log, "pnl.invalid", n=i) for i in range(3, 1000)]
        assert logged.count(True) == 3
        assert damper.suppressed("pnl.invalid") == 997
        # Room for one a drip period (1 s) after the burst, before the flush (1 s after
        # the first suppressed one) would report the count by itself.
        await asyncio.sleep(0.65)
        assert damper.warning(log, "pnl.invalid", n=1000)
    assert [e["n"] for e in logs] == [0, 1, 2, 1000]
    assert "suppressed" not in logs[0]
    assert logs[-1]["suppressed"] == 997
    assert logs[-1]["log_level"] == "warning"


async def test_kinds_and_keys_are_damped_separately() -> None:
    """One flooding kind (or key) does not silence another."""
    damper = Damper(rate=2, per=60)
    log = get_logger()
    with capture_logs() as logs:
        for _ in range(50):
            damper.warning(log, "ratelimit.wait", key="cancel_all")
        damper.warning(log, "ratelimit.wait", key="order_status")
        damper.error(log, "pnl.breach")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("ratelimit.wait", "warning"),
        ("ratelimit.wait", "warning"),
        ("ratelimit.wait", "warning"),
        ("pnl.breach", "error"),
    ]


async def test_flood_that_stops_still_reports_its_count() -> None:
    """When no further event comes, the last suppressed one is logged with the count."""
    damper = Damper(rate=2, per=0.2)
    log = get_logger()
    with capture_logs() as logs:
        for i in range(10):
            damper.warning(log, "control.error", n=i)
        for _ in range(100):
            if len(logs) == 3:
                break
            await asyncio.sleep(0.02)
    assert [e["n"] for e in logs] == [0, 1, 9]
    assert logs[-1]["suppressed"] == 7  # 2..8; n=9 itself is the one logged
    assert damper.suppressed("control.error") == 0


def test_outside_a_running_loop_nothing_is_damped() -> None:
    """Synchronous start-up code has no flood to damp: every event is logged."""
    damper = Damper(rate=1, per=60)
    with capture_logs() as logs:
        for _ in range(5):
            damper.warning(get_logger(), "pnl.invalid")
    assert len(logs) == 5

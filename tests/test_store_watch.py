"""The daemon's side of a failing store: events, damping, metrics, re-opening."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from killswitch.service.metrics import Metrics
from killswitch.store.state import StateStore
from killswitch.store.watch import StoreWatch
from tests.fakes import FakeClock


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_unavailable_store_is_reopened_and_gets_the_current_latch(tmp_path: Path) -> None:
    """store.unavailable at open; once the path works, store.recovered and the latch is written."""
    clock = FakeClock()
    (tmp_path / "state").write_text("")
    store = StateStore(tmp_path / "state" / "state.db")
    prom = Metrics()
    watch = StoreWatch(store, prom, clock, retry_every=10.0)
    with capture_logs() as logs:
        problem = watch.open(asyncio.get_running_loop())
        assert problem is not None
        assert [(e["event"], e["log_level"]) for e in logs] == [("store.unavailable", "critical")]
        assert logs[0]["path"] == str(tmp_path / "state" / "state.db")
        assert prom.registry.get_sample_value("killswitch_store_ok") == 0.0
        task = asyncio.create_task(watch.run(lambda: (True, "k1")))
        await clock.advance(10.0)  # still a file: no second event for the same problem
        await asyncio.sleep(0.05)
        assert [e["event"] for e in logs] == ["store.unavailable"]
        (tmp_path / "state").unlink()
        (tmp_path / "state").mkdir()
        await clock.advance(10.0)
        await _until(lambda: any(e["event"] == "store.recovered" for e in logs))
        task.cancel()
    await store.flush()
    assert store.latch() == (True, "k1")
    assert prom.registry.get_sample_value("killswitch_store_ok") == 1.0
    assert (
        prom.registry.get_sample_value("killswitch_store_failures_total", {"kind": "unavailable"})
        == 1.0
    )
    store.close()


async def test_write_failures_are_damped(tmp_path: Path) -> None:
    """store.write_failed at most once per log_every; the next one carries suppressed."""
    clock = FakeClock()
    store = StateStore(tmp_path / "s.db")
    watch = StoreWatch(store, Metrics(), clock, log_every=10.0)
    error = sqlite3.OperationalError("database or disk is full")
    with capture_logs() as logs:
        watch.open(asyncio.get_running_loop())
        report = store.writer.on_error  # what the writer thread calls
        assert report is not None
        for _ in range(5):
            report(error, 3)
            await asyncio.sleep(0)
        await clock.advance(10.0)
        report(error, 1)
        await asyncio.sleep(0)
    failed = [e for e in logs if e["event"] == "store.write_failed"]
    assert [(e["writes_lost"], e.get("suppressed")) for e in failed] == [(3, None), (1, 4)]
    assert failed[0]["detail"] == "database or disk is full"
    store.close()

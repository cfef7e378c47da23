"""A kill you can watch, end to end: the real daemon (on uvloop where installed) killed by
SIGUSR1 logs kill.progress, and `killswitch status --watch` follows it to the end."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.loop import loop_factory
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]

pytestmark = pytest.mark.e2e


async def test_sigusr1_kill_is_watched_to_its_end(sim_factory: SimFactory, workdir: Path) -> None:
    """40 orders polled one by one at 10 per 3 s: the daemon runs on uvloop (Linux), logs
    kill.progress with an estimate while the kill runs, and status --watch redraws a progress
    bar and exits 0 once it shows TRIPPED."""
    sim, url = await sim_factory(status_limit=(2000, 1.0), cancel_delay=(0.01, 0.05), seed=5)
    sim.seed({"BTCUSDT": 40})
    config = write_config(
        workdir,
        url,
        confirm={
            "use_listings": False,
            "rate_limit": {"requests": 10, "per_seconds": 3, "margin": 0.05},
        },
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    [ready] = daemon.named("daemon.ready")
    assert ready["loop"] == ("asyncio" if loop_factory() is None else "uvloop")

    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "killswitch", "status", "--watch", "--interval", "0.5",
        "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed", timeout=60)
    out, err = await asyncio.wait_for(watcher.communicate(), 30)
    assert await daemon.stop() == 0

    assert watcher.returncode == 0, err.decode()
    screens = out.decode().split("killswitch status --watch")[1:]
    killing = [s for s in screens if "KILLING:" in s]
    assert killing, out.decode()[-2000:]
    assert any("] " in s and "/40 confirmed" in s and " left" in s for s in killing)
    assert "TRIPPED:" in screens[-1]

    progress: list[dict[str, Any]] = daemon.named("kill.progress")
    assert progress, "no kill.progress while a ~9 s kill ran"
    assert all(p["kill_id"] == done["kill_id"] and p["total"] == 40 for p in progress)
    assert all(p["eta_s"] is not None and "order_status" in p["budgets"] for p in progress)
    assert done["cancelled"] == 40

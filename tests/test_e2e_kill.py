"""End to end: the real daemon process, real signals, the simulated exchange as referee."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def _check_against_truth(summary: dict[str, Any], sim: SimExchange, seeded: int) -> None:
    truth = sim.stats()
    assert summary["cancelled"] == truth["orders"].get("CANCELLED", 0)
    assert summary["filled"] == truth["orders"].get("EXECUTED", 0)
    assert summary["cancelled"] + summary["filled"] == seeded
    assert summary["unknown"] == summary["unconfirmed"] == summary["other"] == 0
    assert sum(truth["violations"].values()) == 0


async def test_sigusr1_kill_confirms_every_order(workdir: Path, sim_factory: SimFactory) -> None:
    """SIGUSR1 → cancel_all → every order polled to terminal; counts match the exchange."""
    sim, url = await sim_factory(
        fill_ratio=0.1, cancel_delay=(0.02, 0.3), seed=7, status_limit=(2000, 1.0)
    )
    sim.seed({"BTCUSDT": 120, "ETHUSDT": 60, "SOLUSDT": 20})
    # order.status is a debug event (kill.progress summarises it at info)
    daemon = DaemonProcess(write_config(workdir, url, log={"level": "debug"}))
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    _check_against_truth(done, sim, 200)
    assert done["filled"] > 0
    fired = daemon.named("trigger.fired")
    assert fired[0]["source"] == "signal"
    assert daemon.named("kill.started")[0]["kill_id"] == done["kill_id"]
    accepted = daemon.named("cancel_all.accepted")
    assert [a["order_count"] for a in accepted] == [200]
    assert accepted[0]["exchange"] == "EXCHANGE_2"
    statuses = {e["order_id"]: e["status"] for e in daemon.named("order.status")}
    assert len(statuses) == 200
    assert await daemon.stop() == 0
    assert daemon.named("daemon.stopping")


async def test_trigger_storm_is_one_kill(workdir: Path, sim_factory: SimFactory) -> None:
    """A burst of SIGUSR1 during a kill coalesces into it: one kill, 0 violations; a
    signal after its sweeps were answered sweeps again (v3), and only then."""
    sim, url = await sim_factory(cancel_delay=(0.8, 1.2), seed=3, status_limit=(2000, 1.0))
    sim.seed({"BTCUSDT": 50})
    daemon = DaemonProcess(write_config(workdir, url))
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.started")
    for _ in range(100):
        daemon.send(signal.SIGUSR1)
    await daemon.wait_for("trigger.fired", lambda e: e["coalesced"])
    done = await daemon.wait_for("kill.completed")
    _check_against_truth(done, sim, 50)
    assert len(daemon.named("kill.started")) == 1
    fired = daemon.named("trigger.fired")[1:]
    assert all(e["coalesced"] for e in fired)
    resweeps = sum(1 for e in fired if e.get("resweep"))
    assert resweeps == done["resweeps"] < 10  # a resweep joins no resweep still unanswered
    assert sim.stats()["requests"]["cancel_all"] == 1 + resweeps
    assert sum(sim.stats()["violations"].values()) == 0
    assert await daemon.stop() == 0


async def test_scoped_sweeps_wait_for_the_window(workdir: Path, sim_factory: SimFactory) -> None:
    """5 scoped sweeps under a 2-per-1 s limit: the daemon waits; the strict server sees 0."""
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
    sim, url = await sim_factory(cancel_all_limit=(2, 1.0), status_limit=(2000, 1.0), seed=1)
    sim.seed(dict.fromkeys(symbols, 4))
    config = write_config(
        workdir,
        url,
        targets=[{"exchange": "EXCHANGE_2", "symbols": symbols}],
        cancel_all={"rate_limit": {"requests": 2, "per_seconds": 1, "margin": 0.05}},
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    _check_against_truth(done, sim, 20)
    assert sorted(a["symbol"] for a in daemon.named("cancel_all.accepted")) == sorted(symbols)
    assert daemon.named("ratelimit.wait")
    assert sim.stats()["requests"]["cancel_all"] == 5
    assert await daemon.stop() == 0


async def test_sigterm_during_idle_exits_zero(workdir: Path, sim_factory: SimFactory) -> None:
    """SIGTERM on an idle daemon: daemon.stopping, exit status 0, socket removed."""
    _, url = await sim_factory()
    daemon = DaemonProcess(write_config(workdir, url))
    await daemon.start()
    assert (workdir / "ctl.sock").exists()
    assert await daemon.stop(signal.SIGINT) == 0
    assert daemon.named("daemon.stopping")
    assert not (workdir / "ctl.sock").exists()

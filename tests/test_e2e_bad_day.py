"""End to end: a kill on a bad day (contract v3 §1) — the button always sweeps, and a proven
kill completes while the budgets it no longer needs are starved.

The listings share the API key with a strategy that spent their budget: the
simulated exchange answers the closed-orders listing 429 several times.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
WAIT = 30.0


async def _status(workdir: Path) -> dict[str, Any]:
    code, body = await ControlClient(workdir / "ctl.sock", timeout=10.0).request("GET", "/status")
    assert code == 200
    assert isinstance(body, dict)
    return body


def _statuses(sim: SimExchange, ids: set[str]) -> set[str]:
    return {status for order, status in sim.book.with_status() if order.order_id in ids}


async def test_second_signal_after_the_sweep_sweeps_the_new_orders(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGUSR1 again while the kill still runs, its sweep answered and 50 new orders open:
    trigger.fired coalesced + resweep, a second cancel_all, the new orders cancelled."""
    sim, url = await sim_factory(cancel_delay=(1.0, 1.2), seed=31, status_limit=(2000, 1.0))
    sim.seed({"BTCUSDT": 200})
    sim.inject("closed_orders", "429", count=1)
    daemon = DaemonProcess(write_config(workdir, url))
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("cancel_all.accepted", timeout=WAIT)
    fresh = set(sim.seed({"BTCUSDT": 50}))  # the strategy did not stop
    assert (await _status(workdir))["state"] == "KILLING"  # orders still cancelling (>= 1 s)
    daemon.send(signal.SIGUSR1)

    again = await daemon.wait_for("trigger.fired", lambda e: e["coalesced"], timeout=WAIT)
    assert again["resweep"] is True
    accepted = await daemon.wait_for("cancel_all.accepted", count=2, timeout=WAIT)
    assert accepted["order_count"] >= len(fresh)
    done = await daemon.wait_for("kill.completed", timeout=WAIT)
    assert done["resweeps"] == 1
    assert done["flat"] is True
    assert sim.stats()["requests"]["cancel_all"] == 2
    assert _statuses(sim, fresh) <= {"CANCELLATION_RAISED", "CANCELLED"}
    final = await daemon.wait_for("kill.classified", timeout=WAIT)
    assert final["cancelled"] == 250
    assert _statuses(sim, fresh) == {"CANCELLED"}
    # The flat proof listed again after the second sweep reached the venue (its own log).
    second = [r.monotonic for r in sim.requests if r.endpoint == "cancel_all"][1]
    assert any(r.endpoint == "open_orders" and r.monotonic > second for r in sim.requests)
    assert sum(sim.stats()["violations"].values()) == 0
    assert await daemon.stop() == 0


async def test_kill_completes_when_proven_while_classification_is_starved(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Closed listing answering 429, status budget at the venue's 20 / 60 s: kill.completed
    (with unclassified) right after kill.flat, TRIPPED, then kill.classified with the truth."""
    sim, url = await sim_factory(cancel_delay=(0.02, 0.1), seed=32)
    sim.seed({"BTCUSDT": 200})
    sim.inject("closed_orders", "429", count=2)
    config = write_config(
        workdir, url, confirm={"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}}
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    daemon.send(signal.SIGUSR1)

    flat = await daemon.wait_for("kill.flat", timeout=WAIT)
    done = await daemon.wait_for("kill.completed", timeout=WAIT)
    assert done["flat"] is True
    assert done["unclassified"] > 0  # the classification had not ended...
    assert done["unclassified"] + done["cancelled"] == 200
    assert daemon.named("kill.classified") == []
    assert (await _status(workdir))["state"] == "TRIPPED"  # ...and does not hold KILLING
    assert flat["duration_ms"] <= done["duration_ms"]
    final = await daemon.wait_for("kill.classified", timeout=WAIT)
    assert final["kill_id"] == done["kill_id"]
    assert final["unclassified"] == 0
    assert final["cancelled"] == 200 == sim.book.truth()["cancelled"]
    failed = [e for e in daemon.named("flat.list_failed") if e.get("listing") == "closed_orders"]
    assert len(failed) == 2  # each 429 retried, not abandoned for 200 status polls
    assert sim.stats()["requests"]["order_status"] < 20
    last = (await _status(workdir))["last_kill"]
    assert last["cancelled"] == 200
    assert sum(sim.stats()["violations"].values()) == 0
    assert await daemon.stop() == 0

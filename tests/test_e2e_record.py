"""End to end: ``killswitch history`` and ``report`` read the record of a real kill from the
state store, read-only, while the daemon runs and after it died (contract §16)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "killswitch",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=daemon_env(),
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _digest(directory: Path) -> dict[str, str]:
    """The database and its WAL (the -shm is sqlite's shared index of the WAL, not data:
    a reader maps it and takes its read lock there)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("state.db*"))
        if not p.name.endswith("-shm")
    }


async def test_report_of_a_kill_with_leftovers_partial_fills_a_stuck_sweep_and_a_reset(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """A kill with partial fills, leftovers (a trader that keeps placing), a sweep the venue
    rejected until the symbol resumed, and a reset: the report names each, order by order,
    while the daemon runs and, unchanged, after a SIGKILL; the store's bytes are untouched."""
    sim, url = await sim_factory(partial_fill_ratio=0.3, cancel_delay=(0.05, 0.2), seed=11)
    sim.seed({"BTCUSDT": 12, "ETHUSDT": 6})
    sim.reject("ETHUSDT", 422, "symbol ETHUSDT is suspended")
    config = write_config(
        workdir, url, targets=[{"exchange": "EXCHANGE_2", "symbols": ["BTCUSDT", "ETHUSDT"]}]
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    await sim.start_trader({"BTCUSDT": 3}, interval=0.05, on_cancel_all=True)
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("exchange.rejected")
    sim.reject("ETHUSDT", None)  # the symbol resumes: the next retry (5 s later) succeeds
    await daemon.wait_for("kill.unstuck", timeout=15)
    await sim.stop_trader()
    done = await daemon.wait_for("kill.completed", timeout=30)
    assert done["leftover"] > 0
    assert done["partially_filled"] > 0
    code, _ = await ControlClient(workdir / "ctl.sock").request(
        "POST", "/reset", {"reason": "venue resumed ETHUSDT; strategy stopped"}
    )
    assert code == 200
    reset = await daemon.wait_for("switch.reset")
    # The journal's row follows the event by one writer batch (5 ms and an fsync).
    async with asyncio.timeout(10):
        while True:
            code, running, err = await _cli("report", "--config", str(config))
            assert code == 0, err
            if "RESET" in running:
                break
            await asyncio.sleep(0.05)
    for needle in ("LEFTOVER", "Partial fills", "STUCK: venue rejected", "RESET", "FLAT"):
        assert needle in running, needle
    assert reset["reason"] == "venue resumed ETHUSDT; strategy stopped"  # contract §13
    assert "venue resumed ETHUSDT" in running
    assert "who: not recorded" not in running  # the reset's peer is in the record
    assert done["kill_id"] in running
    history = json.loads((await _cli("history", "--config", str(config), "--json"))[1])
    assert [k["kill_id"] for k in history] == [done["kill_id"]]
    assert history[0]["reset"] is not None

    await daemon.kill()
    before = _digest(workdir)
    code, dead, _ = await _cli("report", "--config", str(config), done["kill_id"])
    assert code == 0
    # The same record (the alerts may have been delivered in between: not compared).
    assert dead.split("\nAlerts\n")[0] == running.split("\nAlerts\n")[0]
    as_json: dict[str, Any] = json.loads(
        (await _cli("report", "--config", str(config), "--json"))[1]
    )
    assert _digest(workdir) == before
    leftovers = [o for o in as_json["orders"] if o["leftover"]]
    assert len(leftovers) == done["leftover"]
    partial = [o for o in as_json["orders"] if o["outcome"] == "partially filled"]
    # At least what kill.completed counted (outcomes learned after it land in the store too),
    # at most what the venue holds.
    assert done["partially_filled"] <= len(partial) <= sim.stats()["orders"]["PARTIALLY_EXECUTED"]
    assert any(e["event"] == "exchange.rejected" for e in as_json["timeline"])


async def test_report_of_no_such_kill_exits_1(workdir: Path, sim_factory: SimFactory) -> None:
    """``report`` of an id the store does not hold exits 1 naming it; without a store, 1 too."""
    _sim, url = await sim_factory()
    config = write_config(workdir, url)
    code, _, err = await _cli("report", "--config", str(config))
    assert code == 1
    assert "no state store" in err
    daemon = DaemonProcess(config)
    await daemon.start()
    await daemon.stop()
    code, _, err = await _cli("report", "--config", str(config), "feedfacefeedface")
    assert code == 1
    assert "feedfacefeedface" in err
    code, out, _ = await _cli("history", "--config", str(config))
    assert code == 0
    assert "No kill" in out


async def test_keep_kills_bounds_the_history_of_a_running_daemon(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """With ``keep_kills = 2``, four kills (each reset) leave the newest two in the history,
    and the report of a removed one exits 1."""
    sim, url = await sim_factory()
    config = write_config(workdir, url, state={"keep_kills": 2})
    daemon = DaemonProcess(config)
    await daemon.start()
    kills = []
    for n in range(1, 5):
        sim.seed({"BTCUSDT": 2})
        daemon.send(signal.SIGUSR1)
        kills.append((await daemon.wait_for("kill.completed", count=n))["kill_id"])
        code, _ = await ControlClient(workdir / "ctl.sock").request("POST", "/reset")
        assert code == 200
    await daemon.stop()
    history = json.loads((await _cli("history", "--config", str(config), "--json"))[1])
    assert [k["kill_id"] for k in history] == kills[:1:-1]
    code, _, err = await _cli("report", "--config", str(config), kills[0])
    assert code == 1
    assert kills[0] in err

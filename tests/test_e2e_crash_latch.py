"""End to end: SIGKILL between a kill's first ``cancel_all`` and its first commit (§9, v3).

The daemon decides a kill on the trigger path and writes its record from the
store's writer thread a batch later.  ``KILLSWITCH_TEST_COMMIT_DELAY`` holds
that first commit back 1.5 s, so the test can crash the daemon on purpose at
several points of the window (0 ms to 600 ms after the exchange received the
``cancel_all``), not by luck.  Each restart must come up latched, resume the
kill by proof (``kill.resumed`` with ``by_proof``), and complete it with the
simulated exchange's own count of what was cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Sized
from pathlib import Path

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
WAIT = 30.0
ORDERS = 200
COMMIT_DELAY = 1.5  # seconds the first commit is held back in the crashing daemon
OFFSETS = (0.0, 0.05, 0.6)  # after the exchange received cancel_all: all before the commit


def _kills(workdir: Path) -> list[str]:
    uri = f"file:{workdir / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
        return [row[0] for row in db.execute("SELECT kill_id FROM kills")]


def _more(items: Sized, than: int) -> bool:
    return len(items) > than


async def _until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


async def test_sigkill_before_the_first_commit_resumes_the_kill_by_proof(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL 0-600 ms after cancel_all arrived, record not committed: TRIPPED, completed."""
    sim, url = await sim_factory(cancel_delay=(0.01, 0.05), seed=22, status_limit=(2000, 1.0))
    for n, offset in enumerate(OFFSETS):
        directory = workdir / f"round{n}"
        directory.mkdir()
        symbol = f"R{n}USDT"  # each round lists only its own orders
        ids = set(sim.seed({symbol: ORDERS}))
        config = write_config(
            directory, url, targets=[{"exchange": "EXCHANGE_2", "symbols": [symbol]}]
        )
        first = DaemonProcess(config, daemon_env(KILLSWITCH_TEST_COMMIT_DELAY=str(COMMIT_DELAY)))
        await first.start()
        arrivals = sim.cancel_all_arrivals
        before = len(arrivals)
        first.send(signal.SIGUSR1)
        await _until(functools.partial(_more, arrivals, before), "cancel_all arrives")
        await asyncio.sleep(offset)
        await first.kill()
        assert _kills(directory) == [], f"round {n}: the record was committed: no window"
        # (at 0 ms the venue may not have read the body yet: the cancel may not have happened)

        second = DaemonProcess(config)
        await second.start()
        assert second.named("daemon.ready")[0]["state"] != "ARMED", f"round {n}: latch lost"
        resumed = await second.wait_for("kill.resumed", timeout=WAIT)
        assert resumed["by_proof"] is True
        done = await second.wait_for("kill.completed", timeout=WAIT)
        assert done["kill_id"] == resumed["kill_id"]
        # What the first process's cancel cancelled is learned after the proof (recovered
        # from the closed orders since the kill started): kill.classified has the counts.
        final = await second.wait_for("kill.classified", timeout=WAIT)
        assert final["kill_id"] == done["kill_id"]
        truth = {status for order, status in sim.book.with_status() if order.order_id in ids}
        assert truth == {"CANCELLED"}
        assert final["cancelled"] == ORDERS, (n, final)
        assert final["unknown"] == final["unconfirmed"] == 0
        code, body = await ControlClient(directory / "ctl.sock", timeout=10.0).request(
            "GET", "/status"
        )
        assert code == 200
        assert isinstance(body, dict)
        assert body["state"] == "TRIPPED"
        assert await second.stop() == 0
        assert resumed["kill_id"] in _kills(directory)
    assert sum(sim.stats()["violations"].values()) == 0

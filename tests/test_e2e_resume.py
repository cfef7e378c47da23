"""End to end: SIGKILL the real daemon mid-kill, start it again on the same state db (§9).

Each test crashes the daemon at one point of a kill, then checks what the
restarted daemon does against the simulated exchange's truth: the latch is
still set, ``kill.resumed`` names the same kill and the orders still pending,
a ``cancel_all`` that was never acknowledged goes out again (an acknowledged
one does not), every order ends terminal, and neither process broke a limit.

The daemon queues its store writes on a writer thread and does not wait for
them, so "the daemon logged it" does not yet mean "it is on disk": before each
SIGKILL the test waits until the state db shows the crash point it wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]

TERMINAL = frozenset({"CANCELLED", "EXECUTED", "EXPIRED", "DISCARDED", "FAILED", "REJECTED"})
WAIT = 30.0  # generous: two cores, other test runs at the same time


def _rows(workdir: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the daemon's state db (read-only; WAL lets us read while it writes)."""
    uri = f"file:{workdir / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
        return db.execute(sql, params).fetchall()


def _persisted(workdir: Path, sql: str, *params: object) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(_rows(workdir, sql, *params)[0][0])
        except sqlite3.OperationalError:  # the db or its tables are not there yet
            return False

    return check


async def _until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``check`` (the sim or the state db: neither can notify) every 10 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def _state(workdir: Path) -> dict[str, Any]:
    code, body = await ControlClient(workdir / "ctl.sock", timeout=10.0).request("GET", "/status")
    assert code == 200
    assert isinstance(body, dict)
    return body


def _db_orders(workdir: Path, kill_id: str) -> dict[str, str]:
    rows = _rows(workdir, "SELECT order_id, status FROM orders WHERE kill_id = ?", kill_id)
    return {order_id: status for order_id, status in rows}


async def _start_kill(daemon: DaemonProcess, workdir: Path) -> str:
    """SIGUSR1; the kill id once the kill and its latch are on disk."""
    daemon.send(signal.SIGUSR1)
    kill_id = str((await daemon.wait_for("kill.started", timeout=WAIT))["kill_id"])
    await _until(
        _persisted(workdir, "SELECT COUNT(*) FROM kills WHERE kill_id = ?", kill_id),
        "the kill is in the state db",
    )
    return kill_id


async def _resume(config: Path, workdir: Path) -> tuple[DaemonProcess, float]:
    """Start the daemon again; it must come up latched, KILLING.  Returns it and its start time."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    daemon = DaemonProcess(config)
    await daemon.start()
    assert daemon.named("daemon.ready")[0]["state"] == "KILLING"
    return daemon, started


async def _finish_resumed(
    daemon: DaemonProcess,
    workdir: Path,
    sim: SimExchange,
    *,
    kill_id: str,
    pending: int,
    seeded: int,
) -> dict[str, Any]:
    """The resumed kill: same id, ``pending`` orders, completes; counts are the exchange's truth."""
    resumed = await daemon.wait_for("kill.resumed", timeout=WAIT)
    assert resumed["kill_id"] == kill_id
    assert resumed["pending_orders"] == pending
    done = await daemon.wait_for("kill.completed", timeout=WAIT)
    assert (await _state(workdir))["state"] == "TRIPPED"
    assert done["kill_id"] == kill_id
    assert done["resumed"] is True
    assert daemon.named("kill.started") == []
    truth = sim.stats()
    assert set(truth["orders"]) <= {"CANCELLED", "EXECUTED"}, truth["orders"]
    assert done["cancelled"] == truth["orders"].get("CANCELLED", 0)
    assert done["filled"] == truth["orders"].get("EXECUTED", 0)
    assert done["cancelled"] + done["filled"] == seeded
    assert done["other"] == done["unknown"] == done["unconfirmed"] == 0
    assert sum(truth["violations"].values()) == 0
    assert await daemon.stop() == 0
    assert len(_db_orders(workdir, kill_id)) == seeded
    assert set(_db_orders(workdir, kill_id).values()) <= TERMINAL
    return done


async def test_crash_with_cancel_all_in_flight_resends_it(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL while cancel_all is unanswered: the restart resumes the kill and sends it again."""
    sim, url = await sim_factory(
        cancel_delay=(0.8, 1.0), fill_ratio=0.2, seed=11, status_limit=(2000, 1.0)
    )
    sim.seed({"BTCUSDT": 30, "ETHUSDT": 10})
    sim.inject("cancel_all", "timeout", count=1, delay=10.0)  # held, then 504: cancels nothing
    config = write_config(workdir, url, exchange={"request_timeout": 8.0})
    first = DaemonProcess(config)
    await first.start()
    kill_id = await _start_kill(first, workdir)
    await _until(lambda: len(sim.cancel_all_arrivals) == 1, "cancel_all reaches the exchange")
    assert (await _state(workdir))["state"] == "KILLING"
    await first.kill()
    assert first.named("cancel_all.accepted") == []
    assert sim.stats()["orders"] == {"RAISED": 40}

    second, _ = await _resume(config, workdir)
    assert (await _state(workdir))["state"] == "KILLING"  # the orders take >= 0.8 s to cancel
    await _finish_resumed(second, workdir, sim, kill_id=kill_id, pending=0, seeded=40)
    assert sim.stats()["requests"]["cancel_all"] == 2
    assert [a["order_count"] for a in second.named("cancel_all.accepted")] == [40]


async def test_crash_before_any_order_is_terminal_polls_without_resending(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL after cancel_all was acknowledged: the restart polls every order, sends no 2nd."""
    sim, url = await sim_factory(cancel_delay=(1.5, 2.0), seed=12, status_limit=(2000, 1.0))
    sim.seed({"BTCUSDT": 40})
    config = write_config(workdir, url, log={"level": "debug"})  # order.status is debug
    first = DaemonProcess(config)
    await first.start()
    kill_id = await _start_kill(first, workdir)
    await first.wait_for("cancel_all.accepted", timeout=WAIT)
    await first.wait_for("order.status", count=40, timeout=WAIT)
    await _until(
        _persisted(workdir, "SELECT COUNT(*) FROM sweeps WHERE kill_id = ? AND acked_at", kill_id),
        "the acknowledgement is in the state db",
    )
    assert sim.stats()["orders"] == {"CANCELLATION_RAISED": 40}
    await first.kill()
    assert len(_db_orders(workdir, kill_id)) == 40

    second, _ = await _resume(config, workdir)
    await _finish_resumed(second, workdir, sim, kill_id=kill_id, pending=40, seeded=40)
    assert sim.stats()["requests"]["cancel_all"] == 1
    assert second.named("cancel_all.sent") == []
    assert {e["order_id"] for e in second.named("order.status")} == set(
        _db_orders(workdir, kill_id)
    )


async def test_crash_mid_confirmation_polls_only_what_is_pending(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL with some orders terminal: the restart polls only the rest, counts match truth."""
    sim, url = await sim_factory(
        cancel_delay=(0.05, 2.0), fill_ratio=0.25, seed=13, status_limit=(2000, 1.0)
    )
    sim.seed({"BTCUSDT": 30, "ETHUSDT": 10})
    # Per-id polls resolve orders one by one (listings resolve them in a batch at the end).
    # order.status is a debug event
    config = write_config(workdir, url, confirm={"use_listings": False}, log={"level": "debug"})
    first = DaemonProcess(config)
    await first.start()
    kill_id = await _start_kill(first, workdir)
    await first.wait_for("order.status", lambda e: e["status"] in TERMINAL, count=5, timeout=WAIT)
    terminal = "SELECT COUNT(*) >= 5 FROM orders WHERE kill_id = ? AND status IN (?, ?)"
    await _until(
        _persisted(workdir, terminal, kill_id, "CANCELLED", "EXECUTED"),
        "5 terminal statuses are on disk",
    )
    await first.kill()
    at_crash = _db_orders(workdir, kill_id)
    pending = {oid for oid, status in at_crash.items() if status not in TERMINAL}
    assert len(at_crash) == 40
    assert 0 < len(pending) < 40

    second, _ = await _resume(config, workdir)
    await _finish_resumed(second, workdir, sim, kill_id=kill_id, pending=len(pending), seeded=40)
    assert sim.stats()["requests"]["cancel_all"] == 1
    assert {e["order_id"] for e in second.named("order.status")} == pending


async def test_restart_remembers_cancel_all_sends_and_waits(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """2 cancel_all sent (503) under a 2-per-3 s limit, SIGKILL: the restart waits, 0 violations."""
    sim, url = await sim_factory(
        cancel_all_limit=(2, 3.0), cancel_delay=(0.02, 0.1), seed=14, status_limit=(2000, 1.0)
    )
    sim.seed({"BTCUSDT": 20})
    sim.inject("cancel_all", "503", count=1000)
    config = write_config(
        workdir,
        url,
        cancel_all={"rate_limit": {"requests": 2, "per_seconds": 3, "margin": 0.5}},
    )
    first = DaemonProcess(config)
    await first.start()
    kill_id = await _start_kill(first, workdir)
    await first.wait_for("ratelimit.wait", lambda e: e["endpoint"] == "cancel_all", timeout=WAIT)
    await _until(
        _persisted(workdir, "SELECT COUNT(*) = 2 FROM sends WHERE endpoint = 'cancel_all'"),
        "both sends are in the state db",
    )
    await first.kill()
    assert len(sim.cancel_all_arrivals) == 2
    sim.clear_faults()

    second, _ = await _resume(config, workdir)
    assert (await _state(workdir))["state"] == "KILLING"  # held by the rate limit for ~2 s
    await _finish_resumed(second, workdir, sim, kill_id=kill_id, pending=0, seeded=20)
    events = [e["event"] for e in second.events]
    assert events.index("ratelimit.wait") < events.index("cancel_all.sent")
    waited = second.named("ratelimit.wait")[0]
    assert waited["endpoint"] == "cancel_all"
    assert waited["seconds"] > 0
    arrivals = [a["monotonic"] for a in sim.stats()["cancel_all_arrivals"]]
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] >= 3.0


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "killswitch", *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
    )


async def test_restart_after_completed_kill_stays_tripped_until_reset(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL after kill.completed: the restart is TRIPPED, sends nothing; reset re-arms it."""
    sim, url = await sim_factory(cancel_delay=(0.02, 0.1), seed=15, status_limit=(2000, 1.0))
    sim.seed({"BTCUSDT": 10})
    config = write_config(workdir, url)
    first = DaemonProcess(config)
    await first.start()
    kill_id = await _start_kill(first, workdir)
    await first.wait_for("kill.classified", timeout=WAIT)  # the final counts (v3)
    classified = (
        "SELECT COUNT(*) FROM kills WHERE kill_id = ? AND completed_at"
        " AND json_extract(summary, '$.unclassified') = 0"
    )
    await _until(_persisted(workdir, classified, kill_id), "the classified kill is in the db")
    await first.kill()
    fresh = set(sim.seed({"ETHUSDT": 5}))  # opened after the kill: not the restart's to cancel
    sent = dict(sim.stats()["requests"])

    second = DaemonProcess(config)
    await second.start()
    assert second.named("daemon.ready")[0]["state"] == "TRIPPED"
    status = await _state(workdir)
    assert status["state"] == "TRIPPED"
    assert status["last_kill"]["kill_id"] == kill_id
    assert status["last_kill"]["cancelled"] == 10
    result = await _cli("reset", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ARMED" in result.stdout
    assert (await _state(workdir))["state"] == "ARMED"
    assert await second.stop() == 0
    for name in ("kill.resumed", "kill.started", "cancel_all.sent", "trigger.fired"):
        assert second.named(name) == [], name
    stats = sim.stats()
    for endpoint in ("cancel_all", "order_status"):
        assert stats["requests"][endpoint] == sent[endpoint]
    assert all(sim.book.orders[oid].status == "RAISED" for oid in fresh)

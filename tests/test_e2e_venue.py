"""End to end, the venue's bad days (issue 9): the real daemon process against the sim.

Each test drives the simulated exchange through its admin API (``/_sim/``) into
one bad day, fires a kill with SIGUSR1 and checks the result against the sim's
own truth: no order still working, the daemon's counts equal to the sim's,
``kill.completed`` proven ``flat``, and 0 rate-limit violations on all four
limited endpoints.  The sim runs at the venue's default limits (cancel_all
10/60 s, the other three 20/60 s): every scenario here fits them.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
ENDPOINTS = ("cancel_all", "order_status", "open_orders", "closed_orders")
WAIT = 60.0  # generous: two cores shared with other test runs


class Admin:
    """The sim's ``/_sim/`` admin API over HTTP, as another process would drive it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def call(self, method: str, route: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base_url + route, json=body) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def seed(self, orders: dict[str, int], **extra: Any) -> list[str]:
        answer = await self.call("POST", "/_sim/seed", {"orders": orders, **extra})
        return list(answer["order_ids"])

    async def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self.call("GET", "/_sim/stats")
        return answer


def _config(workdir: Path, url: str, **overrides: Any) -> Path:
    """The harness config at the venue's default status limit, guard slowed down."""
    base: dict[str, Any] = {
        "confirm": {"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}},
        "guard": {"interval": 30},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return write_config(workdir, url, **base)


async def _kill(daemon: DaemonProcess) -> dict[str, Any]:
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed", timeout=WAIT)
    return await daemon.wait_for("kill.classified", timeout=WAIT)  # the final counts (v3)


async def _assert_flat_and_true(
    admin: Admin, done: dict[str, Any], *, extra: dict[str, int] | None = None
) -> dict[str, Any]:
    """The account is flat at the sim's truth, the kill's counts (plus ``extra``) are the
    sim's, the kill was proven flat, and no limited endpoint saw a violation."""
    truth = await admin.stats()
    assert truth["open"] == [], truth["orders"]
    counts = {k: done[k] + (extra or {}).get(k, 0) for k in ("cancelled", "filled")}
    partial = done["partially_filled"] + (extra or {}).get("partially_filled", 0)
    assert counts["cancelled"] == truth["cancelled"]
    assert counts["filled"] == truth["executed"]
    assert partial == truth["partially_executed"]
    assert done["unknown"] == done["unconfirmed"] == done["other"] == 0
    assert done["flat"] is True
    assert {e: truth["violations"][e] for e in ENDPOINTS} == dict.fromkeys(ENDPOINTS, 0)
    return truth


async def _status(workdir: Path) -> dict[str, Any]:
    code, body = await ControlClient(workdir / "ctl.sock", timeout=10.0).request("GET", "/status")
    assert code == 200
    assert isinstance(body, dict)
    return body


async def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "killswitch", *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False, env=env
    )


# --------------------------------------------------------------------------- the bad days


async def test_clock_90_seconds_off(workdir: Path, sim_factory: SimFactory) -> None:
    """The venue's clock is 90 s ahead of the host's: the daemon measures the offset at
    start (clock.synced), signs with the corrected clock, and the kill is proven flat."""
    _sim, url = await sim_factory(cancel_delay=(0.05, 0.5), seed=21)
    admin = Admin(url)
    await admin.call("POST", "/_sim/clock", {"offset_ms": 90_000})
    await admin.seed({"BTCUSDT": 20, "ETHUSDT": 20})
    daemon = DaemonProcess(_config(workdir, url))
    await daemon.start()
    synced = daemon.named("clock.synced") or [await daemon.wait_for("clock.synced")]
    assert abs(synced[0]["offset_ms"] - 90_000) < 2_000
    done = await _kill(daemon)
    truth = await _assert_flat_and_true(admin, done)
    assert truth["cancelled"] == 40
    assert truth["answers"]["cancel_all"].get("401", 0) == 0
    assert abs((await _status(workdir))["exchange"]["offset_ms"] - 90_000) < 2_000
    assert await daemon.stop() == 0


@pytest.mark.parametrize("kind", ["lost_ack_502", "lost_ack_timeout"])
async def test_lost_acknowledgement(workdir: Path, sim_factory: SimFactory, kind: str) -> None:
    """cancel_all cancels every order but its answer is lost (502, or no answer in time):
    an unknown outcome, retried; the listings find every order it cancelled, so the counts
    still equal the sim's truth."""
    _sim, url = await sim_factory(cancel_delay=(0.05, 0.5), seed=22)
    admin = Admin(url)
    await admin.seed({"BTCUSDT": 25, "ETHUSDT": 25})
    await admin.call("POST", "/_sim/faults", {"endpoint": "cancel_all", "kind": kind})
    daemon = DaemonProcess(_config(workdir, url))
    await daemon.start()
    done = await _kill(daemon)
    failed = daemon.named("cancel_all.failed")
    assert failed
    assert failed[0]["outcome_unknown"] is True
    truth = await _assert_flat_and_true(admin, done)
    assert truth["cancelled"] == 50
    assert done["cancelled"] == 50
    # The retried cancel_all named none of them: the listings found every one.
    found = {
        i
        for name in ("flat.recovered", "flat.leftover")
        for e in daemon.named(name)
        for i in e["order_ids"]
    }
    assert len(found) == 50
    assert await daemon.stop() == 0


async def test_thirty_percent_partial_fills(workdir: Path, sim_factory: SimFactory) -> None:
    """30 % of the orders end PARTIALLY_EXECUTED (terminal on futures): counted as
    partially_filled, each confirmed once, none left polling to the deadline."""
    _sim, url = await sim_factory(cancel_delay=(0.05, 0.5), seed=23)
    admin = Admin(url)
    await admin.call("POST", "/_sim/behaviour", {"partial_fill_ratio": 0.3})
    await admin.seed({"BTCUSDT": 30, "ETHUSDT": 30})
    daemon = DaemonProcess(_config(workdir, url))
    await daemon.start()
    done = await _kill(daemon)
    truth = await _assert_flat_and_true(admin, done)
    assert truth["partially_executed"] > 0
    assert done["partially_filled"] == truth["partially_executed"]
    assert daemon.named("order.unconfirmed") == []
    assert await daemon.stop() == 0


async def test_orders_placed_during_and_after_the_kill(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """A strategy that does not stop: orders placed while the kill runs are leftovers
    (flat.leftover, swept again, confirmed); those placed after it are swept by the
    tripped guard (guard.swept) until the reset, after which the guard sends nothing."""
    _sim, url = await sim_factory(cancel_delay=(0.2, 0.5), seed=24)
    admin = Admin(url)
    await admin.seed({"BTCUSDT": 20})
    daemon = DaemonProcess(_config(workdir, url, guard={"interval": 2}))
    await daemon.start()
    await admin.call(
        "POST",
        "/_sim/trader",
        {"orders": {"ETHUSDT": 4}, "interval": 0.1, "on_cancel_all": True},
    )
    done = await _kill(daemon)
    assert done["leftover"] > 0
    leftovers = {i for e in daemon.named("flat.leftover") for i in e["order_ids"]}
    assert len(leftovers) == done["leftover"]
    await admin.call("POST", "/_sim/trader", {"stop": True})
    # After the kill: more orders, which only the guard can see.
    late = set(await admin.seed({"ETHUSDT": 3}))
    swept = await daemon.wait_for(
        "guard.swept", lambda e: set(e["order_ids"]) & late == late, timeout=WAIT
    )
    assert swept["symbol"] == "ETHUSDT"
    await daemon.wait_for("guard.confirmed", lambda e: e["open"] >= 3, timeout=WAIT)
    guard_counts = {"cancelled": 0, "filled": 0, "partially_filled": 0}
    for event in daemon.named("guard.confirmed"):
        for key in guard_counts:
            guard_counts[key] += event[key]
    await _assert_flat_and_true(admin, done, extra=guard_counts)
    assert (await _status(workdir))["guard"]["last_run"] is not None
    result = await _cli("reset", "--config", str(daemon.config))
    assert result.returncode == 0, result.stderr
    runs = (await _status(workdir))["guard"]["runs"]
    await asyncio.sleep(5)  # two guard intervals: an idle guard lists nothing
    assert (await _status(workdir))["guard"]["runs"] == runs
    assert await daemon.stop() == 0


async def test_orders_10_and_20_days_old(workdir: Path, sim_factory: SimFactory) -> None:
    """Resting orders created 10 and 20 days ago, outside the listings' default window:
    with flat.lookback_days = 21 the proof lists back over three 7-day windows and the
    account is still proven flat."""
    _sim, url = await sim_factory(cancel_delay=(0.05, 0.5), seed=25)
    admin = Admin(url)
    await admin.seed({"BTCUSDT": 10})
    old = await admin.seed({"BTCUSDT": 3, "ETHUSDT": 3}, age_days=10)
    older = await admin.seed({"ETHUSDT": 4}, age_days=20)
    # order.status is a debug event
    daemon = DaemonProcess(
        _config(workdir, url, flat={"lookback_days": 21}, log={"level": "debug"})
    )
    await daemon.start()
    done = await _kill(daemon)
    truth = await _assert_flat_and_true(admin, done)
    assert truth["cancelled"] == 20
    statuses = {e["order_id"]: e["status"] for e in daemon.named("order.status")}
    assert {statuses.get(i) for i in [*old, *older]} <= {"CANCELLED", "CANCELLATION_RAISED"}
    assert await daemon.stop() == 0


async def test_symbol_rejected_with_422_then_reset_force(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """cancel_all for one symbol is refused with 422: exchange.rejected with the venue's
    message, retried slowly, the kill stays KILLING and status says why (stuck); the other
    symbol is proven flat meanwhile.  reset --force abandons the kill and re-arms."""
    _sim, url = await sim_factory(cancel_delay=(0.05, 0.3), seed=26)
    admin = Admin(url)
    message = "symbol: XRPUSDT is suspended"
    await admin.call(
        "POST", "/_sim/reject", {"symbol": "XRPUSDT", "status": 422, "message": message}
    )
    await admin.seed({"BTCUSDT": 10, "XRPUSDT": 5})
    config = _config(
        workdir, url, targets=[{"exchange": "EXCHANGE_2", "symbols": ["BTCUSDT", "XRPUSDT"]}]
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    rejected = await daemon.wait_for("exchange.rejected", timeout=WAIT)
    assert rejected["http_status"] == 422
    assert rejected["message"] == message
    await daemon.wait_for("exchange.rejected", count=2, timeout=WAIT)
    status = await _status(workdir)
    assert status["state"] == "KILLING"
    assert status["stuck"]["why"] == message
    # The trading process's heartbeat (its trigger is off here) reads the state.
    code, beat = await ControlClient(workdir / "ctl.sock").request("POST", "/heartbeat")
    assert (code, beat["state"]) == (200, "KILLING")
    assert status["stuck"]["next_retry_in"] > 0
    refused = await _cli("reset", "--config", str(config))
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    forced = await _cli("reset", "--force", "--config", str(config))
    assert forced.returncode == 0, forced.stderr
    abandoned = await daemon.wait_for("kill.abandoned", timeout=WAIT)
    assert abandoned["stuck"] == message
    assert (await _status(workdir))["state"] == "ARMED"
    again = await _cli("reset", "--config", str(config))
    assert "already armed" in again.stdout
    truth = await admin.stats()
    assert {e: truth["violations"][e] for e in ENDPOINTS} == dict.fromkeys(ENDPOINTS, 0)
    assert truth["orders"].get("CANCELLED", 0) + truth["orders"].get("EXECUTED", 0) == 10
    gaps = [e["retry_in"] for e in daemon.named("exchange.rejected")]
    assert gaps[:2] == [5.0, 10.0]
    assert await daemon.stop() == 0


async def test_check_config_online_with_a_wrong_key(workdir: Path, sim_factory: SimFactory) -> None:
    """check-config --online with a key the venue does not know: exit 1 and the venue's
    answer; with the right key: exit 0."""
    _, url = await sim_factory(seed=27)
    config = _config(workdir, url)
    wrong = daemon_env(KILLSWITCH_API_KEY="not-the-demo-key")
    bad = await _cli("check-config", "--online", "--config", str(config), env=wrong)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "401" in bad.stdout + bad.stderr
    good = await _cli("check-config", "--online", "--config", str(config), env=daemon_env())
    assert good.returncode == 0, good.stdout + good.stderr


async def test_crash_during_the_flat_proof_resumes_it(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL while a leftover sweep is in flight: the restarted daemon resumes the kill
    (kill.resumed), re-sends that sweep, re-runs the flat proof and completes with the
    leftovers counted, the counts equal to the sim's and 0 violations."""
    import sqlite3

    _sim, url = await sim_factory(cancel_delay=(0.05, 0.3), seed=28)
    admin = Admin(url)
    await admin.seed({"BTCUSDT": 20})
    await admin.call(
        "POST",
        "/_sim/trader",
        {"orders": {"ETHUSDT": 3}, "interval": 0.0, "on_cancel_all": True},
    )
    config = _config(workdir, url, exchange={"request_timeout": 20.0})
    first = DaemonProcess(config)
    await first.start()
    first.send(signal.SIGUSR1)
    await first.wait_for("cancel_all.accepted", timeout=WAIT)
    # The next cancel_all (the leftover sweep) is held and never performed.
    await admin.call(
        "POST", "/_sim/faults", {"endpoint": "cancel_all", "kind": "timeout", "delay": 30}
    )
    leftover = await first.wait_for("flat.leftover", timeout=WAIT)
    assert len(leftover["order_ids"]) == 3

    def recorded() -> bool:
        uri = f"file:{workdir / 'state.db'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=5.0) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM sweeps WHERE leftover = 1 AND acked_at IS NULL"
            ).fetchone()
        return bool(row[0])

    async with asyncio.timeout(WAIT):
        while not recorded():
            await asyncio.sleep(0.01)
    await first.kill()
    assert (await admin.stats())["open"]  # the leftovers are still working

    second = DaemonProcess(config)
    await second.start()
    resumed = await second.wait_for("kill.resumed", timeout=WAIT)
    assert resumed["pending_sweeps"] == 1
    await second.wait_for("kill.completed", timeout=WAIT)
    done = await second.wait_for("kill.classified", timeout=WAIT)  # the final counts (v3)
    assert done["resumed"] is True
    assert done["leftover"] == 3
    await _assert_flat_and_true(admin, done)
    assert done["cancelled"] == 23
    assert await second.stop() == 0


async def test_demo_proves_flat_at_the_venue_limits() -> None:
    """`killswitch demo` runs at the venue's default limits and ends proven flat, its counts
    equal to the sim's and no violation on any endpoint (exit 0)."""
    result = await _cli("demo", "--orders", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kill.flat" in result.stdout
    assert "result: OK, proven flat" in result.stdout
    assert "closed_orders 0" in result.stdout.split("violations")[-1]

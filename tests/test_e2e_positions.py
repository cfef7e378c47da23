"""End to end, the positions a kill leaves and their closes (issue 18, contract §12).

The real daemon against the simulated exchange, which holds positions that fills
move and counts, as a strict referee, what must never happen: a position that
flips, a reduce-only order larger than the position it met (a double close), an
order placed while the symbol still had working orders, and a request over any
of the six limits.  Every test checks those against the sim's own truth.
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
ENDPOINTS = (
    "cancel_all",
    "order_status",
    "open_orders",
    "closed_orders",
    "positions",
    "place_order",
)
WAIT = 60.0  # generous: two cores shared with other test runs
# BTC: 0.5 long at 60 000 (notional 30 000, one stop-loss); ETH: 3 short at 2 000 (6 000).
BOOK = {
    "BTCUSDT": {"side": "LONG", "size": "0.5", "entry_price": "60000", "stops": 1},
    "ETHUSDT": {"side": "SHORT", "size": "3", "entry_price": "2000"},
}


async def _admin(url: str, route: str, body: Any = None) -> Any:
    """The sim's admin API over HTTP, as another process drives it."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + route, json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _config(workdir: Path, url: str, **overrides: Any) -> Path:
    """Unscoped target, venue-default limits on the six endpoints, ETH named in
    ``positions.symbols`` (BTC is in scope only through the kill's own stop order)."""
    base: dict[str, Any] = {
        "confirm": {"rate_limit": {"requests": 20, "per_seconds": 60, "margin": 0.5}},
        "guard": {"interval": 30},
        "positions": {"symbols": ["ETHUSDT"]},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return write_config(workdir, url, **base)


async def _setup(sim_factory: SimFactory, seed: int) -> tuple[SimExchange, str]:
    sim, url = await sim_factory(cancel_delay=(0.02, 0.1), seed=seed)
    await _admin(url, "/_sim/positions", {"positions": BOOK})
    await _admin(url, "/_sim/seed", {"orders": {"ETHUSDT": 5}})
    return sim, url


def _truth(sim: SimExchange) -> dict[str, Any]:
    """The sim's own truth, after asserting what must never happen."""
    stats = sim.stats()
    truth: dict[str, Any] = stats["position_truth"]
    assert truth["flips"] == 0, truth["fills"]
    assert truth["overcloses"] == 0, truth["fills"]
    assert truth["orders_while_open"] == 0
    assert stats["open"] == []
    assert {e: stats["violations"][e] for e in ENDPOINTS} == dict.fromkeys(ENDPOINTS, 0)
    for placed in truth["placed"]:
        assert placed["reduce_only"] is True
        assert placed["order_type"] == "MARKET"
    truth["requests"] = stats["requests"]
    return truth


def _open(truth: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {p["symbol"]: (p["position_side"], p["position_size"]) for p in truth["positions"]}


async def _kill(daemon: DaemonProcess) -> dict[str, Any]:
    daemon.send(signal.SIGUSR1)
    return await daemon.wait_for("kill.completed", timeout=WAIT)


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "killswitch", *args]
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env(),
    )


async def test_exposure_long_and_short_with_a_cancelled_stop(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """After the kill: kill.exposure shows the LONG and the SHORT position, the BTC one
    with the stop-loss the kill cancelled; kill.completed has positions_open 2 and
    exposure_read; GET /status shows them; nothing is closed (flatten is off)."""
    sim, url = await _setup(sim_factory, 31)
    daemon = DaemonProcess(_config(workdir, url))
    await daemon.start()
    done = await _kill(daemon)
    exposure = daemon.named("kill.exposure")[-1]
    shown = {p["symbol"]: p for p in exposure["positions"]}
    assert (shown["BTCUSDT"]["side"], shown["BTCUSDT"]["size"]) == ("LONG", "0.5")
    assert (shown["ETHUSDT"]["side"], shown["ETHUSDT"]["size"]) == ("SHORT", "3")
    assert shown["BTCUSDT"]["stops_cancelled"] == 1
    assert shown["ETHUSDT"]["stops_cancelled"] == 0
    assert float(shown["BTCUSDT"]["notional"]) == 30000
    assert (done["positions_open"], done["exposure_read"], done["flat"]) == (2, True, True)
    assert "flattened" not in done
    code, status = await ControlClient(workdir / "ctl.sock").request("GET", "/status")
    assert code == 200
    assert status["positions"]["positions_open"] == 2
    assert {p["symbol"] for p in status["positions"]["positions"]} == {"BTCUSDT", "ETHUSDT"}
    assert {"positions", "place_order"} <= set(status["rate_limit"])
    text = (await _cli("status", "--config", str(workdir / "killswitch.toml"))).stdout
    assert "position:BTCUSDT" in text
    assert "LONG 0.5" in text
    assert "1 TP/SL cancelled by the kill: UNPROTECTED" in text
    truth = _truth(sim)
    assert _open(truth) == {"BTCUSDT": ("LONG", "0.5"), "ETHUSDT": ("SHORT", "3")}
    assert truth["requests"]["place_order"] == 0
    assert sim.stats()["cancelled"] == 6  # the stop and the five ETH orders
    assert await daemon.stop() == 0


async def test_flatten_closes_one_and_refuses_the_one_over_max_notional(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """[flatten] enabled, max_notional 10 000: ETH (6 000) is closed by one reduce-only
    MARKET BUY of 3; BTC (30 000) is flatten.refused and left open; kill.completed
    comes after, with flattened 1 and positions_open 1."""
    sim, url = await _setup(sim_factory, 32)
    daemon = DaemonProcess(_config(workdir, url, flatten={"enabled": True, "max_notional": 1e4}))
    await daemon.start()
    done = await _kill(daemon)
    (sent,) = daemon.named("flatten.sent")
    assert (sent["symbol"], sent["side"], sent["quantity"]) == ("ETHUSDT", "BUY", "3")
    assert daemon.named("flatten.done")[0]["symbol"] == "ETHUSDT"
    (refused,) = daemon.named("flatten.refused")
    assert (refused["symbol"], refused["level"]) == ("BTCUSDT", "critical")
    assert (done["flattened"], done["positions_open"], done["exposure_read"]) == (1, 1, True)
    names = [e["event"] for e in daemon.events]
    assert names.index("flatten.done") < names.index("kill.completed")
    truth = _truth(sim)
    assert _open(truth) == {"BTCUSDT": ("LONG", "0.5")}
    assert [(p["symbol"], p["side"], p["quantity"]) for p in truth["placed"]] == [
        ("ETHUSDT", "BUY", "3")
    ]
    assert truth["placed"][0]["client_order_id"] == sent["client_order_id"]
    assert await daemon.stop() == 0


@pytest.mark.parametrize("kind", ["lost_ack_502", "lost_ack_timeout"])
async def test_a_lost_answer_on_a_close_is_read_first_never_sent_twice(
    workdir: Path, sim_factory: SimFactory, kind: str
) -> None:
    """The close fills but its answer is lost (502, or none in time): the daemon reads the
    position before anything else, finds it gone, and sends no second order."""
    sim, url = await _setup(sim_factory, 33)
    fault = {"endpoint": "place_order", "kind": kind, "delay": 3}
    await _admin(url, "/_sim/faults", fault)
    daemon = DaemonProcess(_config(workdir, url, flatten={"enabled": True}))
    await daemon.start()
    done = await _kill(daemon)
    assert {e["symbol"] for e in daemon.named("flatten.unknown")} <= {"BTCUSDT", "ETHUSDT"}
    assert len(daemon.named("flatten.unknown")) == 1
    assert {e["symbol"] for e in daemon.named("flatten.done")} == {"BTCUSDT", "ETHUSDT"}
    assert (done["flattened"], done["positions_open"]) == (2, 0)
    truth = _truth(sim)
    assert _open(truth) == {}
    assert truth["requests"]["place_order"] == 2  # one per position, none repeated
    assert await daemon.stop() == 0


async def test_a_refused_reduce_only_is_loud_and_final(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """The venue refuses reduce_only with MARKET (422): flatten.rejected (critical, the
    venue's message), never retried, never re-sent without reduce_only; the position stays."""
    sim, url = await _setup(sim_factory, 34)
    await _admin(url, "/_sim/faults", {"endpoint": "place_order", "kind": "reduce_only_refused"})
    config = _config(workdir, url, flatten={"enabled": True, "max_notional": 1e4})
    daemon = DaemonProcess(config)
    await daemon.start()
    done = await _kill(daemon)
    (rejected,) = daemon.named("flatten.rejected")
    assert (rejected["symbol"], rejected["level"], rejected["http_status"]) == (
        "ETHUSDT",
        "critical",
        422,
    )
    assert "reduce_only" in rejected["message"]
    assert (done["flattened"], done["positions_open"]) == (0, 2)
    truth = _truth(sim)
    assert truth["requests"]["place_order"] == 1
    assert truth["placed"] == []
    assert _open(truth)["ETHUSDT"] == ("SHORT", "3")
    assert await daemon.stop() == 0


async def test_killswitch_flatten_after_a_kill_and_refused_while_armed(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """`killswitch flatten` while ARMED is refused (exit 1, nothing sent); after a kill
    (flatten off: the positions stay), it closes them both and exits 0."""
    sim, url = await _setup(sim_factory, 35)
    config = _config(workdir, url)
    daemon = DaemonProcess(config)
    await daemon.start()
    refused = await _cli("flatten", "--config", str(config))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "ARMED" in refused.stdout + refused.stderr
    assert sim.stats()["requests"]["positions"] == 0
    done = await _kill(daemon)
    assert done["positions_open"] == 2
    closed = await _cli("flatten", "--config", str(config))
    assert closed.returncode == 0, closed.stdout + closed.stderr
    assert {e["symbol"] for e in daemon.named("flatten.done")} == {"BTCUSDT", "ETHUSDT"}
    truth = _truth(sim)
    assert _open(truth) == {}
    assert sorted((p["symbol"], p["side"], p["quantity"]) for p in truth["placed"]) == [
        ("BTCUSDT", "SELL", "0.5"),
        ("ETHUSDT", "BUY", "3"),
    ]
    assert await daemon.stop() == 0


async def test_a_positions_endpoint_that_fails_is_unknown_never_flat(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Every positions call fails (500): exposure_read is false, the symbols are listed as
    unreadable, and flatten sends nothing (flatten.failed), never reading it as no position."""
    sim, url = await _setup(sim_factory, 36)
    await _admin(url, "/_sim/faults", {"endpoint": "positions", "kind": "500", "count": 100})
    daemon = DaemonProcess(_config(workdir, url, flatten={"enabled": True}))
    await daemon.start()
    done = await _kill(daemon)
    exposure = daemon.named("kill.exposure")[-1]
    assert set(exposure["unreadable"]) == {"BTCUSDT", "ETHUSDT"}
    assert (done["exposure_read"], done["flattened"]) == (False, 0)
    assert {e["symbol"] for e in daemon.named("flatten.failed")} == {"BTCUSDT", "ETHUSDT"}
    _, status = await ControlClient(workdir / "ctl.sock").request("GET", "/status")
    assert status["positions"]["exposure_read"] is False
    truth = _truth(sim)
    assert truth["requests"]["place_order"] == 0
    assert len(_open(truth)) == 2
    assert await daemon.stop() == 0


async def test_sigkill_between_a_close_and_its_confirmation(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGKILL while a close's answer is held (the order filled): the restarted daemon
    resumes the kill, reads the position first, finds it gone and sends nothing again."""
    sim, url = await sim_factory(cancel_delay=(0.02, 0.1), seed=37)
    await _admin(url, "/_sim/positions", {"positions": {"ETHUSDT": BOOK["ETHUSDT"]}})
    fault = {"endpoint": "place_order", "kind": "lost_ack_timeout", "delay": 20}
    await _admin(url, "/_sim/faults", fault)
    config = _config(
        workdir, url, flatten={"enabled": True}, exchange={"base_url": url, "request_timeout": 10}
    )
    first = DaemonProcess(config)
    await first.start()
    first.send(signal.SIGUSR1)
    await first.wait_for("flatten.sent", timeout=WAIT)
    await asyncio.sleep(0.3)  # the order has reached the venue and filled there
    await first.kill()
    assert first.named("kill.completed") == []
    second = DaemonProcess(config)
    await second.start()
    done = await second.wait_for("kill.completed", timeout=WAIT)
    assert second.named("kill.resumed")
    assert second.named("flatten.resuming")[0]["symbol"] == "ETHUSDT"
    assert second.named("flatten.sent") == []
    assert done["positions_open"] == 0
    truth = _truth(sim)
    assert _open(truth) == {}
    assert truth["requests"]["place_order"] == 1
    assert await second.stop() == 0


async def test_fills_that_land_after_the_cancel_and_after_the_close(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """A fill lands between the cancel and the read (ETH: 3 short becomes 2), another right
    after a close (BTC grows by 0.1): each close is for the size last read, the residual
    gets one more close once the first is proven filled; nothing is over-closed."""
    sim, url = await _setup(sim_factory, 38)
    fills = [
        {"symbol": "ETHUSDT", "side": "BUY", "quantity": "1", "after": "cancel_all"},
        {"symbol": "BTCUSDT", "side": "BUY", "quantity": "0.1", "after": "place_order"},
    ]
    for fill in fills:
        await _admin(url, "/_sim/late_fill", fill)
    daemon = DaemonProcess(_config(workdir, url, flatten={"enabled": True}))
    await daemon.start()
    done = await _kill(daemon)
    shown = {p["symbol"]: p["size"] for p in daemon.named("kill.exposure")[-1]["positions"]}
    assert shown == {"BTCUSDT": "0.5", "ETHUSDT": "2"}
    assert (done["flattened"], done["positions_open"]) == (2, 0)
    truth = _truth(sim)
    assert _open(truth) == {}
    placed = sorted((p["symbol"], p["side"], p["quantity"]) for p in truth["placed"])
    assert placed == [
        ("BTCUSDT", "SELL", "0.1"),
        ("BTCUSDT", "SELL", "0.5"),
        ("ETHUSDT", "BUY", "2"),
    ]
    assert await daemon.stop() == 0


async def test_killswitch_flatten_leaves_a_symbol_that_has_open_orders_again(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Orders appear on ETH after the kill (the guard has not swept them yet): `killswitch
    flatten` lists each symbol first, closes BTC, leaves ETH (flatten.skipped), exits 1."""
    sim, url = await _setup(sim_factory, 39)
    config = _config(workdir, url)
    daemon = DaemonProcess(config)
    await daemon.start()
    await _kill(daemon)
    await _admin(url, "/_sim/seed", {"orders": {"ETHUSDT": 2}})
    result = await _cli("flatten", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "flatten ETHUSDT: skipped (not proven flat of orders)" in result.stdout
    stats = sim.stats()
    truth = stats["position_truth"]
    assert truth["orders_while_open"] == 0
    assert [(p["symbol"], p["quantity"]) for p in truth["placed"]] == [("BTCUSDT", "0.5")]
    assert _open(truth) == {"ETHUSDT": ("SHORT", "3")}
    assert len(stats["open"]) == 2  # the new orders: the guard's, not the flatten's, to sweep
    assert await daemon.stop() == 0

"""The sentinel over a real nats-server: a real desk daemon, a real sentinel daemon, one sim."""

from __future__ import annotations

import asyncio
import datetime
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config
from tests.natsserver import NatsServer, NatsUser, desk_permissions, sentinel_permissions
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
FIRM = "acme"
PREFIX = f"killswitch.{FIRM}"
DESK, SENTINEL = "desk-a", "desk-a-sentinel"
CREDS_ENV = "KILLSWITCH_NATS_CREDS"
TIMEOUT, LIVENESS = 1.0, 0.2
BOUND = TIMEOUT + LIVENESS + 0.5  # the bound on the sentinel's first cancel_all
ORDERS = 5
FAST = {"requests": 1000, "per_seconds": 1, "margin": 0.05}
# One key, two daemons: the venue's limit per 60 s split between the desk and its sentinel.
VENUE_SPLIT = {
    "desk": {"cancel_all": 7, "confirm": 14, "flat": 14, "positions": 14, "flatten": 14},
    "sentinel": {"cancel_all": 3, "confirm": 6, "flat": 6, "positions": 6, "flatten": 6},
}


@dataclass
class Pair:
    nats: NatsServer
    sim: SimExchange
    desk: DaemonProcess
    sentinel: DaemonProcess
    root: Path
    proxy: TcpProxy | None = None  # between the desk and nats-server, if asked for

    def sentinel_fired(self) -> list[dict[str, Any]]:
        return [e for e in self.sentinel.named("trigger.fired") if e.get("source") == "sentinel"]


def _limits(role: str | None) -> dict[str, Any]:
    if role is None:
        return {
            "cancel_all": {"rate_limit": FAST},
            "confirm": {"rate_limit": FAST},
            "flat": {"rate_limit": FAST},
            "positions": {"rate_limit": FAST},
        }
    split = VENUE_SPLIT[role]
    return {
        "cancel_all": {"rate_limit": {"requests": split["cancel_all"], "per_seconds": 60}},
        "confirm": {"rate_limit": {"requests": split["confirm"], "per_seconds": 60}},
        "flat": {"rate_limit": {"requests": split["flat"], "per_seconds": 60}},
        "positions": {"rate_limit": {"requests": split["positions"], "per_seconds": 60}},
        "flatten": {"rate_limit": {"requests": split["flatten"], "per_seconds": 60}},
    }


def _daemon(
    root: Path, name: str, url: str, nats_url: str, seed: str, role: str | None, **extra: Any
) -> DaemonProcess:
    directory = root / name
    directory.mkdir()
    cluster = {
        "servers": [nats_url],
        "firm": FIRM,
        "desk": name,
        "credentials_env": CREDS_ENV,
        "liveness_interval": LIVENESS,
    }
    config = write_config(
        directory,
        url,
        **_limits(None if role is None else ("desk" if name == DESK else "sentinel")),
        guard={"interval": 1},
        daemon={"shutdown_grace": 1},
        cluster=cluster,
        **extra,
    )
    return DaemonProcess(config, daemon_env(**{CREDS_ENV: seed}))


async def _pair(
    workdir: Path, sim_factory: SimFactory, *, venue_limits: bool = False, proxy: bool = False
) -> AsyncIterator[Pair]:
    desk_user = NatsUser.new(desk_permissions(PREFIX, DESK))
    sentinel_user = NatsUser.new(sentinel_permissions(PREFIX, SENTINEL, DESK))
    server = NatsServer(workdir, [desk_user, sentinel_user])
    await server.start()
    between = TcpProxy(server.port) if proxy else None
    if between is not None:
        await between.start()
    if venue_limits:  # the venue's own strict windows (VENUE.md): 10 / 20 / 20 per 60 s
        sim, url = await sim_factory()
    else:
        sim, url = await sim_factory(
            status_limit=(5000, 1.0),
            cancel_all_limit=(1000, 1.0),
            open_orders_limit=(1000, 1.0),
            closed_orders_limit=(1000, 1.0),
            positions_limit=(1000, 1.0),
        )
    sim.seed({"BTCUSDT": ORDERS})
    role = "split" if venue_limits else None
    desk_url = server.url if between is None else between.url
    desk = _daemon(workdir, DESK, url, desk_url, desk_user.seed, role)
    sentinel = _daemon(
        workdir,
        SENTINEL,
        url,
        server.url,
        sentinel_user.seed,
        role,
        sentinel={"desk": DESK, "timeout": TIMEOUT},
    )
    try:
        await asyncio.gather(desk.start(), sentinel.start())
        await sentinel.wait_for("sentinel.watching")
        yield Pair(server, sim, desk, sentinel, workdir, between)
        for daemon in (desk, sentinel):
            if daemon.returncode is None:
                assert await daemon.stop() == 0
            assert all(e.get("event") != "<unparsed>" for e in daemon.events)
            # Every subject each one uses is within the permissions the README gives it.
            refused = [e for e in daemon.events if "ermission" in str(e.get("detail"))]
            assert refused == []
    finally:
        for daemon in (desk, sentinel):
            if daemon.returncode is None and daemon.proc is not None:
                daemon.send(signal.SIGCONT)
                await daemon.kill()
        if between is not None:
            await between.stop()
        await server.stop()


@pytest.fixture
async def pair(workdir: Path, sim_factory: SimFactory) -> AsyncIterator[Pair]:
    """nats-server, the sim with 5 open orders, desk-a and its sentinel (timeout 1 s)."""
    async for made in _pair(workdir, sim_factory):
        yield made


def _at(event: dict[str, Any]) -> float:
    """An event's own timestamp, epoch seconds."""
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


async def _killed_by_the_sentinel(pair: Pair, silenced_at: float) -> dict[str, Any]:
    """The sentinel's kill, checked against the sim's truth and the bound; its summary."""
    fired = await pair.sentinel.wait_for(
        "trigger.fired", lambda e: e.get("source") == "sentinel", timeout=15
    )
    done = await pair.sentinel.wait_for("kill.completed", timeout=20)
    truth = pair.sim.stats()
    first = truth["cancel_all_arrivals"][0]["wall"]
    assert fired["desk"] == DESK
    assert fired["silent_s"] >= TIMEOUT
    assert first - silenced_at <= BOUND, f"first cancel_all {first - silenced_at:.3f}s"
    assert done["flat"] is True
    assert truth["flat"] is True
    assert done["cancelled"] == truth["cancelled"] == ORDERS
    return done


async def test_frozen_desk_is_killed_then_agrees_when_resumed(pair: Pair) -> None:
    """SIGSTOP of the desk: the sentinel kills within the bound; SIGCONT: the desk trips too."""
    pair.desk.send(signal.SIGSTOP)
    stopped_at = time.time()

    done = await _killed_by_the_sentinel(pair, stopped_at)
    await pair.sentinel.wait_for("switch.state", lambda e: e["state"] == "TRIPPED")
    pair.desk.send(signal.SIGCONT)
    resumed_at = time.time()

    fired = await pair.desk.wait_for("trigger.fired", lambda e: e.get("source") == "sentinel")
    tripped = await pair.desk.wait_for("switch.state", lambda e: e["state"] == "TRIPPED")
    assert fired["sentinel_kill_id"] == done["kill_id"]
    assert fired["sentinel"].startswith(SENTINEL + "@")
    assert _at(tripped) - resumed_at <= 2.0
    # The desk is heard again: the sentinel watches it (it fires once per silence).
    await pair.sentinel.wait_for("sentinel.watching", count=2)
    assert len(pair.sentinel_fired()) == 1


async def test_dead_desk_is_killed_and_a_restarted_desk_agrees(pair: Pair) -> None:
    """SIGKILL of the desk: the sentinel kills in the bound; the desk restarted comes up TRIPPED."""
    assert pair.desk.proc is not None
    pair.desk.proc.kill()
    killed_at = time.time()
    await pair.desk.exited()

    await _killed_by_the_sentinel(pair, killed_at)
    await pair.desk.start()
    fired = await pair.desk.wait_for("trigger.fired", lambda e: e.get("source") == "sentinel")
    await pair.desk.wait_for("switch.state", lambda e: e["state"] == "TRIPPED")
    assert fired["learned_by"] in ("answer", "broadcast")


async def test_desk_cut_off_is_killed_and_trips_within_2s_of_reconnecting(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """The desk's host cut off from the network (its NATS connection reset, new ones
    refused): the sentinel kills; network restored: the desk asks at reconnection and is
    TRIPPED (source sentinel) within 2 s of it."""
    async for pair in _pair(workdir, sim_factory, proxy=True):
        assert pair.proxy is not None
        pair.proxy.cut()
        cut_at = time.time()
        done = await _killed_by_the_sentinel(pair, cut_at)
        await pair.sentinel.wait_for("switch.state", lambda e: e["state"] == "TRIPPED")
        pair.proxy.restore()

        back = await pair.desk.wait_for("cluster.connected", lambda e: e["reconnected"])
        fired = await pair.desk.wait_for("trigger.fired", lambda e: e.get("source") == "sentinel")
        tripped = await pair.desk.wait_for("switch.state", lambda e: e["state"] == "TRIPPED")
        assert fired["sentinel_kill_id"] == done["kill_id"]
        assert fired["learned_by"] in ("answer", "broadcast")  # asked at reconnection, or heard
        assert _at(tripped) - _at(back) <= 2.0


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
async def test_bus_outage_blinds_the_sentinel_and_the_desk_still_kills(
    pair: Pair, outage: str
) -> None:
    """nats-server stopped (or SIGSTOPped: the nats-py flush trap) for 3 x timeout:
    sentinel.blind, no sentinel kill; SIGUSR1 on the desk still kills; after the bus is
    back the sentinel proves its link again and never fires."""
    server = pair.nats.proc
    assert server is not None
    if outage == "stopped":
        await pair.nats.stop()
    else:
        server.send_signal(signal.SIGSTOP)
    blind = await pair.sentinel.wait_for("sentinel.blind")
    pair.desk.send(signal.SIGUSR1)
    done = await pair.desk.wait_for("kill.completed")
    await asyncio.sleep(3 * TIMEOUT)
    if outage == "stopped":
        await pair.nats.start()
        await pair.desk.wait_for("cluster.connected", lambda e: e["reconnected"])
    else:
        server.send_signal(signal.SIGCONT)
    await pair.sentinel.wait_for("sentinel.link_restored")
    # Long enough for a wrong kill: the full timeout plus the reconnect grace (2 s), and more.
    await asyncio.sleep(TIMEOUT + 2.0 + 0.5)

    assert "problem" in blind
    assert done["flat"] is True
    assert done["cancelled"] == ORDERS
    assert pair.sentinel_fired() == []
    assert pair.sentinel.named("kill.started") == []
    assert pair.sim.stats()["requests"]["cancel_all"] == 1  # the desk's own, no other


async def test_clean_stop_stands_down_and_a_restart_is_watched_again(pair: Pair) -> None:
    """SIGTERM of the desk: sentinel.standdown, no kill; the desk started again: watching.
    (And the sentinel's GET /status and metrics say what it watches.)"""
    control = ControlClient(pair.root / SENTINEL / "ctl.sock")
    _, status = await control.request("GET", "/status")
    _, metrics = await control.request("GET", "/metrics", parse=bytes)
    assert status["sentinel"]["desk"] == DESK
    assert status["sentinel"]["state"] == "watching"
    assert status["sentinel"]["blind"] is False
    assert status["sentinel"]["last_seen_s"] < 2 * TIMEOUT
    assert b"killswitch_sentinel_blind 0.0" in metrics
    assert b"killswitch_sentinel_watching 1.0" in metrics

    assert await pair.desk.stop() == 0
    standdown = await pair.sentinel.wait_for("sentinel.standdown")
    assert len(pair.desk.named("liveness.left")) == 1
    await asyncio.sleep(3 * TIMEOUT)
    assert pair.sentinel_fired() == []
    assert pair.sim.stats()["requests"]["cancel_all"] == 0

    await pair.desk.start()
    again = await pair.sentinel.wait_for("sentinel.watching", count=2)
    assert standdown["desk"] == DESK
    assert again["previous"] == "standdown"
    assert pair.sentinel_fired() == []


async def test_both_firing_at_once_stay_inside_the_venue_limits(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """One key, two daemons: the desk (7/14/14) and its sentinel (3/6/6) pressed again and
    again at once against the venue's strict windows: 0 violations, ≤ 10 cancel_all."""
    async for pair in _pair(workdir, sim_factory, venue_limits=True):
        for _ in range(6):  # an explicit trigger while tripped sweeps again: 12 asks of each
            pair.desk.send(signal.SIGUSR1)
            pair.sentinel.send(signal.SIGUSR1)
            await asyncio.sleep(0.3)
        await pair.desk.wait_for("kill.completed", timeout=30)
        await pair.sentinel.wait_for("kill.completed", timeout=30)
        await asyncio.sleep(1.0)
        stats = pair.sim.stats()

        assert stats["violations"] == dict.fromkeys(stats["violations"], 0)
        assert stats["requests"]["cancel_all"] <= 10
        assert stats["flat"] is True
        answers = stats["answers"]
        assert all("429" not in answers[e] for e in stats["violations"])

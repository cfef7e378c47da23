"""Firm-wide kill over a real nats-server: three real daemons, the real sim, the fleet CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config
from tests.natsserver import (
    NatsServer,
    NatsUser,
    desk_permissions,
    free_port,
    self_signed_certificate,
)

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
FIRM = "acme"
PREFIX = f"killswitch.{FIRM}"
DESKS = ("desk-a", "desk-b", "desk-c")
CREDS_ENV = "KILLSWITCH_NATS_CREDS"
OPERATOR = {
    "publish": {"allow": [f"{PREFIX}.trigger", f"{PREFIX}.*.trigger", f"{PREFIX}.status"]},
    "subscribe": {"allow": ["_INBOX.>"]},
}
VIEWER = {  # may look at the fleet, may not press the button
    "publish": {"allow": [f"{PREFIX}.status"]},
    "subscribe": {"allow": ["_INBOX.>", f"{PREFIX}.*.events"]},
}


@dataclass
class Desk:
    name: str
    sim: SimExchange
    daemon: DaemonProcess
    directory: Path


@dataclass
class Fleet:
    nats: NatsServer
    desks: dict[str, Desk]
    operator: NatsUser
    viewer: NatsUser
    root: Path

    def cli_config(self, user: NatsUser) -> tuple[Path, dict[str, str]]:
        """An operator's config file and environment for ``killswitch fleet``."""
        directory = self.root / f"cli-{user.public[:8].lower()}"
        directory.mkdir(exist_ok=True)
        config = write_config(
            directory,
            "http://127.0.0.1:1",
            cluster={
                "servers": [self.nats.url],
                "firm": FIRM,
                "desk": "operator",
                "credentials_env": CREDS_ENV,
            },
        )
        return config, daemon_env(**{CREDS_ENV: user.seed})

    async def cli(self, user: NatsUser, *args: str) -> tuple[int, str, str]:
        """``python -m killswitch fleet ...`` as ``user``: (exit status, stdout, stderr)."""
        config, env = self.cli_config(user)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "killswitch",
            "fleet",
            *args[:1],
            "--config",
            str(config),
            *args[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def publish(self, subject: str, body: dict[str, Any] | bytes) -> list[dict[str, Any]]:
        """Publish as the operator (raw, not through the CLI); the replies within 0.5 s."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        nc = await nats.connect(self.nats.url, nkeys_seed_str=self.operator.seed)
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish(subject, data, reply=inbox)
            replies: list[dict[str, Any]] = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    return replies
                replies.append(json.loads(msg.data))
        finally:
            await nc.close()


def trigger_message(**overrides: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "origin": "test@host",
        "reason": "test",
        "sent_at": int(time.time() * 1000),
    } | overrides


def fired(desk: Desk) -> list[dict[str, Any]]:
    return [e for e in desk.daemon.named("trigger.fired") if e.get("source") == "cluster"]


@pytest.fixture
async def fleet(workdir: Path, sim_factory: SimFactory) -> AsyncIterator[Fleet]:
    """A nats-server with one nkey user per desk, an operator and a viewer; three daemons."""
    users = {d: NatsUser.new(desk_permissions(PREFIX, d)) for d in DESKS}
    operator, viewer = NatsUser.new(OPERATOR), NatsUser.new(VIEWER)
    server = NatsServer(workdir, [*users.values(), operator, viewer])
    await server.start()
    desks: dict[str, Desk] = {}
    try:
        for name in DESKS:
            sim, url = await sim_factory(status_limit=(2000, 1.0), cancel_all_limit=(100, 1.0))
            sim.seed({"BTCUSDT": 5})
            directory = workdir / name
            directory.mkdir()
            config = write_config(
                directory,
                url,
                cancel_all={"rate_limit": {"requests": 100, "per_seconds": 1, "margin": 0.05}},
                cluster={
                    "servers": [server.url],
                    "firm": FIRM,
                    "credentials_env": CREDS_ENV,
                    "max_age": 30,
                },
            )
            env = daemon_env(**{CREDS_ENV: users[name].seed, "KILLSWITCH_DESK": name})
            daemon = DaemonProcess(config, env)
            desks[name] = Desk(name, sim, daemon, directory)
        await asyncio.gather(*(d.daemon.start() for d in desks.values()))
        await asyncio.gather(*(d.daemon.wait_for("cluster.connected") for d in desks.values()))
        yield Fleet(server, desks, operator, viewer, workdir)
        codes = [await desk.daemon.stop() for desk in desks.values()]
        assert codes == [0, 0, 0]
        for desk in desks.values():
            assert all(e.get("event") != "<unparsed>" for e in desk.daemon.events)
            assert desk.daemon.stderr == b""
    finally:
        for desk in desks.values():
            if desk.daemon.returncode is None and desk.daemon.proc is not None:
                await desk.daemon.kill()
        await server.stop()


async def test_firm_trigger_kills_every_desk_each_acknowledged(fleet: Fleet) -> None:
    """fleet trigger: all three desks fire (source cluster), cancel, and acknowledge; exit 0."""
    code, out, err = await fleet.cli(fleet.operator, "trigger", "--reason", "firm drill")

    assert code == 0, out + err
    for desk in fleet.desks.values():
        done = await desk.daemon.wait_for("kill.completed")
        assert done["cancelled"] + done["filled"] == 5
        assert desk.sim.stats()["requests"]["cancel_all"] == 1
        event = fired(desk)[0]
        # The acknowledgement went out after the kill's first cancel_all had left.
        names = [e.get("event") for e in desk.daemon.events]
        assert names.index("cancel_all.sent") < names.index("cluster.acknowledged")
        assert desk.daemon.named("cluster.acknowledged")[0]["kill_id"] == done["kill_id"]
        assert event["reason"] == "firm drill"
        assert event["origin"].endswith("@" + socket.gethostname())
        assert event["trigger_id"] in out
        assert f"{desk.name}\t" in out
        assert "ACK\tkill " + done["kill_id"] in out
    assert "3 known desk(s), 3 acknowledged" in out


async def test_desk_trigger_kills_only_that_desk(fleet: Fleet) -> None:
    """fleet trigger --desk desk-b: desk-b kills and acknowledges; the others do nothing."""
    watcher = await nats.connect(fleet.nats.url, nkeys_seed_str=fleet.viewer.seed)
    events = await watcher.subscribe(f"{PREFIX}.*.events")
    await watcher.flush()

    code, out, err = await fleet.cli(fleet.operator, "trigger", "--desk", "desk-b")

    assert code == 0, out + err
    desk_b = fleet.desks["desk-b"].daemon
    done = await desk_b.wait_for("kill.completed")
    # Its events subject carries every event line, byte for byte what stdout got.
    stdout_line = next(raw for raw in desk_b.raw if b'"kill.completed"' in raw)
    while b'"kill.completed"' not in (msg := await events.next_msg(timeout=10)).data:
        assert msg.subject == f"{PREFIX}.desk-b.events"
    assert msg.subject == f"{PREFIX}.desk-b.events"
    assert msg.data + b"\n" == stdout_line
    assert json.loads(msg.data)["kill_id"] == done["kill_id"]
    await watcher.close()
    assert "1 known desk(s), 1 acknowledged" in out
    for name in ("desk-a", "desk-c"):
        assert fired(fleet.desks[name]) == []
        assert fleet.desks[name].sim.stats()["requests"]["cancel_all"] == 0
        status = json.loads((await fleet.cli(fleet.viewer, "status", "--json"))[1])
        assert {r["desk"]: r["state"] for r in status["desks"]}[name] == "ARMED"


async def test_duplicate_message_fires_once(fleet: Fleet) -> None:
    """The same trigger id twice: one kill per desk; the replay is refused as a duplicate."""
    message = trigger_message()
    first = await fleet.publish(f"{PREFIX}.trigger", message)
    for desk in fleet.desks.values():
        await desk.daemon.wait_for("kill.completed")
    again = await fleet.publish(f"{PREFIX}.trigger", message)

    assert sorted(r["desk"] for r in first if r["accepted"]) == list(DESKS)
    assert sorted(r["desk"] for r in again) == list(DESKS)
    assert all(not r["accepted"] and "duplicate" in r["why"] for r in again)
    for desk in fleet.desks.values():
        await desk.daemon.wait_for("cluster.trigger_duplicate")
        assert len(fired(desk)) == 1
        assert len(desk.daemon.named("kill.started")) == 1


async def test_stale_message_is_ignored(fleet: Fleet) -> None:
    """A trigger sent longer ago than max_age: cluster.trigger_stale, no kill."""
    old = int((time.time() - 31) * 1000)
    replies = await fleet.publish(f"{PREFIX}.trigger", trigger_message(sent_at=old))

    assert len(replies) == 3
    assert all(not r["accepted"] for r in replies)
    for desk in fleet.desks.values():
        stale = await desk.daemon.wait_for("cluster.trigger_stale")
        assert stale["age"] > 30
        assert fired(desk) == []
        assert desk.sim.stats()["requests"]["cancel_all"] == 0


async def test_garbage_messages_are_events_not_crashes(fleet: Fleet) -> None:
    """Garbage on the trigger subject: cluster.trigger_invalid, no kill, daemons keep serving."""
    for body in (b"not json", b"[]", b"\xff\xfe", json.dumps({"id": 1}).encode()):
        await fleet.publish(f"{PREFIX}.trigger", body)
    replies = await fleet.publish(f"{PREFIX}.desk-a.trigger", trigger_message())

    assert [r["accepted"] for r in replies] == [True]
    for desk in fleet.desks.values():
        await desk.daemon.wait_for("cluster.trigger_invalid", count=4)
        assert desk.daemon.returncode is None
    assert len(fired(fleet.desks["desk-a"])) == 1


async def test_publisher_without_permission_cannot_trigger(fleet: Fleet) -> None:
    """A NATS user without publish rights on the trigger subject: refused, exit 1, no kill."""
    code, out, _err = await fleet.cli(fleet.viewer, "trigger", "--timeout", "1")

    assert code == 1
    assert "refused by the NATS server" in out
    assert "permissions violation" in out.lower()
    code, out, _ = await fleet.cli(fleet.viewer, "status")
    assert code == 0
    for desk in fleet.desks.values():
        assert fired(desk) == []
        assert desk.sim.stats()["requests"]["cancel_all"] == 0
        assert f"{desk.name} " in out


async def test_fleet_status_lists_every_desk(fleet: Fleet) -> None:
    """fleet status: one row per desk, with host, state and the cluster connection."""
    code, out, err = await fleet.cli(fleet.viewer, "status", "--json")

    assert code == 0, err
    rows = json.loads(out)["desks"]
    assert [r["desk"] for r in rows] == list(DESKS)
    assert all(r["state"] == "ARMED" and r["cluster_connected"] for r in rows)
    assert all(r["host"] == socket.gethostname() for r in rows)
    code, text, _ = await fleet.cli(fleet.viewer, "status")
    assert text.splitlines()[0].split()[:3] == ["DESK", "HOST", "STATE"]
    assert len(text.splitlines()) == 4
    control = ControlClient(fleet.desks["desk-a"].directory / "ctl.sock")
    _, status = await control.request("GET", "/status")
    assert status["cluster"]["connected"] is True
    assert status["cluster"]["subscriptions"] == [
        f"{PREFIX}.trigger",
        f"{PREFIX}.desk-a.trigger",
        f"{PREFIX}.status",
    ]
    _, metrics = await control.request("GET", "/metrics", parse=bytes)
    assert b"killswitch_cluster_connected 1.0" in metrics
    assert b'killswitch_cluster_messages_total{outcome="status"}' in metrics


async def test_nats_down_local_kill_still_works_and_resubscribes(fleet: Fleet) -> None:
    """nats-server killed: SIGUSR1 still kills; after a restart every desk obeys again."""
    await fleet.nats.kill()
    desk_a = fleet.desks["desk-a"]
    for desk in fleet.desks.values():
        await desk.daemon.wait_for("cluster.disconnected")

    desk_a.daemon.send(signal.SIGUSR1)
    done = await desk_a.daemon.wait_for("kill.completed")
    assert done["cancelled"] + done["filled"] == 5
    assert desk_a.daemon.returncode is None

    await fleet.nats.start()
    for desk in fleet.desks.values():
        await desk.daemon.wait_for("cluster.connected", lambda e: e["reconnected"])
    code, out, err = await fleet.cli(fleet.operator, "trigger", "--reason", "after restart")

    assert code == 0, out + err
    assert "3 known desk(s), 3 acknowledged" in out
    for desk in fleet.desks.values():
        assert fired(desk)[0]["reason"] == "after restart"
    # desk-a was TRIPPED by its local kill: the firm button still starts a new sweep.
    await desk_a.daemon.wait_for("kill.completed", count=2)
    assert desk_a.sim.stats()["requests"]["cancel_all"] == 2
    status = await fleet.publish(f"{PREFIX}.status", b"")
    assert all(s["cluster"]["connected"] for s in status)


async def test_nats_unreachable_at_start_is_not_in_the_way(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """No NATS at start: the daemon is ready and kills on SIGUSR1; it connects once NATS is up."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 3})
    user = NatsUser.new(desk_permissions(PREFIX, "desk-a"))
    server = NatsServer(workdir, [user], port=free_port())
    config = write_config(
        workdir,
        url,
        cluster={"servers": [server.url], "firm": FIRM, "credentials_env": CREDS_ENV},
    )
    daemon = DaemonProcess(
        config, daemon_env(**{CREDS_ENV: user.seed, "KILLSWITCH_DESK": "desk-a"})
    )
    await daemon.start()
    failed = await daemon.wait_for("cluster.connect_failed")
    assert failed["servers"] == [server.url]

    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    assert done["cancelled"] + done["filled"] == 3
    assert daemon.named("cluster.connected") == []

    await server.start()
    try:
        await daemon.wait_for("cluster.connected")
        assert await daemon.stop() == 0
    finally:
        await server.stop()
    assert user.seed not in b"".join(daemon.raw).decode()


async def test_propagate_broadcasts_a_local_kill_without_storms(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """propagate on two desks: SIGUSR1 on desk-a kills desk-b too; nobody re-broadcasts."""
    names = ("desk-a", "desk-b")
    users = {d: NatsUser.new(desk_permissions(PREFIX, d, propagate=True)) for d in names}
    server = NatsServer(workdir, list(users.values()))
    await server.start()
    desks: dict[str, tuple[SimExchange, DaemonProcess]] = {}
    try:
        for name in names:
            sim, url = await sim_factory()
            directory = workdir / name
            directory.mkdir()
            config = write_config(
                directory,
                url,
                cluster={
                    "servers": [server.url],
                    "firm": FIRM,
                    "credentials_env": CREDS_ENV,
                    "propagate": True,
                },
            )
            env = daemon_env(**{CREDS_ENV: users[name].seed, "KILLSWITCH_DESK": name})
            desks[name] = (sim, DaemonProcess(config, env))
        for _, daemon in desks.values():
            await daemon.start()
            await daemon.wait_for("cluster.connected")
        (sim_a, desk_a), (sim_b, desk_b) = desks["desk-a"], desks["desk-b"]

        desk_a.send(signal.SIGUSR1)
        await desk_a.wait_for("kill.completed")
        done_b = await desk_b.wait_for("kill.completed")

        propagated = desk_a.named("cluster.propagated")
        assert len(propagated) == 1
        fired_b = desk_b.named("trigger.fired")
        assert [e["source"] for e in fired_b] == ["cluster"]
        assert fired_b[0]["trigger_id"] == propagated[0]["trigger_id"]
        assert fired_b[0]["origin"] == f"desk-a@{socket.gethostname()}"
        assert done_b["source"] == "cluster"
        # A kill a broadcast started is not broadcast again: no storm, one kill each.
        assert desk_b.named("cluster.propagated") == []
        await desk_b.stop()
        assert await desk_a.stop() == 0
        assert [e["source"] for e in desk_a.named("trigger.fired")] == ["signal"]
        assert sim_a.stats()["requests"]["cancel_all"] == 1
        assert sim_b.stats()["requests"]["cancel_all"] == 1
    finally:
        for _, daemon in desks.values():
            if daemon.proc is not None and daemon.returncode is None:
                await daemon.kill()
        await server.stop()


async def _lone_desk(
    workdir: Path, sim_factory: SimFactory, user: NatsUser, url: str, **env: str
) -> DaemonProcess:
    """One daemon, desk-a, against ``url``, started."""
    _, exchange = await sim_factory()
    config = write_config(
        workdir,
        exchange,
        cluster={"servers": [url], "firm": FIRM, "credentials_env": CREDS_ENV},
    )
    daemon = DaemonProcess(
        config, daemon_env(**{CREDS_ENV: user.seed, "KILLSWITCH_DESK": "desk-a"}, **env)
    )
    await daemon.start()
    return daemon


async def test_tls_cluster_connects_over_tls(workdir: Path, sim_factory: SimFactory) -> None:
    """tls:// against a TLS nats-server (a certificate the desk trusts): connected, obeys."""
    cert, key = self_signed_certificate(workdir)
    user = NatsUser.new(desk_permissions(PREFIX, "desk-a"))
    operator = NatsUser.new(OPERATOR)
    server = NatsServer(workdir, [user, operator], tls=(cert, key))
    await server.start()
    try:
        daemon = await _lone_desk(workdir, sim_factory, user, server.url, SSL_CERT_FILE=str(cert))
        connected = await daemon.wait_for("cluster.connected")
        assert connected["server"].startswith("tls://127.0.0.1:")
        fleet = Fleet(server, {}, operator, operator, workdir)
        config, env = fleet.cli_config(operator)
        env["SSL_CERT_FILE"] = str(cert)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "killswitch",
            "fleet",
            "trigger",
            "--config",
            str(config),
            "--desk",
            "desk-a",
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        await daemon.wait_for("kill.completed")
        assert daemon.named("cluster.insecure") == []
        assert await daemon.stop() == 0
    finally:
        await server.stop()


async def test_tls_url_refuses_an_unencrypted_server(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """tls:// but the server speaks plain NATS: cluster.insecure, never subscribed, no trigger."""
    user = NatsUser.new(desk_permissions(PREFIX, "desk-a"))
    server = NatsServer(workdir, [user])
    await server.start()
    try:
        url = server.url.replace("nats://", "tls://")
        daemon = await _lone_desk(workdir, sim_factory, user, url)
        insecure = await daemon.wait_for("cluster.insecure")
        assert insecure["server"] == url
        assert daemon.named("cluster.connected") == []
        assert daemon.returncode is None
        assert await daemon.stop() == 0
    finally:
        await server.stop()


async def test_events_of_a_large_kill_arrive_complete_and_in_order(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """A 1,000-order kill: every stdout line from trigger.fired to kill.completed, in order."""
    user, viewer = NatsUser.new(desk_permissions(PREFIX, "desk-a")), NatsUser.new(VIEWER)
    server = NatsServer(workdir, [user, viewer])
    await server.start()
    try:
        sim, exchange = await sim_factory(status_limit=(100_000, 1.0))
        sim.seed({"BTCUSDT": 1000})
        config = write_config(
            workdir,
            exchange,
            confirm={"rate_limit": {"requests": 100_000, "per_seconds": 1, "margin": 0.05}},
            cluster={"servers": [server.url], "firm": FIRM, "credentials_env": CREDS_ENV},
            log={"level": "debug"},  # order.status is a debug event (one line per order)
        )
        env = daemon_env(**{CREDS_ENV: user.seed, "KILLSWITCH_DESK": "desk-a"})
        daemon = DaemonProcess(config, env)
        await daemon.start()
        await daemon.wait_for("cluster.connected")
        watcher = await nats.connect(server.url, nkeys_seed_str=viewer.seed)
        events = await watcher.subscribe(f"{PREFIX}.desk-a.events", pending_msgs_limit=100_000)
        await watcher.flush()

        daemon.send(signal.SIGUSR1)
        await daemon.wait_for("kill.completed", timeout=60)
        received: list[bytes] = []
        while not received or b'"kill.completed"' not in received[-1]:
            received.append((await events.next_msg(timeout=20)).data)
        await watcher.close()

        start = next(i for i, raw in enumerate(daemon.raw) if b'"trigger.fired"' in raw)
        end = next(i for i, raw in enumerate(daemon.raw) if b'"kill.completed"' in raw)
        expected = [raw.rstrip(b"\n") for raw in daemon.raw[start : end + 1]]
        assert len(expected) > 1000
        assert received[received.index(expected[0]) :] == expected
        assert daemon.named("cluster.events_dropped") == []
        assert await daemon.stop() == 0
    finally:
        await server.stop()


async def test_fleet_trigger_asks_for_status_once_the_acknowledgements_settle(
    workdir: Path,
) -> None:
    """The status request reaches the desks after their acknowledgements, never beside
    their kills: two stand-in desks (plain NATS clients) acknowledge 30 ms apart."""
    from killswitch.cluster.fleet import ACKS_SETTLE
    from killswitch.cluster.fleet import Fleet as FleetClient
    from killswitch.cluster.settings import resolve_cluster
    from killswitch.config.model import ClusterConfig

    users = {d: NatsUser.new(desk_permissions(PREFIX, d)) for d in ("desk-a", "desk-b")}
    operator = NatsUser.new(OPERATOR)
    server = NatsServer(workdir, [*users.values(), operator])
    await server.start()
    seen: list[tuple[str, str]] = []  # (desk, what), in the order it happened
    clients = []
    try:
        for i, (desk, user) in enumerate(users.items()):
            nc = await nats.connect(server.url, nkeys_seed_str=user.seed)
            clients.append(nc)

            async def on_trigger(msg: Any, desk: str = desk, delay: float = 0.03 * i) -> None:
                await asyncio.sleep(delay)  # a kill whose first cancel_all takes a while
                seen.append((desk, "ack"))
                await msg.respond(json.dumps({"desk": desk, "accepted": True}).encode())

            async def on_status(msg: Any, desk: str = desk) -> None:
                seen.append((desk, "status"))
                await msg.respond(json.dumps({"desk": desk, "state": "KILLING"}).encode())

            await nc.subscribe(f"{PREFIX}.trigger", cb=on_trigger)
            await nc.subscribe(f"{PREFIX}.status", cb=on_status)
            await nc.flush()
        config = ClusterConfig(servers=(server.url,), firm=FIRM, credentials_env=CREDS_ENV)
        settings = resolve_cluster(config, {CREDS_ENV: operator.seed, "KILLSWITCH_DESK": "ops"})
        assert settings is not None
        fleet = FleetClient(settings)
        await fleet.connect(5.0)
        try:
            started = time.monotonic()
            answer = await fleet.trigger("drill", timeout=2.0)
        finally:
            await fleet.close()
        assert set(answer.acks) == set(answer.statuses) == {"desk-a", "desk-b"}
        assert seen[:2] == [("desk-a", "ack"), ("desk-b", "ack")]
        assert sorted(seen[2:]) == [("desk-a", "status"), ("desk-b", "status")]
        assert time.monotonic() - started >= 0.03 + ACKS_SETTLE
    finally:
        for nc in clients:
            await nc.close()
        await server.stop()

"""End to end: who may use the control socket, decided by real users' peer credentials (§13).

The test creates real groups and users (``groupadd``/``useradd``, removed after)
and runs the client as each of them (``tests/as_user.py``: setgroups, setgid,
setuid, then connect), so the daemon sees the kernel's credentials of a
strategy user, two risk officers and an outsider.  Needs root; skipped without.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from killswitch.damping import DEFAULT_RATE
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating users and groups needs root"),
    pytest.mark.skipif(
        shutil.which("useradd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None,
        reason="no useradd (Debian package passwd)",
    ),
]

CHECKOUT = Path(__file__).resolve().parent.parent
SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Host:
    trading: str  # group names
    risk: str
    strategy: User
    risk1: User
    risk2: User
    outsider: User


def _run(tool: str, *argv: str, check: bool = True) -> None:
    """useradd and friends live in /usr/sbin, which a CI shell's PATH may lack."""
    path = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert path is not None, tool
    subprocess.run([path, *argv], check=check, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """Groups trading and risk; users strategy (trading), risk1 and risk2 (risk, trading),
    outsider (neither); all removed afterwards."""
    tag = secrets.token_hex(3)
    trading, risk = f"kst{tag}", f"ksr{tag}"
    names = {role: f"ks{role[:3]}{tag}" for role in ("strategy", "risk1", "risk2", "outsider")}
    names["risk2"] = f"ksq{tag}"  # risk1 and risk2 would share a prefix
    made_groups: list[str] = []
    made_users: list[str] = []
    try:
        for group in (trading, risk):
            _run("groupadd", group)
            made_groups.append(group)
        member = {
            "strategy": trading,
            "risk1": f"{risk},{trading}",
            "risk2": f"{risk},{trading}",
            "outsider": "",
        }
        for role, name in names.items():
            extra = ["-G", member[role]] if member[role] else []
            _run("useradd", "-M", "-s", "/usr/sbin/nologin", *extra, name)
            made_users.append(name)
        import pwd

        def user(name: str) -> User:
            entry = pwd.getpwnam(name)
            groups = tuple(os.getgrouplist(name, entry.pw_gid))
            return User(name, entry.pw_uid, entry.pw_gid, groups)

        assert grp.getgrnam(risk).gr_mem == [names["risk1"], names["risk2"]]
        yield Host(
            trading,
            risk,
            user(names["strategy"]),
            user(names["risk1"]),
            user(names["risk2"]),
            user(names["outsider"]),
        )
    finally:
        for name in made_users:
            _run("userdel", name, check=False)
        for group in made_groups:
            _run("groupdel", group, check=False)


async def as_user(user: User, *argv: str) -> tuple[int, str, str, int]:
    """``argv`` (``cli ...`` or ``raw ...``) as ``user``: (exit, stdout, stderr, its pid)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.as_user",
        str(user.uid),
        str(user.gid),
        ",".join(map(str, user.groups)),
        *argv,
        cwd=CHECKOUT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), proc.pid


async def codes(user: User, sock: Path, method: str, route: str, count: int = 1) -> list[int]:
    """The HTTP status of ``count`` requests ``user`` sends on one connection."""
    code, out, err, _ = await as_user(user, "raw", str(sock), method, route, str(count))
    assert code == 0, err
    found: list[int] = json.loads(out)
    return found


async def _daemon(
    sim_factory: SimFactory, workdir: Path, host: Host, **access: Any
) -> tuple[DaemonProcess, Path, Path]:
    workdir.chmod(0o755)  # the users must reach the socket; the socket's mode decides
    sim, url = await sim_factory(status_limit=(2000, 1.0), seed=3)
    sim.seed({"BTCUSDT": 3})
    rights = {
        "status": [f"@{host.trading}"],
        "heartbeat": [host.strategy.name],
        "trigger": [host.strategy.name, f"@{host.risk}"],
        "reset": [f"@{host.risk}"],
        **access,
    }
    config = write_config(
        workdir,
        url,
        control={
            "socket": str(workdir / "ctl.sock"),
            "socket_mode": "0666",
            "socket_group": host.trading,
            "approval_window": 60.0,
            "access": rights,
        },
        halt={"units": ["strategy.service"]},
    )
    config.chmod(0o644)
    # By hand, not under systemd (even if this test runner is): the halt is off.
    env = {k: v for k, v in daemon_env().items() if k != "INVOCATION_ID"}
    daemon = DaemonProcess(config, env)
    await daemon.start()
    return daemon, workdir / "ctl.sock", config


def _peer(user: User, pid: int) -> dict[str, Any]:
    return {"uid": user.uid, "user": user.name, "pid": pid}


async def test_every_right_is_decided_by_the_peer(
    sim_factory: SimFactory, workdir: Path, host: Host
) -> None:
    """status, heartbeat, trigger, reset: the holder gets through, anyone else gets 403."""
    daemon, sock, config = await _daemon(sim_factory, workdir, host)
    st, r1, out = host.strategy, host.risk1, host.outsider
    shown = sock.stat()
    assert (shown.st_mode & 0o777, shown.st_gid) == (0o666, grp.getgrnam(host.trading).gr_gid)

    assert await codes(st, sock, "GET", "/status") == [200]  # @trading
    assert await codes(out, sock, "GET", "/status") == [403]
    assert await codes(out, sock, "GET", "/metrics") == [403]  # the status right
    assert await codes(out, sock, "GET", "/%73tatus") == [403]  # the route, however spelled
    assert await codes(st, sock, "GET", "/%73tatus") == [200]
    assert await codes(out, sock, "GET", "/nothing-here") == [404]
    assert await codes(st, sock, "POST", "/heartbeat") == [200]
    assert await codes(r1, sock, "POST", "/heartbeat") == [403]
    assert await codes(out, sock, "POST", "/trigger") == [403]
    assert not daemon.named("trigger.fired")
    assert await codes(st, sock, "POST", "/reset") == [403]  # the strategy cannot re-arm
    assert await codes(st, sock, "POST", "/flatten") == [403]  # nor flatten (the reset right)

    denied = await daemon.wait_for("control.denied", count=6)
    assert {(e["right"], e["peer"]["user"]) for e in daemon.named("control.denied")} == {
        ("status", out.name),
        ("heartbeat", r1.name),
        ("trigger", out.name),
        ("reset", st.name),
    }
    assert denied["peer"]["uid"] == st.uid

    # The CLI: a trigger by the strategy carries its peer; a reset it may not do is one line.
    code, _, err, pid = await as_user(st, "cli", "trigger", "--config", str(config))
    assert code == 0, err
    fired = await daemon.wait_for("trigger.fired")
    assert fired["source"] == "manual"
    assert fired["peer"] == _peer(st, pid)
    await daemon.wait_for("kill.completed")
    code, _, err, _ = await as_user(st, "cli", "reset", "--config", str(config))
    assert code == 1
    assert err.strip().count("\n") == 0
    assert "'reset'" in err
    assert st.name in err
    assert str(sock) in err

    code, said, err, pid = await as_user(
        r1, "cli", "reset", "--config", str(config), "--reason", "checked the book"
    )
    assert code == 0, err
    assert "state ARMED" in said
    reset = await daemon.wait_for("switch.reset")
    assert reset["peer"] == _peer(r1, pid)
    assert reset["reason"] == "checked the book"
    # ... and in the kill's record (contract §16: `killswitch report`).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "killswitch", "report", "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    recorded = json.loads((await proc.communicate())[0])["reset"]
    assert recorded["peer"] == _peer(r1, pid)
    assert recorded["reason"] == "checked the book"
    # Root (the test, the daemon's own user here) holds every right without being listed.
    status = await codes_root(sock)
    assert status["state"] == "ARMED"
    assert status["halt"]["state"] == "off"
    assert "not under systemd" in status["halt"]["why"]

    # A reload changes the rights at once (the socket stays as it is).
    data = tomllib.loads(config.read_text())
    data["control"]["access"]["heartbeat"].append(out.name)
    config.write_text(tomli_w.dumps(data))
    daemon.send(signal.SIGHUP)
    reloaded = await daemon.wait_for("config.reloaded")
    assert reloaded["needs_restart"] == []
    assert await codes(out, sock, "POST", "/heartbeat") == [200]
    assert await daemon.stop() == 0


async def codes_root(sock: Path) -> dict[str, Any]:
    from killswitch.service.control import ControlClient

    code, body = await ControlClient(sock).request("GET", "/status")
    assert code == 200
    result: dict[str, Any] = body
    return result


async def test_four_eyes_reset_needs_two_different_users(
    sim_factory: SimFactory, workdir: Path, host: Host
) -> None:
    """reset_approvals = 2: 202 pending, the same user again is still one, a second completes;
    a pending approval lapses after the window and a new kill cancels it."""
    daemon, sock, config = await _daemon(sim_factory, workdir, host, reset_approvals=2)
    r1, r2 = host.risk1, host.risk2
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed")

    code, said, err, pid1 = await as_user(
        r1, "cli", "reset", "--config", str(config), "--reason", "flat, checked"
    )
    assert code == 0, err
    assert "approval 1 of 2" in said
    pending = await daemon.wait_for("reset.pending")
    assert pending["peer"] == _peer(r1, pid1)
    assert await codes(r1, sock, "POST", "/reset") == [202]  # the same user: still one
    assert (await codes_root_status(sock))["state"] == "TRIPPED"
    code, said, err, pid2 = await as_user(r2, "cli", "reset", "--config", str(config))
    assert code == 0, err
    assert "state ARMED" in said
    reset = await daemon.wait_for("switch.reset")
    assert reset["peers"] == [_peer(r1, pid1), _peer(r2, pid2)]
    assert reset["reason"] == "flat, checked"
    assert len(daemon.named("reset.pending")) == 1  # the repeat changed nothing

    # Lapse: a reload shortens the window (at once); one approval, then the window ends
    # and the next reset starts over.
    data = tomllib.loads(config.read_text())
    data["control"]["approval_window"] = 2.0
    config.write_text(tomli_w.dumps(data))
    daemon.send(signal.SIGHUP)
    await daemon.wait_for("config.reloaded")
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed", count=2)
    assert await codes(r1, sock, "POST", "/reset") == [202]
    lapsed = await daemon.wait_for("reset.lapsed", timeout=5)
    assert lapsed["peer"]["uid"] == r1.uid
    assert await codes(r2, sock, "POST", "/reset") == [202]  # a new first approval
    # A new kill cancels the pending one.
    daemon.send(signal.SIGUSR1)
    cancelled = await daemon.wait_for("reset.lapsed", count=2)
    assert cancelled["why"] == "a new kill started"
    assert cancelled["peer"]["uid"] == r2.uid
    assert (await codes_root_status(sock))["state"] in ("KILLING", "TRIPPED")
    assert await daemon.stop() == 0


async def codes_root_status(sock: Path) -> dict[str, Any]:
    return await codes_root(sock)


async def test_a_denied_flood_changes_nothing_for_the_allowed(
    sim_factory: SimFactory, workdir: Path, host: Host
) -> None:
    """An outsider's thousands of refused requests: every heartbeat of the strategy is
    answered, control.denied stays damped, a SIGUSR1 still kills."""
    daemon, sock, _ = await _daemon(sim_factory, workdir, host)
    floods = [
        asyncio.create_task(codes(host.outsider, sock, "POST", route, 800))
        for route in ("/reset", "/trigger", "/reset", "/heartbeat")
    ]
    await asyncio.sleep(0.3)  # the flood is under way
    started = time.perf_counter()
    beats = await codes(host.strategy, sock, "POST", "/heartbeat", 50)
    print(f"50 heartbeats during a denied flood: {(time.perf_counter() - started) * 1000:.0f} ms")
    refused = [c for flood in await asyncio.gather(*floods) for c in flood]

    assert beats == [200] * 50
    assert refused == [403] * 3200
    assert not daemon.named("trigger.fired")
    logged = daemon.named("control.denied")
    # Damped per right and uid: a burst of DEFAULT_RATE each for trigger, reset, heartbeat
    # (and, should the bucket drip meanwhile, one carrying the suppressed count).
    assert len(logged) <= 3 * (DEFAULT_RATE + 1)
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    assert done["cancelled"] == 3
    assert await daemon.stop() == 0

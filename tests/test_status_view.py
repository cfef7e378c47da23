"""Status that cannot be misread: the trigger states in words, durations, the watch view,
`killswitch heartbeat` and a refused control socket."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from killswitch.cli import watch
from killswitch.service.status_view import duration, format_status, progress_bar, render_watch
from killswitch.triggers.heartbeat import DeadManSwitch
from killswitch.triggers.pnl import PnlMonitor
from tests.fakes import FakeClock
from tests.test_integration import running  # noqa: F401  (the fixture)

KILLING: dict[str, Any] = {
    "state": "KILLING",
    "kill_id": "a1b2c3d4e5f60718",
    "progress": {
        "kill_id": "a1b2c3d4e5f60718",
        "elapsed_s": 35.2,
        "confirmed": 20,
        "total": 50,
        "outcomes": {"cancelled": 19, "filled": 1, "partially_filled": 0},
        "sweeps_left": 0,
        "budgets": {},
        "eta_s": 86.0,
    },
    "trigger_states": {"signal": "watching", "heartbeat": "watching", "pnl": "off"},
    "heartbeat_age": 0.4,
    "heartbeat_timeout": 30.0,
    "pnl": None,
    "pnl_threshold": -50000.0,
    "last_kill": None,
    "rate_limit": {
        "cancel_all": {"available": 9, "limit": 10, "next_free_in": 0.0},
        "order_status": {"available": 0, "limit": 20, "next_free_in": 25.3},
    },
}


def rows(text: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in text.splitlines())


def test_durations_read_in_seconds_minutes_hours() -> None:
    """Durations are s below two minutes, then min, then h."""
    assert duration(0.4) == "0.4 s"
    assert duration(42) == "42 s"
    assert duration(210) == "3.5 min"
    assert duration(3 * 3600) == "3.0 h"


def test_watch_screen_shows_bar_estimate_and_budgets() -> None:
    """One watch screen: the state in words, a progress bar, the estimate, the budgets."""
    screen = render_watch(KILLING, now="15:42:07Z", socket="/run/killswitch/control.sock")
    print(screen)  # the screen pasted in the report
    lines = screen.splitlines()
    assert lines[0].startswith("killswitch status --watch  /run/killswitch/control.sock")
    got = rows("\n".join(lines[2:]))
    assert got["state"] == "KILLING: cancelling and confirming every open order"
    assert got["progress"] == f"{progress_bar(20, 50)} confirmed"
    assert progress_bar(20, 50).startswith("[" + "#" * 16 + "-" * 24 + "]")
    assert got["estimate"] == "~86 s left (running 35 s)"
    assert got["outcomes"] == "19 cancelled, 1 filled, 0 partially_filled"
    assert got["budget:order_status"] == "0/20 free now, next free in 25 s"
    assert got["heartbeat"] == "watching (last heartbeat 0.4 s ago, timeout 30 s)"
    assert got["pnl"].startswith("off (no reading yet")


def test_heartbeat_trigger_states() -> None:
    """waiting for first heartbeat → watching → fired, waiting for heartbeats → watching."""
    clock = FakeClock()
    fired: list[float] = []
    dead = DeadManSwitch(1.0, clock, fired.append)
    assert dead.state() == "waiting for first heartbeat"
    dead.beat()
    assert dead.state() == "watching"

    async def run() -> None:
        task = asyncio.create_task(dead.run())
        await clock.advance(1.5)
        assert fired
        assert dead.state() == "fired, waiting for heartbeats"
        dead.beat()
        assert dead.state() == "watching"
        task.cancel()

    asyncio.run(run())
    assert DeadManSwitch(1.0, clock, fired.append, enabled=False).state() == "off"


def test_pnl_after_reset_says_it_waits_for_a_recovery() -> None:
    """A breach, then a reset with the PnL still low: the PnL trigger says it waits for a
    recovery above the threshold (the switch alone would read ARMED)."""
    fired: list[str] = []
    pnl = PnlMonitor(-100.0, 0.0, FakeClock(), lambda why, _: fired.append(why))
    assert pnl.state() == "waiting for first reading"
    pnl.observe(50.0)
    assert pnl.state() == "watching"
    pnl.observe(-150.0)
    assert fired == ["breach"]
    pnl.rearm()
    assert pnl.state() == "below threshold: waits for a recovery above it"
    pnl.observe(-120.0)
    assert fired == ["breach"]  # still low: no second kill
    pnl.observe(0.0)
    assert pnl.state() == "watching"


async def test_watch_redraws_until_the_kill_it_saw_has_ended() -> None:
    """status --watch: a screen per poll while ARMED and KILLING; it returns after the
    first screen that shows the kill ended (TRIPPED), without terminal codes off a tty."""
    bodies = [
        {**KILLING, "state": "ARMED", "progress": None},
        KILLING,
        {**KILLING, "progress": {**KILLING["progress"], "confirmed": 45, "eta_s": 12.0}},
        {**KILLING, "state": "TRIPPED", "progress": None},
        {**KILLING, "state": "ARMED", "progress": None},  # never read
    ]

    class Client:
        path = Path("/run/ks.sock")

        async def request(self, method: str, route: str) -> tuple[int, Any]:
            assert (method, route) == ("GET", "/status")
            return 200, bodies.pop(0)

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    out = io.StringIO()
    assert await watch(Client(), 2.0, out, sleep=sleep) == 0  # type: ignore[arg-type]
    screens = out.getvalue().split("killswitch status --watch")[1:]
    assert len(screens) == 4
    assert slept == [2.0, 2.0, 2.0]
    assert "~12 s left" in screens[2]
    assert "TRIPPED: the kill is done; latched until `killswitch reset`" in screens[3]
    assert "\x1b[" not in out.getvalue()


async def test_heartbeat_command_prints_the_state(running: Any) -> None:  # noqa: F811
    """`killswitch heartbeat` prints the state the daemon answered (and that the heartbeat
    trigger is off), and `status` names each trigger's own state."""
    daemon, _, _ = await running()
    config = str(daemon.parts.config.source)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "killswitch", "heartbeat", "--config", config,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().strip() == "heartbeat accepted: state ARMED; the heartbeat trigger is off"
    got = rows(format_status(daemon.parts.answers.status()))
    assert got["heartbeat"].startswith("off (last heartbeat ")
    assert got["pnl"].startswith("off (no reading yet")
    assert got["state"] == "ARMED: watching the triggers"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
async def test_permission_denied_names_socket_user_and_remedy(running: Any) -> None:  # noqa: F811
    """A user the 0600 socket refuses is told which socket, which user, and to use sudo or
    the service user, not that no daemon answers."""
    daemon, _, _ = await running()
    sock = daemon.parts.config.control.socket
    os.chmod(sock.parent, 0o755)  # noqa: S103  the test's temp dir; the socket stays 0600
    # Imports as root, then the client runs as nobody (uid 65534): what a user not allowed
    # on the 0600 socket sees.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import asyncio, os, sys; from pathlib import Path\n"
        "from killswitch.service.control import ControlClient, DaemonUnavailable\n"
        "client = ControlClient(Path(sys.argv[1]))\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try: asyncio.run(client.request('GET', '/status')); print('answered')\n"
        "except DaemonUnavailable as e: print(e)",
        str(sock), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    text = out.decode()
    assert f"permission denied on the control socket {sock}" in text
    assert "uid 65534" in text
    assert "sudo" in text
    assert "belongs to root" in text

"""The README's "Run it by hand" session, step by step, as a new user types it.

The real simulator (``killswitch sim --port 0``), the real daemon on a copy of
``config/demo.toml`` (its own port and socket, a 1 s dead-man, a venue slow
for about a second instead of 5 to 20), and the README's own commands: every
CLI line and admin request below is read from the README, so the session
cannot drift from what the README tells a reader to type.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import DaemonProcess, daemon_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SESSION = README[
    README.index("## Run it by hand") : README.index("The admin API of `killswitch sim`")
]


def typed(fragment: str) -> str:
    """The README line of the session that contains ``fragment`` (the command part)."""
    logical = SESSION.replace("\\\n", " ")  # shell continuation lines joined
    lines = [line for line in logical.splitlines() if fragment in line]
    assert lines, f"the README's session no longer says {fragment!r}"
    return lines[0]


def readme_rows(after: str) -> dict[str, str]:
    """The rows of the first output block of the session after the line ``after``."""
    block = SESSION[SESSION.index(after) :].split("```\n")[2]
    return dict(line.split(maxsplit=1) for line in block.splitlines() if line != "...")


def rows(text: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in text.splitlines() if " " in line)


class Session:
    """Terminal 1 (the simulator's admin API), terminal 3 (the CLI)."""

    def __init__(self, base_url: str, config: Path) -> None:
        self.base_url = base_url
        self.config = config
        self.env = daemon_env()

    async def admin(self, fragment: str, body: Any = None) -> Any:
        """One of the README's ``curl localhost:8700/_sim/...`` lines, against this sim."""
        line = typed(fragment)
        route = re.search(r"localhost:8700(/_sim/\w+)", line)
        assert route is not None, line
        data = re.search(r"-d '([^']+)'", line)
        if body is None and data is not None:
            body = json.loads(data.group(1))
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                "GET" if body is None else "POST", self.base_url + route.group(1), json=body
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def cli(
        self, fragment: str, *extra: str, value: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The README's ``killswitch ...`` (or ``python examples/...``) line containing
        ``fragment``, ``$C`` this config; ``value`` replaces the PnL value it writes."""
        command = typed(fragment).split("#")[0].split(" | ")[0].strip()
        argv = [a.replace("$C", str(self.config)) for a in shlex.split(command)]
        assert argv[0] in ("killswitch", "python"), command
        if argv[0] == "killswitch":
            argv = [sys.executable, "-m", "killswitch", *argv[1:]]
        else:  # python examples/write_pnl.py config/demo-run/pnl.json VALUE
            argv = [sys.executable, str(ROOT / argv[1]), *argv[2:-1], value or argv[-1]]
        return await asyncio.to_thread(
            subprocess.run,
            [*argv, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.env,
            cwd=self.config.parent.parent,  # the checkout: config/demo-run/pnl.json
        )


async def start_sim() -> tuple[asyncio.subprocess.Process, str]:
    """``killswitch sim --port 8700 &``, on a free port."""
    assert "killswitch sim --port 8700 &" in typed("killswitch sim --port")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "killswitch", "sim", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    assert ready["event"] == "sim.ready"
    return proc, str(ready["base_url"])


def demo_config(checkout: Path, base_url: str) -> Path:
    """config/demo.toml as the README runs it, at this sim's URL, with its own socket."""
    text = (ROOT / "config" / "demo.toml").read_text()
    text = text.replace('"http://127.0.0.1:8700"', f'"{base_url}"')
    text = text.replace("/tmp/killswitch-demo/control.sock", str(checkout / "ctl.sock"))
    text = text.replace("timeout = 10.0", "timeout = 1.0")  # the dead-man, shortened
    (checkout / "config").mkdir()
    path = checkout / "config" / "demo.toml"
    path.write_text(text)
    return path


def screens(text: str) -> list[dict[str, str]]:
    return [rows(s) for s in text.split("killswitch status --watch ")[1:]]


async def test_run_it_by_hand(workdir: Path) -> None:
    """Steps 3-8 of "Run it by hand" do what the README says: status of an idle switch,
    a watched kill on a slow venue whose counts add up, reset, the PnL edge after a reset,
    the dead-man armed by the first heartbeat, SIGUSR1, and a trigger with no daemon."""
    sim, url = await start_sim()
    config = demo_config(workdir, url)
    daemon = DaemonProcess(config)
    you = Session(url, config)
    try:
        # Step 2: the PnL directory, the online check, the daemon.
        assert "mkdir -p config/demo-run " in typed("mkdir -p config/demo-run")
        (workdir / "config" / "demo-run").mkdir()
        online = await you.cli("--config config/demo.toml --online")
        assert online.returncode == 0, online.stderr
        assert json.loads(online.stdout)["online"]["ok"] is True
        await daemon.start()
        await daemon.wait_for("exchange.self_test")

        # Step 3: an idle switch, nothing armed but the signal, the PnL watch and the CLI.
        status = rows((await you.cli("killswitch status --config $C")).stdout)
        shown = readme_rows("killswitch status --config $C\n```")
        shown["heartbeat"] = shown["heartbeat"].replace("timeout 10 s", "timeout 1.0 s")
        for key in ("state", "heartbeat", "pnl", "last_kill"):
            assert status[key] == shown[key], key
        assert re.fullmatch(r"ok \(self-test passed, clock offset -?\d+ ms\)", status["exchange"])
        assert status["daemon"].startswith(f"pid {daemon.pid}, version ")
        assert status["signal"] == f"watching (SIGUSR1 kills: kill -USR1 {daemon.pid})"

        # Step 4: a slow venue before the kill, the kill, the watch, the venue made quick.
        await you.admin('"BTCUSDT": 200, "ETHUSDT": 100')
        slow = await you.admin('"cancel_delay": [5, 20]', {"cancel_delay": [0.6, 1.2]})
        assert slow["cancel_delay"] == [0.6, 1.2]
        assert (await you.admin('# {"RAISED":300}'))["orders"] == {"RAISED": 300}
        trigger = await you.cli('--reason "by hand"')
        assert re.fullmatch(r"trigger started: kill [0-9a-f]{16}\n", trigger.stdout)
        watch = await you.cli("killswitch status --watch --config $C", "--interval", "0.1")
        assert watch.returncode == 0, watch.stderr
        assert watch.stdout.endswith(
            "the kill has ended (no kill running): TRIPPED; `killswitch reset` re-arms\n"
        )
        killing = [s for s in screens(watch.stdout) if s["state"].startswith("KILLING")]
        assert killing, watch.stdout
        for screen in killing:  # one count: the outcomes add up to the confirmed orders
            confirmed = int(screen["progress"].split("] ")[1].split("/")[0])
            outcomes = sum(int(part.split()[0]) for part in screen["outcomes"].split(", "))
            assert outcomes == confirmed, screen
        quick = await you.admin('"cancel_delay": [0.02, 0.3]')
        assert quick["cancel_delay"] == [0.02, 0.3]
        assert (await you.admin('# {"CANCELLED":300}'))["orders"] == {"CANCELLED": 300}

        # The record keeps how each order was learned, though order.status is not written.
        report = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "killswitch", "report", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=you.env,
        )
        assert report.returncode == 0, report.stderr
        learned = {o["learned"] for o in json.loads(report.stdout)["orders"]}
        assert learned, report.stdout
        assert all(how.startswith("listing (") for how in learned), learned  # which listing

        # Step 5: tripped, then reset.
        status = rows((await you.cli("TRIPPED; last_kill ... 300 cancelled")).stdout)
        assert status["state"].startswith("TRIPPED")
        assert "300 cancelled" in status["last_kill"]
        assert "flat: True" in status["last_kill"]
        assert (await you.cli("# reset: state ARMED   (again")).stdout == "reset: state ARMED\n"
        again = (await you.cli("# reset: state ARMED   (again")).stdout
        assert again.startswith("reset: already armed")

        # Step 6: the PnL edge, and the reading it needs after a reset.
        assert (await you.cli("pnl.json 1200.5    # the daemon logs pnl.read")).returncode == 0
        assert (await daemon.wait_for("pnl.read", lambda e: e["pnl"] == 1200.5))["level"] == "info"
        await you.admin('"BTCUSDT": 20}}')
        await you.cli("pnl.json -6000     # pnl.breach")
        await daemon.wait_for("pnl.breach")
        done = await daemon.wait_for("kill.completed", count=2)
        assert (done["cancelled"], done["flat"]) == (20, True)
        assert (
            "by pnl: 20 cancelled"
            in rows((await you.cli("by pnl: 20 cancelled")).stdout)["last_kill"]
        )
        assert (await you.cli("# reset: state ARMED")).returncode == 0
        status = rows((await you.cli("# pnl  below threshold")).stdout)
        assert status["pnl"].startswith("below threshold: waits for a recovery above it")
        assert "before the reset: it does not count" in status["pnl"]
        fired = len(daemon.named("trigger.fired"))
        assert "Writing `-7000` now fires nothing" in " ".join(SESSION.split())
        await you.cli("pnl.json -6000     # pnl.breach", value="-7000")
        await daemon.wait_for("pnl.read", lambda e: e["pnl"] == -7000)
        assert len(daemon.named("trigger.fired")) == fired  # no edge: nothing fires

        # Step 7: the first heartbeat arms the dead-man; silence kills.
        await you.admin('"BTCUSDT": 20}}')
        beat = await you.cli("killswitch heartbeat --config $C   # heartbeat accepted")
        assert beat.stdout == "heartbeat accepted: state ARMED\n"
        assert (await daemon.wait_for("heartbeat.armed"))["level"] == "info"
        await daemon.wait_for("heartbeat.timeout")
        fired_by = await daemon.wait_for("trigger.fired", lambda e: e["source"] == "heartbeat")
        assert not fired_by.get("coalesced")
        assert (await daemon.wait_for("kill.completed", count=3))["cancelled"] == 20
        status = rows((await you.cli("killswitch status --config $C")).stdout)
        assert status["heartbeat"].startswith("fired, waiting for heartbeats")

        # Step 8: SIGUSR1 while tripped sweeps again; Ctrl-C stops; the CLI says what works.
        daemon.send(signal.SIGUSR1)
        signalled = await daemon.wait_for("trigger.fired", lambda e: e["source"] == "signal")
        assert signalled["outcome"] == "started"
        await daemon.wait_for("kill.completed", count=4)
        assert await daemon.stop(signal.SIGINT) == 0
        assert daemon.named("daemon.stopping")
        assert daemon.named("order.status") == []  # per-order lines are debug
        assert daemon.named("kill.progress") or daemon.named("kill.completed")
        gone = await you.cli('--reason "by hand"')
        assert gone.returncode == 1
        assert "no daemon answers" in gone.stderr
        assert "no process holds the state file" in gone.stderr
        assert "the daemon is not running" in gone.stderr
    finally:
        if daemon.returncode is None and daemon.proc is not None:
            await daemon.stop()
        sim.send_signal(signal.SIGTERM)
        await sim.wait()

"""The README's heartbeat and PnL snippets work against the real daemon."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def _command(language: str, sock: Path) -> list[str]:
    args = [str(sock), "0.05" if language in ("python",) else "50", "3"]
    if language == "python":
        return [sys.executable, str(EXAMPLES / "heartbeat.py"), *args]
    if language == "node":
        return ["node", str(EXAMPLES / "heartbeat.js"), *args]
    if language == "java":
        return ["java", str(EXAMPLES / "Heartbeat.java"), *args]
    return ["go", "run", str(EXAMPLES / "heartbeat.go"), str(sock), "50ms", "3"]


@pytest.mark.parametrize("language", ["python", "node", "java", "go"])
async def test_heartbeat_snippet(language: str, workdir: Path, sim_factory: SimFactory) -> None:
    """Each language's heartbeat example gets 200s from the daemon and arms the dead-man switch."""
    tool = {"python": sys.executable, "node": "node", "java": "java", "go": "go"}[language]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed on this machine")
    _, url = await sim_factory()
    config = write_config(workdir, url, triggers={"heartbeat": {"enabled": True, "timeout": 60}})
    daemon = DaemonProcess(config)
    await daemon.start()
    proc = await asyncio.create_subprocess_exec(
        *_command(language, workdir / "ctl.sock"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["ok", "ok", "ok"]
    _, status = await ControlClient(workdir / "ctl.sock").request("GET", "/status")
    assert status["heartbeat_armed"] is True
    assert status["heartbeat_age"] < 60
    assert await daemon.stop() == 0


async def test_write_pnl_snippet(workdir: Path, sim_factory: SimFactory) -> None:
    """examples/write_pnl.py's atomic rename is seen by the daemon's watcher."""
    _, url = await sim_factory()
    pnl = workdir / "pnl.json"
    config = write_config(
        workdir, url, triggers={"pnl": {"enabled": True, "threshold": -10.0, "stale_after": 0}}
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "write_pnl.py"), str(pnl), "123.5"
    )
    assert await proc.wait() == 0
    ctl = ControlClient(workdir / "ctl.sock")
    async with asyncio.timeout(10):
        while (await ctl.request("GET", "/status"))[1]["pnl"] != 123.5:
            await asyncio.sleep(0.01)
    assert list(workdir.glob(".pnl-*")) == []
    assert await daemon.stop() == 0

"""End to end: heartbeat dead-man switch, PnL file, control API, CLI and reload."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient, DaemonUnavailable
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_atomically, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


async def _started(
    sim_factory: SimFactory, workdir: Path, **overrides: Any
) -> tuple[SimExchange, DaemonProcess, ControlClient]:
    sim, url = await sim_factory(status_limit=(2000, 1.0), cancel_delay=(0.01, 0.05), seed=5)
    sim.seed({"BTCUSDT": 10})
    daemon = DaemonProcess(write_config(workdir, url, **overrides))
    await daemon.start()
    return sim, daemon, ControlClient(workdir / "ctl.sock")


async def _pnl_started(
    sim_factory: SimFactory, workdir: Path, initial: str, stale_after: float = 0
) -> tuple[Path, DaemonProcess, ControlClient]:
    """A daemon watching workdir/pnl.json (threshold -1000), the file first holding ``initial``."""
    pnl = workdir / "pnl.json"
    write_atomically(pnl, initial)
    _, daemon, ctl = await _started(
        sim_factory,
        workdir,
        triggers={"pnl": {"enabled": True, "threshold": -1000.0, "stale_after": stale_after}},
    )
    return pnl, daemon, ctl


async def test_heartbeat_silence_fires_exactly_one_kill_after_timeout(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Heartbeats every 100 ms then silence: one kill, not before last beat + timeout."""
    timeout = 0.5
    sim, daemon, ctl = await _started(
        sim_factory, workdir, triggers={"heartbeat": {"enabled": True, "timeout": timeout}}
    )
    last_answered = 0.0
    for _ in range(12):
        status, _ = await ctl.request("POST", "/heartbeat")
        assert status == 200
        last_answered = asyncio.get_running_loop().time()
        await asyncio.sleep(0.1)
    assert daemon.named("trigger.fired") == []
    done = await daemon.wait_for("kill.completed")
    fired = daemon.named("heartbeat.timeout")
    assert len(fired) == 1
    assert fired[0]["age"] >= timeout
    assert daemon.named("trigger.fired")[0]["source"] == "heartbeat"
    # No second kill while the heartbeat stays silent (disarmed until the next beat).
    await asyncio.sleep(3 * timeout)
    assert len(daemon.named("kill.started")) == 1
    assert asyncio.get_running_loop().time() - last_answered > 3 * timeout
    assert done["cancelled"] == 10
    assert sum(sim.stats()["violations"].values()) == 0
    assert await daemon.stop() == 0


async def test_pnl_rename_below_threshold_fires_one_kill(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """PnL rewritten by rename from above to below the threshold: one kill, source pnl."""
    pnl, daemon, ctl = await _pnl_started(sim_factory, workdir, '{"pnl": 250.0}')
    _, status = await ctl.request("GET", "/status")
    assert status["pnl"] == 250.0
    write_atomically(pnl, '{"pnl": -999.0, "ts": 1}')
    write_atomically(pnl, '{"pnl": -1500.5}')
    breach = await daemon.wait_for("pnl.breach")
    assert breach["pnl"] == -1500.5
    assert breach["threshold"] == -1000.0
    await daemon.wait_for("kill.completed")
    write_atomically(pnl, '{"pnl": -2000}')  # still below: level, not edge
    await asyncio.sleep(0.3)
    fired = daemon.named("trigger.fired")
    assert [(e["source"], e["outcome"]) for e in fired] == [("pnl", "started")]
    assert await daemon.stop() == 0


async def test_pnl_garbage_is_logged_and_never_kills(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Garbage between good values: pnl.invalid, no kill, daemon alive, last value stands."""
    pnl, daemon, ctl = await _pnl_started(sim_factory, workdir, "100")
    # Five kinds: the damper's burst (a sixth within the minute would be suppressed).
    for garbage in ("NaN", '{"pnl": Infinity}', "", '{"pnl": 1', "\x00\xff"):
        write_atomically(pnl, garbage)
        await daemon.wait_for("pnl.invalid", count=len(daemon.named("pnl.invalid")) + 1)
    write_atomically(pnl, "50")
    await asyncio.sleep(0.2)
    _, status = await ctl.request("GET", "/status")
    assert status["state"] == "ARMED"
    assert status["pnl"] == 50.0
    assert daemon.named("trigger.fired") == []
    assert len(daemon.named("pnl.invalid")) == 5
    assert await daemon.stop() == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _cli_async(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, *args)


async def test_cli_status_trigger_reset_heartbeat(workdir: Path, sim_factory: SimFactory) -> None:
    """The CLI verbs drive the daemon: trigger kills, status shows TRIPPED, reset re-arms."""
    sim, daemon, _ = await _started(sim_factory, workdir)
    config = str(daemon.config)
    result = await _cli_async("heartbeat", "--config", config)
    assert result.returncode == 0, result.stderr
    result = await _cli_async("trigger", "--config", config, "--reason", "desk halt")
    assert result.returncode == 0, result.stderr
    done = await daemon.wait_for("kill.completed")
    assert done["reason"] == "desk halt"
    assert daemon.named("trigger.fired")[0]["source"] == "manual"
    result = await _cli_async("status", "--config", config, "--json")
    assert result.returncode == 0
    status = json.loads(result.stdout)
    assert status["state"] == "TRIPPED"
    assert status["last_kill"]["cancelled"] == 10
    assert status["heartbeat_age"] is not None
    for key in ("state", "heartbeat_age", "pnl", "last_kill"):
        assert key in status
    human = await _cli_async("status", "--config", config)
    assert "TRIPPED" in human.stdout
    assert "10 cancelled" in human.stdout
    result = await _cli_async("reset", "--config", config)
    assert result.returncode == 0
    assert "ARMED" in result.stdout
    assert await daemon.stop() == 0
    assert sum(sim.stats()["violations"].values()) == 0


async def test_cli_without_daemon_says_so_and_exits_1(workdir: Path) -> None:
    """With no daemon on the socket, each verb prints one line and exits 1; trigger adds a
    second line, what still works (here: nothing holds the state file, so no daemon runs)."""
    config = write_config(workdir, "http://127.0.0.1:9")
    for verb in ("status", "trigger", "heartbeat", "reset"):
        result = await _cli_async(verb, "--config", str(config))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == (2 if verb == "trigger" else 1)
        assert "no daemon answers" in lines[0]
        if verb == "trigger":
            assert lines[1].startswith("no process holds the state file ")


async def test_latch_survives_restart_and_reset(workdir: Path, sim_factory: SimFactory) -> None:
    """After a kill the switch is TRIPPED across a restart until reset re-arms it."""
    _, daemon, ctl = await _started(sim_factory, workdir)
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed")
    assert await daemon.stop() == 0
    again = DaemonProcess(daemon.config)
    await again.start()
    assert again.named("daemon.ready")[0]["state"] == "TRIPPED"
    _, status = await ctl.request("GET", "/status")
    assert status["state"] == "TRIPPED"
    assert status["last_kill"]["cancelled"] == 10
    code, body = await ctl.request("POST", "/reset")
    assert code == 200
    assert body["state"] == "ARMED"
    assert await again.stop() == 0
    third = DaemonProcess(daemon.config)
    await third.start()
    assert third.named("daemon.ready")[0]["state"] == "ARMED"
    assert await third.stop() == 0


async def test_control_api_contract(workdir: Path, sim_factory: SimFactory) -> None:
    """POST /trigger → 202, bad body → 400, socket mode 0600, /metrics is Prometheus text."""
    _, daemon, ctl = await _started(sim_factory, workdir)
    assert (workdir / "ctl.sock").stat().st_mode & 0o777 == 0o600
    code, _ = await ctl.request("POST", "/trigger", parse=lambda b: b)
    assert code == 202
    await daemon.wait_for("kill.completed")
    code, body = await ctl.request("GET", "/metrics", parse=lambda b: b.decode())
    assert code == 200
    assert 'killswitch_kills_total{source="manual"} 1.0' in body
    assert 'killswitch_state{state="TRIPPED"} 1.0' in body
    assert 'killswitch_orders_final_total{outcome="cancelled"} 10.0' in body
    assert "killswitch_exchange_requests_total" in body
    assert "killswitch_heartbeat_age_seconds" in body
    assert await daemon.stop() == 0


async def test_second_daemon_on_live_socket_is_refused(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """A second daemon refuses a control socket a live daemon owns; a stale one is replaced."""
    _, daemon, ctl = await _started(sim_factory, workdir)
    second = DaemonProcess(daemon.config)
    await second.start(wait_ready=False)
    assert await second.exited() == 1
    refused = second.named("daemon.start_failed")
    assert len(refused) == 1
    assert "already listens" in refused[0]["detail"]
    assert second.stderr == b""  # an event, not a line of text
    code, _ = await ctl.request("GET", "/status")
    assert code == 200
    await daemon.kill()  # SIGKILL leaves a stale socket file behind
    assert (workdir / "ctl.sock").exists()
    with pytest.raises(DaemonUnavailable):
        await ctl.request("GET", "/status")
    third = DaemonProcess(daemon.config)
    await third.start()
    assert third.named("control.stale_socket_removed")
    assert await third.stop() == 0


async def test_sighup_reloads_thresholds_and_keeps_latch(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """SIGHUP applies a new heartbeat timeout keeping the latch; a bad new config is refused."""
    _, daemon, ctl = await _started(sim_factory, workdir)
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed")
    text = daemon.config.read_text()
    daemon.config.write_text(
        text.replace(
            "[triggers.heartbeat]\nenabled = false",
            "[triggers.heartbeat]\nenabled = true\ntimeout = 7.5",
        )
    )
    daemon.send(signal.SIGHUP)
    await daemon.wait_for("config.reloaded")
    _, status = await ctl.request("GET", "/status")
    assert status["state"] == "TRIPPED"
    assert status["heartbeat_timeout"] == 7.5
    daemon.config.write_text(text + "\n[bogus]\n")
    daemon.send(signal.SIGHUP)
    failed = await daemon.wait_for("config.reload_failed")
    assert failed["key"] == "bogus"
    _, status = await ctl.request("GET", "/status")
    assert status["heartbeat_timeout"] == 7.5
    assert status["state"] == "TRIPPED"
    assert await daemon.stop() == 0


async def test_pnl_stale_file_fires_with_reason_stale(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """No valid PnL for stale_after seconds (the writer died): one kill, reason stale."""
    pnl, daemon, _ = await _pnl_started(sim_factory, workdir, "10", stale_after=0.6)
    write_atomically(pnl, "garbage")  # invalid content does not refresh the clock
    fired = await daemon.wait_for("trigger.fired")
    assert fired["source"] == "pnl"
    assert fired["reason"].startswith("stale")
    stale = daemon.named("pnl.stale")
    assert len(stale) == 1
    assert stale[0]["age"] >= 0.6
    await daemon.wait_for("kill.completed")
    assert len(daemon.named("kill.started")) == 1
    assert await daemon.stop() == 0


def test_cli_output_into_a_closed_pipe_is_no_traceback(workdir: Path) -> None:
    """`killswitch check-config ... | head -1`: the reader is gone; exit 1, no traceback."""
    config = write_config(workdir, "http://127.0.0.1:9")
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "killswitch", "check-config", "--config", str(config)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=daemon_env(),
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""

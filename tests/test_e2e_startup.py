"""End to end: signals during the daemon's start-up (contract §7, issue 10 item 1).

Each run starts the real daemon and sends the signal a given delay after its
first line of output, ``daemon.starting`` (written by ``killswitch/_early.py``
as soon as the handlers are in place, before the heavy imports).  On this
machine ``daemon.starting`` → ``daemon.ready`` takes 0.5 to 0.7 s, so the delays
from 0 to 550 ms land in the imports, the config load, the store and the
exchange start-up.  One daemon start per delay; the starts run concurrently,
a few at a time, to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from killswitch import _early
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]

DELAYS_MS = [round(i * 550 / 19) for i in range(20)]  # 0, 29, 58, ... 550
AT_ONCE = 4  # daemons starting together (two cores shared with other work)


def only_json(daemon: DaemonProcess) -> None:
    """Every line on stdout is one JSON object; stderr is empty."""
    for line in daemon.raw:
        assert isinstance(json.loads(line), dict), line
    assert daemon.stderr == b"", daemon.stderr.decode(errors="replace")


@pytest.fixture
async def workdirs() -> AsyncIterator[Callable[[], Path]]:
    """Fresh short directories, one per daemon; all removed after the test."""
    made: list[tempfile.TemporaryDirectory[str]] = []

    def make() -> Path:
        made.append(tempfile.TemporaryDirectory(prefix="ks-", dir="/tmp"))
        return Path(made[-1].name)

    yield make
    for directory in made:
        directory.cleanup()


async def _start_and_signal(
    config: Path, sig: signal.Signals, delay_ms: int, *, times: int = 1
) -> DaemonProcess:
    daemon = DaemonProcess(config)
    await daemon.start(wait_ready=False)
    await daemon.wait_for("daemon.starting")
    await asyncio.sleep(delay_ms / 1000)
    for _ in range(times):
        daemon.send(sig)
    return daemon


async def test_sigusr1_during_start_up_kills_once(
    sim_factory: SimFactory, workdirs: Callable[[], Path]
) -> None:
    """SIGUSR1 0 to 550 ms into start-up: the daemon lives and kills exactly once, JSON only."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(delay_ms: int) -> tuple[int, bool]:
        async with gate:
            sim, url = await sim_factory(seed=delay_ms)
            sim.seed({"BTCUSDT": 3})
            # Two signals at the later delays: however many arrive, one kill (the
            # kernel may merge two that are pending at once into one delivery).
            times = 1 if delay_ms < 300 else 2
            daemon = await _start_and_signal(
                write_config(workdirs(), url), signal.SIGUSR1, delay_ms, times=times
            )
            await daemon.wait_for("kill.completed")
            await daemon.wait_for("daemon.ready")
            assert daemon.returncode is None  # alive: the signal did not end it
            assert len(daemon.named("kill.started")) == 1
            fired = daemon.named("trigger.fired")
            assert 1 <= len(fired) <= times
            assert {e["source"] for e in fired} == {"signal"}
            assert sim.stats()["requests"]["cancel_all"] == 1
            assert sim.stats()["orders"] == {"CANCELLED": 3}
            assert await daemon.stop() == 0
            only_json(daemon)
            return delay_ms, bool(daemon.named("signal.during_startup"))

    async with asyncio.TaskGroup() as tg:  # a failure cancels the other runs
        runs = [tg.create_task(one(d)) for d in DELAYS_MS]
    results = [run.result() for run in runs]
    # The range really covers the start-up: signals that came before daemon.ready.
    assert any(early for _, early in results), results


async def test_start_up_trigger_does_not_wait_for_the_clock_sync(
    sim_factory: SimFactory, workdirs: Callable[[], Path]
) -> None:
    """The venue's time calls held 0.8 s: a SIGUSR1 from start-up kills before they answer."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 3})
    sim.inject("time", "slow", count=10, delay=0.8)  # the first sync (timeout: 1 s)
    daemon = await _start_and_signal(write_config(workdirs(), url), signal.SIGUSR1, 0)
    await daemon.wait_for("daemon.ready")
    names = [e["event"] for e in daemon.events]
    assert names.index("cancel_all.accepted") < names.index("clock.synced")
    assert names.index("cancel_all.accepted") < names.index("daemon.ready")
    assert sim.stats()["requests"]["cancel_all"] == 1
    assert await daemon.stop() == 0
    only_json(daemon)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_during_start_up_exits_cleanly(
    sig: signal.Signals, sim_factory: SimFactory, workdirs: Callable[[], Path]
) -> None:
    """SIGTERM/SIGINT 0 to 300 ms into start-up: exit 0, daemon.stopped, nothing but JSON."""
    _, url = await sim_factory()

    async def one(delay_ms: int) -> DaemonProcess:
        daemon = await _start_and_signal(write_config(workdirs(), url), sig, delay_ms)
        assert await daemon.exited() == 0
        return daemon

    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(one(d)) for d in (0, 100, 300)]
    daemons = [run.result() for run in runs]
    for daemon in daemons:
        only_json(daemon)
        assert daemon.named("daemon.stopped"), [e["event"] for e in daemon.events]
        assert daemon.named("daemon.stop_requested")[0]["signal"] == sig.name
        assert daemon.named("kill.started") == []


async def test_sigusr1_right_behind_sigterm_is_not_lost(
    sim_factory: SimFactory, workdirs: Callable[[], Path]
) -> None:
    """SIGTERM then SIGUSR1: the kill runs within the stop, or the next start resumes it."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 5})
    config = write_config(workdirs(), url)
    daemon = DaemonProcess(config)
    await daemon.start()
    daemon.send(signal.SIGTERM)
    daemon.send(signal.SIGUSR1)
    assert await daemon.exited() == 0
    only_json(daemon)
    fired = daemon.named("trigger.fired")
    assert len(fired) == 1, [e["event"] for e in daemon.events]
    assert fired[0]["outcome"] in ("started", "stopping")
    if not daemon.named("kill.completed"):  # cut short by the stop: recorded, so resumed
        again = DaemonProcess(config)
        await again.start()
        done = await again.wait_for("kill.completed")
        assert again.named("kill.resumed")[0]["kill_id"] == done["kill_id"]
        assert await again.stop() == 0
    assert sim.stats()["open"] == []


async def test_sighup_during_start_up_reloads_after_ready(
    sim_factory: SimFactory, workdirs: Callable[[], Path]
) -> None:
    """SIGHUP ~100 ms into start-up: alive, and config.reloaded follows daemon.ready."""
    _, url = await sim_factory()
    daemon = await _start_and_signal(write_config(workdirs(), url), signal.SIGHUP, 100)
    await daemon.wait_for("config.reloaded")
    names = [e["event"] for e in daemon.events]
    assert names.index("daemon.ready") < names.index("config.reloaded")
    assert daemon.returncode is None
    assert await daemon.stop() == 0
    only_json(daemon)


async def test_sighup_reload_failure_keeps_running(
    sim_factory: SimFactory, workdirs: Callable[[], Path]
) -> None:
    """SIGHUP with a broken config file: config.reload_failed, the old config stays, alive."""
    _, url = await sim_factory()
    config = write_config(workdirs(), url)
    daemon = DaemonProcess(config)
    await daemon.start()
    config.write_text(config.read_text() + "\n[nonsense\n")
    daemon.send(signal.SIGHUP)
    failed = await daemon.wait_for("config.reload_failed")
    assert failed["level"] == "error"
    daemon.send(signal.SIGUSR1)  # still serving, with the old config
    await daemon.wait_for("kill.completed")
    assert await daemon.stop() == 0
    only_json(daemon)


def test_only_the_daemon_captures_signals_at_import() -> None:
    """The run command of the script or of python -m captures; other commands and imports don't."""
    assert _early.started_as_daemon(["/opt/venv/bin/killswitch", "run", "--config", "x"])
    assert _early.started_as_daemon(["-m", "run", "--config", "x"], ["python3", "-m", "killswitch"])
    assert not _early.started_as_daemon(["/opt/venv/bin/killswitch", "status", "--config", "x"])
    assert not _early.started_as_daemon(["-m", "run"], ["python3", "-m", "pytest", "run"])
    assert not _early.started_as_daemon(["/usr/lib/python3/pytest/__main__.py", "run"])
    assert not _early.installed()  # this pytest process imported the package: nothing captured


async def test_import_then_signals_are_recorded_not_fatal() -> None:
    """In a `killswitch run` process, signals right after the first line are recorded in order."""
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['/x/killswitch', 'run']\n"
        "import killswitch\n"
        "from killswitch import _early\n"
        "for s in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):\n"
        "    os.kill(os.getpid(), s)\n"
        "import killswitch.service.daemon\n"  # the heavy imports run on
        "print(_early.pending())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert json.loads(lines[0])["event"] == "daemon.starting"
    expected = [signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM]
    assert lines[1] == str([int(s) for s in expected])

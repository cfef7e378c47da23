"""End to end: a broken or stuck log pipe never stops a kill (issue 17 §1).

The daemon's stdout and stderr are pipes this test owns: closed after
``daemon.ready`` (``killswitch run | jq`` and Ctrl-C ends jq), or left unread
so that they fill (a log shipper that hangs).  The daemon must still kill,
answer its control socket and stop with status 0; the simulated exchange's
own truth and ``GET /status`` (the state store's record) say so, not the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import check_json_output, daemon_env, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
FORMATS = ["json", "console"]
CONSOLE_EVENT = re.compile(rb"\[\s*\w+\s*\] (\S+)")  # "... [info     ] daemon.ready  key=..."


class _Lines(asyncio.Protocol):
    """One of the daemon's output pipes: every line kept, and the event names seen."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.names: list[str] = []
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        start = self.data.rfind(b"\n") + 1
        self.data += data
        for line in bytes(self.data[start:]).split(b"\n")[:-1]:
            self.names.append(_event_name(line))
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON events called ``name`` (json format only)."""
        found = []
        for line in bytes(self.data).splitlines():
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
        return found

    def lines(self, name: str) -> list[bytes]:
        return [line for line in bytes(self.data).splitlines() if _event_name(line) == name]

    async def wait_for(self, name: str, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while name not in self.names:
                if self.closed.is_set():
                    raise AssertionError(f"output closed before {name!r}: {bytes(self.data)!r}")
                self.changed.clear()
                await self.changed.wait()


def _same(lines: _Lines) -> _Lines:
    return lines


def _event_name(line: bytes) -> str:
    if line.startswith(b"{"):
        try:
            return str(json.loads(line).get("event"))
        except ValueError:
            return "<unparsed>"
    match = CONSOLE_EVENT.search(line)
    return match.group(1).decode() if match else "<text>"


class _Daemon:
    """``python -m killswitch run`` with stdout and stderr on pipes the test controls."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.streams: dict[str, tuple[asyncio.ReadTransport, _Lines]] = {}

    @classmethod
    async def start(
        cls, config: Path, *, pipe_size: int | None = None, full: bool = False
    ) -> _Daemon:
        loop = asyncio.get_running_loop()
        pipes = {"stdout": os.pipe(), "stderr": os.pipe()}
        if pipe_size is not None:
            for _, write_end in pipes.values():
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, pipe_size)
        if full:  # the reader hung before the daemon started: not one byte more fits
            for _, write_end in pipes.values():
                _fill(write_end)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "killswitch",
            "run",
            "--config",
            str(config),
            stdout=pipes["stdout"][1],
            stderr=pipes["stderr"][1],
            env=daemon_env(),
        )
        daemon = cls(proc)
        for name, (read_end, write_end) in pipes.items():
            os.close(write_end)
            lines = _Lines()
            pipe = os.fdopen(read_end, "rb", buffering=0)
            transport, _ = await loop.connect_read_pipe(functools.partial(_same, lines), pipe)
            daemon.streams[name] = (transport, lines)
        return daemon

    @property
    def stdout(self) -> _Lines:
        return self.streams["stdout"][1]

    def pause_output(self) -> None:
        for transport, _ in self.streams.values():
            transport.pause_reading()

    def resume_output(self, pipe_size: int = 65536) -> None:
        """Read again, from pipes as large as the default (a burst at exit fits)."""
        for transport, _ in self.streams.values():
            fcntl.fcntl(transport.get_extra_info("pipe").fileno(), fcntl.F_SETPIPE_SZ, pipe_size)
            transport.resume_reading()

    def close_output(self) -> None:
        for transport, _ in self.streams.values():
            transport.close()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await self.proc.wait()

    def kill(self) -> None:
        """The test's cleanup: no daemon left running, no pipe left open."""
        if self.proc.returncode is None:
            self.proc.kill()
        self.close_output()


def _fill(fd: int) -> None:
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(fd, b"x" * 4096)
    os.set_blocking(fd, True)  # the daemon inherits the same open file: blocking, as usual


async def _status(ctl: ControlClient) -> dict[str, Any]:
    code, body = await ctl.request("GET", "/status")
    assert code == 200
    assert isinstance(body, dict)
    return body


async def _until_tripped(ctl: ControlClient, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``GET /status`` until the kill is recorded complete (the switch is TRIPPED)."""
    async with asyncio.timeout(timeout):
        while True:
            status = await _status(ctl)
            if status["state"] == "TRIPPED" and status["last_kill"] is not None:
                return status
            await asyncio.sleep(0.05)


def _assert_killed(status: dict[str, Any], sim: SimExchange, seeded: int) -> None:
    """The daemon's record and the exchange's own truth agree: every order cancelled."""
    truth = sim.stats()
    assert truth["flat"] is True
    assert truth["orders"].get("CANCELLED", 0) == seeded
    assert sum(truth["violations"].values()) == 0
    last = status["last_kill"]
    assert last["cancelled"] == seeded
    assert last["flat"] is True
    assert last["unconfirmed"] == last["unknown"] == 0


@pytest.mark.parametrize("fmt", FORMATS)
async def test_closed_log_pipe_still_kills_answers_and_stops_cleanly(
    workdir: Path, sim_factory: SimFactory, fmt: str
) -> None:
    """stdout and stderr readers gone after daemon.ready: SIGUSR1 kills, status answers, exit 0."""
    seeded = 50
    sim, url = await sim_factory(status_limit=(2000, 1.0), cancel_delay=(0.01, 0.05), seed=5)
    sim.seed({"BTCUSDT": seeded})
    config = write_config(workdir, url, log={"format": fmt})
    daemon = await _Daemon.start(config)
    try:
        await daemon.stdout.wait_for("daemon.ready")
        daemon.close_output()  # jq ended by Ctrl-C: every write from here on is EPIPE
        ctl = ControlClient(workdir / "ctl.sock")
        code, _ = await ctl.request("POST", "/heartbeat")
        assert code == 200
        daemon.proc.send_signal(signal.SIGUSR1)
        status = await _until_tripped(ctl)
        _assert_killed(status, sim, seeded)
        assert status["log"]["dropped"] > 0  # the kill's events were lost, and counted
        assert status["log"]["streams"]["stdout"]["broken"] is True
        code, metrics = await ctl.request("GET", "/metrics", parse=bytes.decode)
        assert code == 200
        dropped = re.search(r'killswitch_log_dropped_lines_total\{stream="stdout"\} (\S+)', metrics)
        assert dropped is not None
        assert float(dropped.group(1)) > 0
        assert await daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.parametrize("fmt", FORMATS)
async def test_full_log_pipe_never_blocks_heartbeats_or_the_kill(
    workdir: Path, sim_factory: SimFactory, fmt: str
) -> None:
    """stdout unread (the pipe full): heartbeats answered, a 300-order kill completes,
    then the reader resumes and one log.dropped event tells what was lost."""
    seeded = 300
    sim, url = await sim_factory(status_limit=(2000, 1.0), cancel_delay=(0.01, 0.05), seed=6)
    sim.seed({"BTCUSDT": seeded})
    # A one-page pipe and a short queue: the kill's events overflow both whatever the level.
    log = {"format": fmt, "level": "debug", "buffer_lines": 64}
    config = write_config(workdir, url, log=log)
    daemon = await _Daemon.start(config, pipe_size=4096)
    try:
        await daemon.stdout.wait_for("daemon.ready")
        daemon.pause_output()  # the log consumer hangs
        ctl = ControlClient(workdir / "ctl.sock")  # the CLI's own client and timeout
        daemon.proc.send_signal(signal.SIGUSR1)
        async with asyncio.timeout(20):  # the kill's events fill the pipe: the writer is stuck
            while (await _status(ctl))["log"]["blocked_s"] is None:
                await asyncio.sleep(0.02)
        answered = []
        for _ in range(5):
            code, body = await ctl.request("POST", "/heartbeat")  # raises on its timeout
            answered.append((code, body["state"]))
            await asyncio.sleep(0.1)
        assert [code for code, _ in answered] == [200] * 5
        status = await _until_tripped(ctl)
        _assert_killed(status, sim, seeded)
        dropped = status["log"]["dropped"]
        assert dropped > 0
        assert status["log"]["blocked_s"] is not None  # the writer waits on the full pipe
        _, metrics = await ctl.request("GET", "/metrics", parse=bytes.decode)
        blocked = re.search(r'killswitch_log_blocked_seconds\{stream="stdout"\} (\S+)', metrics)
        assert blocked is not None
        assert float(blocked.group(1)) > 0
        assert daemon.stdout.names.count("log.dropped") == 0
        daemon.resume_output()
        await daemon.stdout.wait_for("log.dropped")
        assert await daemon.stop() == 0
        await asyncio.wait_for(daemon.stdout.closed.wait(), 10)
        reports = daemon.stdout.lines("log.dropped")
        assert len(reports) == 1  # one event for the whole stall
        if fmt == "json":
            check_json_output("stdout", bytes(daemon.stdout.data), 0)
            (report,) = daemon.stdout.events("log.dropped")
            assert report["stream"] == "stdout"
            assert report["dropped"] >= dropped
            assert report["total"] >= dropped
        else:
            assert b"dropped=" in reports[0]
            assert b"total=" in reports[0]
        assert "daemon.stopped" in daemon.stdout.names  # the bounded exit flush wrote it
    finally:
        daemon.kill()


async def test_a_pipe_full_from_the_start_never_stops_start_up_or_the_exit(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """daemon.starting and every later line meet a full pipe: the daemon comes up, kills,
    and SIGTERM exits 0 after the bounded exit flush, the pipe never read."""
    seeded = 20
    sim, url = await sim_factory(status_limit=(2000, 1.0), cancel_delay=(0.01, 0.05), seed=8)
    sim.seed({"BTCUSDT": seeded})
    config = write_config(workdir, url, log={"level": "debug"})  # order.status lines fill it
    daemon = await _Daemon.start(config, pipe_size=4096, full=True)
    try:
        daemon.pause_output()
        ctl = ControlClient(workdir / "ctl.sock")
        async with asyncio.timeout(30):
            while not (workdir / "ctl.sock").exists():
                await asyncio.sleep(0.05)
        status = await _status(ctl)
        assert status["state"] == "ARMED"
        daemon.proc.send_signal(signal.SIGUSR1)
        status = await _until_tripped(ctl)
        _assert_killed(status, sim, seeded)
        assert status["log"]["streams"]["stdout"]["pending"] > 0  # nothing got out yet
        assert await daemon.stop() == 0
        assert b"daemon.starting" not in daemon.stdout.data  # never read: the proof it was full
    finally:
        daemon.kill()

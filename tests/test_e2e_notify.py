"""End to end: what systemd hears from the real daemon on a real NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]

WATCHDOG_USEC = 200_000  # pings expected every 0.1 s
PROGRESS = re.compile(  # the estimate: killswitch/kill/progress.py format_eta
    r"KILLING (\d+)/(\d+) confirmed, (?:~[\d.]+ (?:s|min) left(?: at the pace so far)?"
    r"|at least ~[\d.]+ (?:s|min) left: no order terminal yet"
    r"|waiting on the venue)"
)
TRIPPED = re.compile(r"TRIPPED at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) by (\w+)")

# Runs the real CLI in a child process whose heartbeat watcher is replaced by one
# that, on SIGUSR2, returns ("return") or raises ("raise"): a watcher dying.  No
# outside input kills a watcher of a correct daemon (bad PnL content is an event,
# a removed PnL directory falls back to polling), and a hook in the daemon only
# for tests would be one more way to stop a kill switch; so the fault is injected
# here, in the test's child process, and the daemon's code is what runs.
FAULTY_WATCHER = """
import asyncio, signal, sys
from killswitch import cli
from killswitch.triggers import heartbeat

async def run(self):
    fault = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, fault.set)
    await fault.wait()
    if sys.argv[1] == "raise":
        raise RuntimeError("injected fault in the heartbeat watcher")

heartbeat.DeadManSwitch.run = run
sys.exit(cli.main(sys.argv[2:]))
"""


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() when the test received it
    fields: dict[str, str]
    control_listening: bool | None = None  # probed when READY=1 arrived


class NotifyReceiver:
    """Stands in for systemd: a bound AF_UNIX datagram socket; every message kept, in order."""

    def __init__(self, address: str, sock: socket.socket, control: Path) -> None:
        self.address = address
        self.sock = sock
        self.control = control
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            listening = _accepts(self.control) if fields.get("READY") == "1" else None
            async with self._changed:
                self.messages.append(Message(time.monotonic(), fields, listening))
                self._changed.notify_all()

    async def until(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait until ``done()`` holds, re-checked on every message."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(done)

    async def wait_for(
        self, key: str, prefix: str = "", *, start: int = 0, timeout: float = 20.0
    ) -> tuple[int, Message]:
        """The first message from index ``start`` on whose ``key`` starts with ``prefix``."""

        def match() -> tuple[int, Message] | None:
            for i, m in enumerate(self.messages[start:], start):
                if key in m.fields and m.fields[key].startswith(prefix):
                    return i, m
            return None

        await self.until(lambda: match() is not None, timeout)
        found = match()
        assert found is not None
        return found

    def sequence(self, start: int = 0) -> list[str]:
        """Every message from ``start`` on as one line, watchdog pings left out."""
        return [
            " ".join(f"{k}={v}" for k, v in m.fields.items() if k != "MONOTONIC_USEC")
            for m in self.messages[start:]
            if "WATCHDOG" not in m.fields
        ]

    def statuses(self, start: int = 0) -> list[str]:
        return [m.fields["STATUS"] for m in self.messages[start:] if "STATUS" in m.fields]

    def pings(self) -> list[float]:
        return [m.at for m in self.messages if m.fields.get("WATCHDOG") == "1"]


def tripped_at(status: str) -> tuple[float, str]:
    """The time (epoch seconds) and source in 'TRIPPED at <ISO UTC> by <source>'."""
    match = TRIPPED.fullmatch(status)
    assert match is not None, status
    at = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return at.timestamp(), match[2]


def _accepts(path: Path) -> bool:
    """True if something is listening on the UNIX stream socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture(params=["path", "abstract"])
async def receiver(request: pytest.FixtureRequest, workdir: Path) -> AsyncIterator[NotifyReceiver]:
    """A NOTIFY_SOCKET receiver bound by file path or by @abstract name."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if request.param == "path":
        address = str(workdir / "notify.sock")
        sock.bind(address)
    else:
        name = f"killswitch-e2e-{uuid.uuid4().hex}"
        address = f"@{name}"
        sock.bind(b"\0" + name.encode())
    recv = NotifyReceiver(address, sock, workdir / "ctl.sock")
    task = asyncio.create_task(recv.run())
    try:
        yield recv
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def notify_env(receiver: NotifyReceiver) -> dict[str, str]:
    """The daemon's environment as systemd sets it (no WATCHDOG_PID: the pid is not known)."""
    env = daemon_env(NOTIFY_SOCKET=receiver.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)
    return env


class FaultyDaemon(DaemonProcess):
    """The real daemon whose heartbeat watcher ends (``return``) or fails (``raise``) on SIGUSR2."""

    def __init__(self, config: Path, env: dict[str, str], fault: str) -> None:
        super().__init__(config, env)
        self.fault = fault

    async def start(self, *, wait_ready: bool = True) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FAULTY_WATCHER,
            self.fault,
            "run",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        if wait_ready:
            await self.wait_for("daemon.ready")


async def test_ready_reload_stop(
    receiver: NotifyReceiver, workdir: Path, sim_factory: SimFactory
) -> None:
    """READY=1 once the control socket answers; RELOADING=1…READY=1 on SIGHUP; STOPPING=1."""
    _, url = await sim_factory()
    daemon = DaemonProcess(write_config(workdir, url), notify_env(receiver))
    await daemon.start()
    _, ready = await receiver.wait_for("READY", "1")
    assert ready.control_listening is True
    status, body = await ControlClient(workdir / "ctl.sock").request("GET", "/status")
    assert (status, body["state"]) == (200, "ARMED")
    assert receiver.sequence()[0] == "READY=1"
    await receiver.wait_for("STATUS", "ARMED")

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.send(signal.SIGHUP)
    i, reloading = await receiver.wait_for("RELOADING", "1")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    await receiver.wait_for("STATUS", "ARMED", start=i)
    await daemon.wait_for("config.reloaded")

    assert await daemon.stop() == 0
    assert receiver.sequence() == [
        "READY=1",
        "STATUS=ARMED",
        "RELOADING=1",
        "READY=1",
        "STATUS=ARMED",
        "STOPPING=1",
    ]
    assert "WATCHDOG" not in receiver.messages[-1].fields  # no ping after STOPPING=1


async def test_watchdog_pings_every_half_watchdog_usec(
    receiver: NotifyReceiver, workdir: Path, sim_factory: SimFactory
) -> None:
    """WATCHDOG=1 arrives about every WATCHDOG_USEC/2 with WATCHDOG_PID unset."""
    _, url = await sim_factory()
    daemon = DaemonProcess(write_config(workdir, url), notify_env(receiver))
    await daemon.start()

    await receiver.until(lambda: len(receiver.pings()) >= 15)
    pings = receiver.pings()
    assert await daemon.stop() == 0

    interval = statistics.median(b - a for a, b in itertools.pairwise(pings))
    assert 0.085 <= interval <= 0.15, interval  # 0.1 s: half of WATCHDOG_USEC


async def test_kill_progress_then_tripped_at(
    receiver: NotifyReceiver, workdir: Path, sim_factory: SimFactory
) -> None:
    """During a kill STATUS= refreshes 'KILLING n/N confirmed', then 'TRIPPED at <UTC> by …'."""
    sim, url = await sim_factory(cancel_delay=(0.3, 3.0), seed=5, status_limit=(2000, 1.0))
    sim.seed({"BTCUSDT": 150, "ETHUSDT": 50})
    config = write_config(workdir, url)
    daemon = DaemonProcess(config, notify_env(receiver))
    await daemon.start()
    start, _ = await receiver.wait_for("STATUS", "ARMED")

    fired = time.time()
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed")
    await receiver.wait_for("STATUS", "TRIPPED", start=start)
    done = time.time()
    assert await daemon.stop() == 0

    statuses = receiver.statuses(start + 1)
    assert statuses[0] == "KILLING"  # the state change, before any order id is known
    progress = [PROGRESS.fullmatch(s) for s in statuses[1:-1]]
    assert all(progress), statuses
    counts = [(int(m[1]), int(m[2])) for m in progress if m]
    assert len(counts) >= 2, statuses  # refreshed while the kill ran, not only on state change
    assert all(total == 200 for _, total in counts)
    assert [n for n, _ in counts] == sorted(n for n, _ in counts)
    assert all(a != b for a, b in itertools.pairwise(statuses))  # only when changed
    at, source = tripped_at(statuses[-1])
    assert int(fired) <= at <= done
    assert source == "signal"

    restarted = DaemonProcess(config, notify_env(receiver))
    mark = len(receiver.messages)
    await restarted.start()
    _, latched = await receiver.wait_for("STATUS", start=mark)
    assert await restarted.stop() == 0
    # The latch survives a restart, with the completion time the state store kept
    # (taken a moment apart from the live one, so it may cross a second boundary).
    restored_at, restored_source = tripped_at(latched.fields["STATUS"])
    assert abs(restored_at - at) <= 1
    assert restored_source == "signal"


@pytest.mark.parametrize("receiver", ["path"], indirect=True)
async def test_pings_stop_when_a_watcher_ends(
    receiver: NotifyReceiver, workdir: Path, sim_factory: SimFactory
) -> None:
    """A watcher task that ends stops WATCHDOG=1 for good (watchdog.stopped), the rest stays up."""
    _, url = await sim_factory()
    daemon = FaultyDaemon(write_config(workdir, url), notify_env(receiver), "return")
    await daemon.start()
    await receiver.until(lambda: len(receiver.pings()) >= 3)

    daemon.send(signal.SIGUSR2)
    stopped = await daemon.wait_for("watchdog.stopped")
    await asyncio.sleep(0.3)  # a ping already queued in the socket may still be read
    seen = len(receiver.pings())
    await asyncio.sleep(1.0)  # ten ping intervals

    assert len(receiver.pings()) == seen
    assert stopped["dead"] == ["heartbeat"]
    assert stopped["level"] == "critical"
    status, body = await ControlClient(workdir / "ctl.sock").request("GET", "/status")
    assert (status, body["state"]) == (200, "ARMED")  # alive: systemd's watchdog ends it
    assert await daemon.stop() == 0


@pytest.mark.parametrize("receiver", ["path"], indirect=True)
async def test_watcher_exception_is_logged_and_exits_1(
    receiver: NotifyReceiver, workdir: Path, sim_factory: SimFactory
) -> None:
    """An exception in a watcher logs daemon.crashed (critical, with the error) and exits 1."""
    _, url = await sim_factory()
    daemon = FaultyDaemon(write_config(workdir, url), notify_env(receiver), "raise")
    await daemon.start()
    await receiver.wait_for("WATCHDOG", "1")

    daemon.send(signal.SIGUSR2)
    code = await daemon.exited()
    await asyncio.sleep(0.3)  # anything still queued in the notify socket

    assert code == 1
    crashed = daemon.named("daemon.crashed")
    assert len(crashed) == 1
    assert crashed[0]["level"] == "critical"
    assert crashed[0]["errors"] == [
        {"error": "RuntimeError", "detail": "injected fault in the heartbeat watcher"}
    ]
    assert "exception" in crashed[0]  # the traceback, for the journal
    assert not daemon.named("daemon.stopped")
    assert "STOPPING=1" not in receiver.sequence()  # a crash, not a graceful stop
    assert not (workdir / "ctl.sock").exists()  # the socket is still cleaned up
    assert daemon.stderr == b""  # no unlogged traceback

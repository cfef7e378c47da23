"""Daemon.serve() releases everything it opened, whatever fails (issue 10 item 9).

In-process: the real daemon against the simulated exchange, with one step made
to fail, on opening (after the step did its work, so a half-done open must be
released too) or on closing (before it released anything).  Every other
resource must still be released: the store's writer thread and its files, the
PnL watch's inotify fd, the exchange's sessions, the control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from killswitch import _early
from killswitch.cli import format_status
from killswitch.config.load import load_config
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.credentials import load_credentials
from killswitch.exchange.transport import Transport
from killswitch.service.control import ControlServer
from killswitch.service.daemon import Daemon
from killswitch.service.notify import Notifier
from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET, SimExchange
from killswitch.store.state import StateStore
from killswitch.triggers import signals
from killswitch.triggers.pnl import PnlWatcher
from tests.harness import write_config

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
Logs = list[MutableMapping[str, Any]]


class Injected(Exception):
    """The fault a test put in."""


def _open_fds() -> dict[str, str]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return fds


def _held(workdir: Path) -> dict[str, object]:
    """What the daemon may hold: its threads, files under workdir, inotify fds, the socket."""
    fds = _open_fds().values()
    return {
        "store thread": [t.name for t in threading.enumerate() if t.name == "killswitch-store"],
        "files": sorted(t for t in fds if t.startswith(str(workdir))),
        "inotify": sum(1 for t in fds if "inotify" in t),
        "control socket": (workdir / "ctl.sock").exists(),
    }


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
        yield captured


@pytest.fixture
async def daemon(workdir: Path, sim_factory: SimFactory) -> Daemon:
    """A daemon with every resource in use: store, PnL watch, exchange sessions, socket."""
    _, url = await sim_factory()
    (workdir / "pnl.json").write_text('{"pnl": 1}')
    config = load_config(
        write_config(workdir, url, triggers={"pnl": {"enabled": True, "threshold": -100.0}})
    )
    creds = load_credentials(
        config.exchange,
        {"KILLSWITCH_API_KEY": DEMO_API_KEY, "KILLSWITCH_API_SECRET": DEMO_API_SECRET},
    )
    return Daemon(config, creds, notifier=Notifier(None))


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The exchange client's aiohttp sessions, as it opens them."""
    opened: list[Any] = []
    real = Transport._session

    def record(self: Transport, limit: int) -> Any:
        session = real(self, limit)
        opened.append(session)
        return session

    monkeypatch.setattr(Transport, "_session", record)
    return opened


async def _ready(task: asyncio.Task[int], logs: Logs) -> None:
    async with asyncio.timeout(10):
        while not any(e["event"] == "daemon.ready" for e in logs):
            assert not task.done(), logs
            await asyncio.sleep(0.005)


def _fail_after(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """``cls.name`` does its work, then raises."""
    real = getattr(cls, name)
    if asyncio.iscoroutinefunction(real):

        async def async_fault(self: object, *args: Any) -> None:
            await real(self, *args)
            raise Injected(f"{cls.__name__}.{name}")

        monkeypatch.setattr(cls, name, async_fault)
    else:

        def fault(self: object, *args: Any) -> None:
            real(self, *args)
            raise Injected(f"{cls.__name__}.{name}")

        monkeypatch.setattr(cls, name, fault)


OPENS = [
    (StateStore, "open"),
    (PnlWatcher, "open"),
    (ExchangeClient, "open"),
    (ExchangeClient, "start"),
    (ControlServer, "start"),
]


@pytest.mark.parametrize(("cls", "name"), OPENS, ids=[f"{c.__name__}.{n}" for c, n in OPENS])
async def test_a_failing_start_step_releases_what_was_opened(
    cls: type,
    name: str,
    daemon: Daemon,
    workdir: Path,
    logs: Logs,
    sessions: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start step that fails after opening: exit 1 with an event, nothing left held."""
    before = _held(workdir)
    _fail_after(monkeypatch, cls, name)

    assert await asyncio.wait_for(daemon.serve(), 15) == 1

    failed = [e for e in logs if e["event"] in ("daemon.start_failed", "daemon.crashed")]
    assert len(failed) == 1
    assert f"{cls.__name__}.{name}" in str(failed[0])
    assert _held(workdir) == before
    assert all(s.closed for s in sessions)
    assert not any(e["event"] == "daemon.ready" for e in logs) or cls is ControlServer


CLOSES = [
    (StateStore, "close", "store"),
    (PnlWatcher, "close", "pnl watch"),
    (ExchangeClient, "close", "exchange"),
    (ControlServer, "close", "control socket"),
]


@pytest.mark.parametrize(
    ("cls", "name", "step"), CLOSES, ids=[f"{c.__name__}.{n}" for c, n, _ in CLOSES]
)
async def test_a_failing_close_step_does_not_skip_the_others(
    cls: type,
    name: str,
    step: str,
    daemon: Daemon,
    workdir: Path,
    logs: Logs,
    sessions: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One release step raises (releasing nothing): daemon.close_failed, the rest released."""
    before = _held(workdir)
    real = getattr(cls, name)

    def fault(self: object) -> None:
        raise Injected(f"{cls.__name__}.{name}")

    monkeypatch.setattr(cls, name, fault)
    task = asyncio.create_task(daemon.serve())
    await _ready(task, logs)
    daemon._on_stop("test")

    assert await asyncio.wait_for(task, 15) == 0  # the stop itself was clean

    failed = [e for e in logs if e["event"] == "daemon.close_failed"]
    assert [(e["step"], e["error"]) for e in failed] == [(step, "Injected")]
    held = _held(workdir)
    released = {
        "store": held["store thread"] == [] and held["files"] == before["files"],
        "pnl watch": held["inotify"] == before["inotify"],
        "exchange": all(s.closed for s in sessions),
        "control socket": held["control socket"] is False,
    }
    del released[step]  # (the PnL watch's own task also closes its fd when cancelled)
    assert all(released.values()), released
    owner = {
        "store": daemon.parts.store,
        "pnl watch": daemon.parts.pnl_watcher,
        "exchange": daemon.parts.exchange,
        "control socket": daemon.parts.control,
    }[step]
    result = real(owner)  # release it now, for the next test
    if asyncio.iscoroutine(result):
        await result


async def test_signals_handed_over_before_start_up_are_honoured_after_it(
    daemon: Daemon, logs: Logs
) -> None:
    """Two SIGUSR1 and a SIGHUP before serve(): one kill once it can send, a reload after ready."""
    for signum in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1):
        daemon._on_signal(signum)  # what the early handler hands over, in order
    task = asyncio.create_task(daemon.serve())
    await _ready(task, logs)
    async with asyncio.timeout(10):
        while not {"kill.completed", "config.reloaded"} <= {e["event"] for e in logs}:
            await asyncio.sleep(0.01)
    daemon._on_stop("test")
    assert await asyncio.wait_for(task, 15) == 0

    names = [e["event"] for e in logs]
    assert names.count("kill.started") == 1
    assert names.count("trigger.fired") == 2  # the second one coalesced into the kill
    assert names.index("daemon.ready") < names.index("config.reloaded")
    assert [e["action"] for e in logs if e["event"] == "signal.during_startup"] == [
        "fires once the exchange client can send",
        "reloads after daemon.ready",
        "fires once the exchange client can send",
    ]


async def test_a_corrupt_store_shows_in_status_metrics_and_systemd_status(
    daemon: Daemon, workdir: Path, logs: Logs
) -> None:
    """Garbage state.db: TRIPPED, and GET /status, metrics, STATUS= and the CLI all say why."""
    (workdir / "state.db").write_bytes(b"\xff" * 8192)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(workdir / "notify.sock"))
    receiver.setblocking(False)
    daemon.parts.notifier = Notifier(str(workdir / "notify.sock"))  # what systemd would hear
    task = asyncio.create_task(daemon.serve())
    try:
        await _ready(task, logs)
        status = daemon.parts.answers.status()
        assert status["state"] == "TRIPPED"
        assert status["store"]["ok"] is False
        assert status["store"]["problem"].startswith("corrupt: file is not a database")
        assert b"killswitch_store_ok 0.0" in daemon.parts.answers.metrics()
        metrics = daemon.parts.answers.metrics()
        assert b'killswitch_store_failures_total{kind="corrupt"} 1.0' in metrics
        rows = dict(line.split(maxsplit=1) for line in format_status(status).splitlines())
        assert rows["store"].startswith("NOT OK: corrupt: file is not a database")
        datagrams = []
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(receiver.recv(4096).decode())
        assert "STATUS=TRIPPED; store corrupt: file is not a database" in "".join(datagrams)
    finally:
        daemon._on_stop("test")
        assert await asyncio.wait_for(task, 15) == 0
        receiver.close()


async def test_signals_reach_the_loop_in_order_and_handlers_are_put_back() -> None:
    """Recorded, then live signals reach on_signal in arrival order; after, the old handlers."""
    before = {signum: signal.getsignal(signum) for signum in _early.SIGNALS}
    got: list[int] = []
    _early.install()  # as killswitch/__init__.py does in the daemon
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # recorded: nothing routes them yet
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _early.pending() == [signal.SIGHUP, signal.SIGUSR1]
        with signals.routed_to(asyncio.get_running_loop(), got.append):
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(5):
                while len(got) < 3:
                    await asyncio.sleep(0.01)
        assert got == [signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGUSR1)  # serve() is over: recorded again, not fatal
        assert _early.pending() == [signal.SIGUSR1]
    finally:
        _early.uninstall()
    assert {signum: signal.getsignal(signum) for signum in _early.SIGNALS} == before

    with signals.routed_to(asyncio.get_running_loop(), got.append):  # installs for itself
        assert _early.installed()
    assert not _early.installed()
    assert {signum: signal.getsignal(signum) for signum in _early.SIGNALS} == before


async def test_a_failed_reload_keeps_the_config_and_sends_ready_again(
    daemon: Daemon, workdir: Path, logs: Logs
) -> None:
    """SIGHUP with a broken file: config.reload_failed, the old config, RELOADING=1 then READY=1."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(workdir / "notify.sock"))
    receiver.setblocking(False)
    daemon.parts.notifier = Notifier(str(workdir / "notify.sock"))
    old = daemon.parts.config
    task = asyncio.create_task(daemon.serve())
    try:
        await _ready(task, logs)
        assert old.source is not None
        old.source.write_text("[exchange\n")
        daemon._on_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while not any(e["event"] == "config.reload_failed" for e in logs):
                await asyncio.sleep(0.01)
        assert daemon.parts.config is old
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(receiver.recv(4096).decode().split("\n", 1)[0])
        reloading = messages.index("RELOADING=1")
        assert "READY=1" in messages[reloading:]
    finally:
        daemon._on_stop("test")
        assert await asyncio.wait_for(task, 15) == 0
        receiver.close()

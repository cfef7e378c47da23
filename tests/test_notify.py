"""sd_notify client: datagrams on a real AF_UNIX socket, watchdog timing on a fake clock."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from killswitch.service.notify import Notifier, watchdog_loop
from tests.fakes import FakeClock

Receiver = tuple[str, socket.socket]  # (NOTIFY_SOCKET value, bound socket)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    """A bound SOCK_DGRAM socket standing in for systemd, by file path or @abstract name."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"killswitch-test-{uuid.uuid4().hex}"
        address = f"@{name}"
        sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        yield address, sock
    finally:
        sock.close()


@pytest.fixture
def notifier(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Notifier:
    """A Notifier built from the real environment with NOTIFY_SOCKET set to the receiver."""
    monkeypatch.setenv("NOTIFY_SOCKET", receiver[0])
    return Notifier.from_env()


def nothing_pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (Notifier.ready, b"READY=1\n"),
        (Notifier.stopping, b"STOPPING=1\n"),
        (Notifier.watchdog, b"WATCHDOG=1\n"),
        (lambda n: n.status("armed, 3 watchers"), b"STATUS=armed, 3 watchers\n"),
    ],
    ids=["ready", "stopping", "watchdog", "status"],
)
def test_message_arrives_as_written(
    call: Callable[[Notifier], bool], expected: bytes, notifier: Notifier, receiver: Receiver
) -> None:
    """ready/stopping/watchdog/status each send exactly their datagram to NOTIFY_SOCKET."""
    assert call(notifier) is True

    assert receiver[1].recv(4096) == expected
    assert nothing_pending(receiver[1])


def test_reloading_carries_monotonic_usec(notifier: Notifier, receiver: Receiver) -> None:
    """reloading() sends RELOADING=1 with MONOTONIC_USEC read from CLOCK_MONOTONIC."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    lines = receiver[1].recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after
    assert len(lines) == 2


def test_send_puts_all_fields_in_one_datagram(notifier: Notifier, receiver: Receiver) -> None:
    """send(**fields) writes KEY=value lines, in order, as a single datagram."""
    assert notifier.send(READY=1, STATUS="armed") is True

    assert receiver[1].recv(4096) == b"READY=1\nSTATUS=armed\n"


def test_status_flattens_newlines(notifier: Notifier, receiver: Receiver) -> None:
    """A multi-line status cannot inject extra fields: newlines become spaces."""
    notifier.status("tripped\nREADY=1")

    assert receiver[1].recv(4096) == b"STATUS=tripped READY=1\n"


@pytest.mark.parametrize("fields", [{"ready": "1"}, {"A=B": "1"}, {"STATUS": "a\nREADY=1"}])
def test_send_rejects_malformed_fields(fields: dict[str, str], tmp_path: Path) -> None:
    """A lower-case or '='-bearing key, or a value with a newline, is a programming error."""
    notifier = Notifier(str(tmp_path / "notify.sock"))

    with pytest.raises(ValueError, match="invalid sd_notify field"):
        notifier.send(**fields)


def test_without_notify_socket_every_call_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    """With NOTIFY_SOCKET unset nothing opens a socket and every call reports success."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")

    def no_socket(*args: object) -> socket.socket:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", no_socket)
    notifier = Notifier.from_env()

    assert not notifier.enabled
    results = [
        notifier.ready(),
        notifier.reloading(),
        notifier.stopping(),
        notifier.status("x"),
        notifier.watchdog(),
        notifier.send(READY=1),
    ]
    assert results == [True] * 6
    assert notifier.watchdog_interval() is None


def test_send_failure_returns_false_and_keeps_the_error(tmp_path: Path) -> None:
    """A socket nobody listens on makes send() return False with the OSError kept."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})

    assert notifier.ready() is False
    assert isinstance(notifier.last_error, FileNotFoundError)


def test_unusable_address_returns_false() -> None:
    """A NOTIFY_SOCKET that is neither /path nor @name fails the send, not the caller."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})

    assert notifier.watchdog() is False
    assert notifier.last_error is not None
    assert notifier.last_error.errno == errno.EAFNOSUPPORT


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "10000000", "NOTIFY_SOCKET": ""}, None),
    ],
    ids=["half", "own-pid", "other-pid", "unset", "zero", "garbage", "no-socket"],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """Half of WATCHDOG_USEC, in seconds, only when the watchdog is meant for this process."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})

    assert notifier.watchdog_interval() == expected


async def test_watchdog_loop_pings_until_unhealthy(receiver: Receiver) -> None:
    """watchdog_loop pings every WATCHDOG_USEC/2 and stops for good once healthy() is False."""
    clock = FakeClock()
    notifier = Notifier(receiver[0], watchdog_usec=10_000_000)
    healthy = True
    task = asyncio.create_task(watchdog_loop(notifier, lambda: healthy, clock))

    await clock.advance(0)
    assert receiver[1].recv(4096) == b"WATCHDOG=1\n"
    await clock.advance(4.9)
    assert nothing_pending(receiver[1])
    await clock.advance(0.1)
    assert receiver[1].recv(4096) == b"WATCHDOG=1\n"

    healthy = False
    await clock.advance(5.0)

    assert task.done()
    await task
    assert nothing_pending(receiver[1])


async def test_watchdog_loop_returns_at_once_without_watchdog(receiver: Receiver) -> None:
    """Without WATCHDOG_USEC the loop sends nothing and ends immediately."""
    clock = FakeClock()

    await asyncio.wait_for(watchdog_loop(Notifier(receiver[0]), lambda: True, clock), 1.0)

    assert nothing_pending(receiver[1])
    assert clock.sleepers == 0


async def test_watchdog_loop_reports_failed_pings(tmp_path: Path) -> None:
    """A ping that cannot be sent is handed to on_failure (the daemon logs notify.failed)."""
    clock = FakeClock()
    notifier = Notifier(str(tmp_path / "gone.sock"), watchdog_usec=2_000_000)
    errors: list[OSError | None] = []
    healthy = True
    task = asyncio.create_task(
        watchdog_loop(notifier, lambda: healthy, clock, on_failure=errors.append)
    )

    await clock.advance(1.0)
    healthy = False
    await clock.advance(1.0)
    await task

    assert len(errors) == 2
    assert all(isinstance(e, FileNotFoundError) for e in errors)

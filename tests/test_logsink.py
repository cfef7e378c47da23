"""The log sink: bounded, counted, never blocking or raising (issue 17 §1).

The writer is injected: a write that blocks until the test lets it go (a
full pipe), one that fails (EPIPE: the reader is gone), or a real pipe.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import pytest
import structlog

from killswitch import logsink
from killswitch.config.load import load_config
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import load_credentials
from killswitch.log import configure_logging, get_logger
from killswitch.logsink import MAX_QUEUED_BYTES, LineSink, SinkStream
from killswitch.service.daemon import Daemon
from killswitch.service.notify import Notifier
from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET
from tests.harness import write_config

TIMEOUT = 10.0  # only ever reached when the behaviour is broken


class GatedWrite:
    """A write(2) that blocks while the gate is closed, and records what it wrote."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.written = bytearray()

    def __call__(self, fd: int, data: memoryview) -> int:
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        self.written += data
        return len(data)


@pytest.fixture
def gated() -> Iterator[GatedWrite]:
    write = GatedWrite()
    yield write
    write.gate.set()  # never leave a writer thread waiting


def _broken_pipe(fd: int, data: memoryview) -> int:
    raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_a_blocked_writer_never_blocks_put_and_the_overflow_is_counted(
    gated: GatedWrite,
) -> None:
    """While the write hangs, put() returns at once; past the capacity lines are dropped."""
    sink = LineSink(1, "stdout", capacity=3, write=gated)
    assert sink.put(b"first\n")
    assert gated.entered.wait(TIMEOUT)  # the writer holds "first" and waits on the pipe
    results = [sink.put(f"line {i}\n".encode()) for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    health = sink.health()
    assert health.dropped == 7
    assert health.pending == 4  # three queued, one being written
    assert health.blocked_s is not None


def test_the_queue_is_bounded_in_bytes_too(gated: GatedWrite) -> None:
    """However few the lines, the queue never holds more than MAX_QUEUED_BYTES."""
    sink = LineSink(1, "stdout", write=gated)
    sink.put(b"first\n")
    assert gated.entered.wait(TIMEOUT)
    half = b"x" * (MAX_QUEUED_BYTES // 2)
    assert [sink.put(half), sink.put(half), sink.put(b"!")] == [True, True, False]
    assert sink.health().dropped == 1


def test_one_report_once_writing_works_again(gated: GatedWrite) -> None:
    """The dropped count is reported once, after the first write that succeeds again."""
    reports: list[tuple[str, int, int]] = []
    sink = LineSink(1, "stdout", capacity=2, write=gated)

    def report(name: str, dropped: int, total: int) -> None:
        reports.append((name, dropped, total))
        sink.put(f"dropped {dropped}\n".encode())  # a report is a line like any other

    sink.reporter = report
    sink.put(b"a\n")
    assert gated.entered.wait(TIMEOUT)
    for i in range(5):
        sink.put(f"{i}\n".encode())
    assert reports == []  # nothing was written yet: nothing to report to
    gated.gate.set()
    assert sink.drain(TIMEOUT)
    assert reports == [("stdout", 3, 3)]
    # The report found the queue full and still got in: it is the last line, after the kept ones.
    assert bytes(gated.written) == b"a\n0\n1\ndropped 3\n"
    assert sink.health().dropped == 3


def test_a_broken_pipe_is_counted_never_raised() -> None:
    """EPIPE (the reader went away): put() and the stream's write and flush still succeed."""
    sink = LineSink(1, "stdout", write=_broken_pipe)
    stream = SinkStream(sink)
    for i in range(5):
        assert stream.write(f"event {i}\n") == len(f"event {i}\n")
        stream.flush()
    assert sink.drain(TIMEOUT)
    health = sink.health()
    assert health.dropped == 5
    assert health.broken is True
    assert health.pending == 0


def test_drain_is_bounded_when_the_writer_never_returns(gated: GatedWrite) -> None:
    """Shutdown's flush gives up after its timeout instead of joining a stuck writer."""
    sink = LineSink(1, "stdout", write=gated)
    sink.put(b"stuck\n")
    assert gated.entered.wait(TIMEOUT)
    assert sink.drain(0.05) is False
    gated.gate.set()
    assert sink.drain(TIMEOUT) is True


def test_lines_reach_a_real_pipe_in_order_and_whole() -> None:
    """With a reader that keeps up, every line arrives once, in order, and nothing is dropped."""
    read_end, write_end = os.pipe()
    try:
        sink = LineSink(write_end, "stdout", capacity=10_000)
        stream = SinkStream(sink)
        lines = [f'{{"event": "e", "n": {i}, "text": "é"}}\n' for i in range(2000)]
        received = bytearray()
        reader = threading.Thread(target=_read_all, args=(read_end, received, len("".join(lines))))
        reader.start()
        for line in lines:
            stream.write(line)
        assert sink.drain(TIMEOUT)
        reader.join(TIMEOUT)
        assert received.decode() == "".join(lines)
        assert sink.health().dropped == 0
    finally:
        os.close(read_end)
        os.close(write_end)


def _read_all(fd: int, into: bytearray, chars: int) -> None:
    while len(into.decode(errors="ignore")) < chars:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        into += chunk


def test_a_partial_write_then_epipe_counts_only_the_lines_not_written(
    gated: GatedWrite,
) -> None:
    """The file took the first line and part of the second, then the reader went away."""
    calls: list[bytes] = []

    def write(fd: int, data: memoryview) -> int:
        if not calls:
            gated(fd, data)  # the first batch waits until the next three are queued
        calls.append(bytes(data))
        if len(calls) == 2:
            return 7  # "one\n" and "thr" of "three\n"
        if len(calls) == 3:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return len(data)

    sink = LineSink(1, "stdout", write=write)
    sink.put(b"zero\n")
    assert gated.entered.wait(TIMEOUT)
    for line in (b"one\n", b"three\n", b"five\n"):
        sink.put(line)
    gated.gate.set()
    assert sink.drain(TIMEOUT)
    assert calls == [b"zero\n", b"one\nthree\nfive\n", b"ee\nfive\n"]
    assert sink.health().dropped == 2  # "zero" and "one" went out whole; the rest did not


class _RaisingLogger:
    """A logger whose every call fails as a write into a closed pipe did before issue 17."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        return fail


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_is_honoured_when_logging_it_fails(
    workdir: Path, signum: signal.Signals
) -> None:
    """SIGTERM/SIGINT: the stop is recorded even though every log call raises."""
    config = load_config(write_config(workdir, "http://127.0.0.1:9"))
    creds = load_credentials(
        config.exchange,
        {"KILLSWITCH_API_KEY": DEMO_API_KEY, "KILLSWITCH_API_SECRET": DEMO_API_SECRET},
    )
    daemon = Daemon(config, creds, notifier=Notifier(None))
    daemon._log = _RaisingLogger()
    daemon._on_signal(signum)  # before daemon.ready: signal.during_startup is logged first
    assert daemon._stop.is_set()


def test_buffer_lines_is_a_whole_number_of_at_least_one(workdir: Path) -> None:
    """log.buffer_lines defaults to 10000; 0 is refused naming the key."""
    assert load_config(write_config(workdir, "http://127.0.0.1:9")).log.buffer_lines == 10_000
    with pytest.raises(ConfigError, match=r"log\.buffer_lines"):
        load_config(write_config(workdir, "http://127.0.0.1:9", log={"buffer_lines": 0}))


class SwitchableWrite:
    """A file that refuses every write (EPIPE) until ``works`` is set; records what it took."""

    def __init__(self) -> None:
        self.works = False
        self.written = bytearray()

    def __call__(self, fd: int, data: memoryview) -> int:
        if not self.works:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        self.written += data
        return len(data)


@pytest.fixture
def restored() -> Iterator[None]:
    """Every global configure_logging() touches is put back after the test."""
    root = logging.getLogger()
    saved = (
        sys.excepthook,
        sys.unraisablehook,
        threading.excepthook,
        list(root.handlers),
        root.level,
        structlog.get_config(),
    )
    yield
    logging.captureWarnings(False)
    sys.excepthook, sys.unraisablehook, threading.excepthook = saved[:3]
    root.handlers[:] = saved[3]
    root.setLevel(saved[4])
    structlog.configure(**saved[5])


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_kind_of_line_into_a_broken_pipe_is_counted_then_reported_once(
    restored: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """structlog, stdlib logging, a warning and a traceback meet EPIPE: nothing raises, no
    "--- Logging error ---"; once the file works again one log.dropped says how many."""
    write = SwitchableWrite()
    sink = LineSink(1, "stdout", write=write)
    monkeypatch.setitem(logsink._sinks, "stdout", sink)  # the daemon's stdout, as installed
    configure_logging("info", fmt, cast(TextIO, SinkStream(sink)))
    get_logger().info("kill.started", kill_id="k1")
    logging.getLogger("aiohttp.server").error("Error handling request")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    try:
        raise KeyError("boom")
    except KeyError:
        sys.excepthook(*sys.exc_info())
    assert sink.drain(TIMEOUT)
    assert sink.health().dropped == 4
    assert capsys.readouterr().err == ""
    write.works = True
    get_logger().info("kill.completed", kill_id="k1")
    assert sink.drain(TIMEOUT)
    assert sink.drain(TIMEOUT)  # the report is queued by the writer after that write
    lines = bytes(write.written).decode().splitlines()
    assert len(lines) == 2
    assert "kill.completed" in lines[0]
    assert "log.dropped" in lines[1]
    if fmt == "json":
        report = json.loads(lines[1])
        assert (report["dropped"], report["total"], report["level"]) == (4, 4, "warning")
    else:
        assert "dropped=4" in lines[1]


def test_a_pipe_someone_made_non_blocking_is_waited_on_not_dropped_from() -> None:
    """O_NONBLOCK set on the shared pipe by another process: EAGAIN waits, loses nothing."""
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write_end, b"." * 4096)
        sink = LineSink(write_end, "stdout")
        assert sink.put(b"after the wait\n")
        assert sink.drain(0.05) is False  # no room: the writer waits, the line is kept
        received = bytearray()
        os.set_blocking(read_end, False)
        deadline = time.monotonic() + TIMEOUT
        while not received.endswith(b"after the wait\n") and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                received += os.read(read_end, 1 << 20)
        assert received.endswith(b"after the wait\n")
        assert sink.drain(TIMEOUT)
        assert sink.health().dropped == 0
    finally:
        os.close(read_end)
        os.close(write_end)

"""Best-effort, bounded stdout and stderr: a log reader can never stop the daemon (issue 17).

Every line the daemon writes goes into a :class:`LineSink`: a bounded queue in
memory and one writer thread that does the blocking ``write(2)``.  The event
loop (and a signal handler, and the engine) only append to the queue, so a
reader that stops reading (a full 64 KiB pipe, a stuck journald) blocks the
writer thread, never the loop; a reader that went away (``EPIPE`` after
``killswitch run | jq`` lost jq) is an error the writer thread counts, never
one raised into the caller.  A line that finds the queue full, or that the
file refused, is dropped and counted; once a write succeeds again the sink
reports that count once, through :attr:`LineSink.reporter` (``log.dropped``).
The durable record of a kill is the state store, not the log.

A thread rather than ``O_NONBLOCK``: the flag belongs to the open file
description, which a pipe or terminal shares with every process that
inherited it (the shell, a sibling under systemd's journal stream); setting
it would make *their* writes fail with ``EAGAIN``, and leave a terminal
non-blocking after the daemon exits.  A writer blocked forever on a full pipe
is harmless because nothing joins it: it is a daemon thread, and
:meth:`LineSink.drain` waits at most its timeout.

Not ``logging.handlers.QueueHandler``/``QueueListener``: they carry only the
standard library's records (not structlog's writes, ``print``, or what the
interpreter itself writes to ``sys.stderr``), a full bounded queue makes the
handler print "--- Logging error ---" to stderr, and ``QueueListener.stop()``
joins its thread without a bound.

Standard library only, and cheap to import: ``killswitch/_early.py`` installs
the sinks at the package's first line, before ``daemon.starting``.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_CAPACITY",
    "EXIT_FLUSH",
    "MAX_QUEUED_BYTES",
    "LineSink",
    "SinkHealth",
    "SinkStream",
    "drain_all",
    "health",
    "install_std_streams",
    "installed",
    "set_capacity",
    "set_reporter",
    "status",
]

DEFAULT_CAPACITY = 10_000  # lines held while the reader is slow (~3 MB of events)
MAX_QUEUED_BYTES = 16 << 20  # and never more bytes than this, however long the lines
EXIT_FLUSH = 2.0  # seconds the process waits at exit for its last lines, at most

_SIGNALS = (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)  # _early.SIGNALS
_reporting = threading.local()  # set while a writer thread reports: that line has room

Reporter = Callable[[str, int, int], None]  # (stream name, dropped since last report, total)


class SinkHealth(NamedTuple):  # not a dataclass: dataclasses costs ~7 ms at the first line
    """What ``GET /status`` and the metrics show of one sink."""

    dropped: int  # lines lost since start (queue full, or the file refused them)
    pending: int  # lines queued or being written now
    blocked_s: float | None  # how long the write in progress has waited (None: idle)
    broken: bool  # the last write failed (the reader went away)


class LineSink:
    """A bounded queue of encoded lines and the thread that writes them to ``fd``.

    :meth:`put` never blocks and never raises.  ``write`` and ``clock`` are
    injectable for tests (a write that blocks, fails, or takes time).
    """

    def __init__(
        self,
        fd: int,
        name: str,
        *,
        capacity: int = DEFAULT_CAPACITY,
        write: Callable[[int, memoryview], int] = os.write,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fd = fd
        self.name = name
        self.capacity = capacity
        self.reporter: Reporter | None = None
        self._write = write
        self._clock = clock
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # Reentrant: a signal handler that logs while the main thread is inside put().
        lock = threading.RLock()
        self._work = threading.Condition(lock)  # the writer waits here for lines
        self._idle = threading.Condition(lock)  # drain() waits here for the writer
        self._inflight = 0
        self._busy_since: float | None = None
        self._dropped = 0
        self._unreported = 0
        self._broken = False
        self._thread: threading.Thread | None = None

    def put(self, data: bytes) -> bool:
        """Queue one line; False when it was dropped (and counted) instead."""
        with self._work:
            full = (
                len(self._queue) >= self.capacity
                or self._queued_bytes + len(data) > MAX_QUEUED_BYTES
            ) and not getattr(_reporting, "active", False)
            if full or not self._running():
                self._dropped += 1
                self._unreported += 1
                return False
            self._queue.append(data)
            self._queued_bytes += len(data)
            self._work.notify()
        return True

    def _running(self) -> bool:
        if self._thread is None:
            thread = threading.Thread(target=self._run, name=f"log-{self.name}", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread can start (resources): lines are dropped, counted
                return False
            self._thread = thread
        return True

    def drain(self, timeout: float) -> bool:
        """Wait until every queued line was written or dropped, at most ``timeout`` seconds."""
        deadline = self._clock() + timeout
        with self._idle:
            while self._queue or self._inflight:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def health(self) -> SinkHealth:
        with self._work:
            since = self._busy_since
            return SinkHealth(
                dropped=self._dropped,
                pending=len(self._queue) + self._inflight,
                blocked_s=None if since is None else round(self._clock() - since, 3),
                broken=self._broken,
            )

    def _run(self) -> None:
        # The daemon's signals go to a thread that is not stuck in write(2) on a full pipe.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        while True:
            with self._work:
                while not self._queue:
                    self._work.wait()
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._inflight = len(batch)
                self._busy_since = self._clock()
            written = self._write_batch(batch)
            report = 0
            with self._work:
                lost = len(batch) - written
                self._dropped += lost
                self._unreported += lost
                self._broken = lost > 0
                if lost == 0 and self._unreported:
                    report, self._unreported = self._unreported, 0
                self._inflight = 0
                self._busy_since = None
                self._idle.notify_all()
            reporter = self.reporter
            if report and reporter is not None:
                _reporting.active = True  # the report itself is never dropped for room
                try:
                    with contextlib.suppress(Exception):  # the writer never dies of a report
                        reporter(self.name, report, self._dropped)
                finally:
                    _reporting.active = False

    def _write_batch(self, batch: list[bytes]) -> int:
        """Write the lines in one go where the file takes them; how many went out whole."""
        data = memoryview(b"".join(batch))
        done = 0
        with contextlib.suppress(Exception):  # EPIPE, EBADF, ENOSPC, EIO: the rest is lost
            while done < len(data):
                try:
                    done += self._write(self.fd, data[done:])
                except BlockingIOError:  # someone set O_NONBLOCK on the shared file: wait
                    select.select([], [self.fd], [], 1.0)
        whole = 0
        for line in batch:
            if done < len(line):
                break
            done -= len(line)
            whole += 1
        return whole


class SinkStream(io.TextIOBase):
    """A text file whose ``write`` hands the text to a :class:`LineSink` (one call, one line).

    ``flush`` does nothing and never fails, so the interpreter's last flush of
    ``sys.stdout`` at exit cannot turn exit status 0 into 120 on a broken pipe.
    """

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink

    def write(self, s: str) -> int:
        if s:
            with contextlib.suppress(Exception):  # a str subclass that cannot encode: dropped
                self.sink.put(s.encode("utf-8", "backslashreplace"))
        return len(s)

    def flush(self) -> None:
        return None

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.sink.fd

    def isatty(self) -> bool:
        try:
            return os.isatty(self.sink.fd)
        except OSError:
            return False


_sinks: dict[str, LineSink] = {}  # the process's stdout and stderr, once installed


def install_std_streams() -> bool:
    """``sys.stdout`` and ``sys.stderr`` become :class:`SinkStream` s on fds 1 and 2.

    For the daemon's process only (``killswitch run``); idempotent, False when
    it was already done.  At exit the process waits at most :data:`EXIT_FLUSH`
    seconds for its last lines.
    """
    if _sinks:
        return False
    for fd, name in ((1, "stdout"), (2, "stderr")):
        _hold(fd)
        _sinks[name] = sink = LineSink(fd, name)
        setattr(sys, name, SinkStream(sink))
    atexit.register(drain_all, EXIT_FLUSH)
    return True


def _hold(fd: int) -> None:
    """Started with ``fd`` closed (``killswitch run >&-``): /dev/null takes it, so no file
    the daemon opens later (the state store) can become fd 1 and receive the log."""
    try:
        os.fstat(fd)
    except OSError:
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def installed() -> bool:
    return bool(_sinks)


def set_reporter(reporter: Reporter | None) -> None:
    """Who reports a count of dropped lines once writing works again (``log.dropped``)."""
    for sink in _sinks.values():
        sink.reporter = reporter


def set_capacity(lines: int) -> None:
    for sink in _sinks.values():
        sink.capacity = lines


def drain_all(timeout: float) -> bool:
    """Wait for both sinks to write what they hold, at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    done = True
    for sink in _sinks.values():
        done = sink.drain(max(0.0, deadline - time.monotonic())) and done
    return done


def health() -> dict[str, SinkHealth]:
    """Each installed sink's health, by stream name (empty when not installed)."""
    return {name: sink.health() for name, sink in _sinks.items()}


def status() -> dict[str, Any]:
    """The log's own health for ``GET /status``: lines lost to a slow or gone reader."""
    streams = health()
    blocked = [h.blocked_s for h in streams.values() if h.blocked_s is not None]
    return {
        "dropped": sum(h.dropped for h in streams.values()),
        "pending": sum(h.pending for h in streams.values()),
        "blocked_s": max(blocked) if blocked else None,
        "streams": {name: h._asdict() for name, h in streams.items()},
    }

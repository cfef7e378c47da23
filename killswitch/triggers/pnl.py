"""The PnL trigger: watch a file the strategy rewrites, fire on a loss breach.

The strategy replaces the file atomically (write a temp file, rename over), so
the watcher watches the *directory* for ``MOVED_TO``/``CLOSE_WRITE`` of that
name (inotify; a watch on the file itself dies with the first rename) and
falls back to a poll where inotify is unavailable.  Every change is re-read
and parsed; bad content is an event, never a crash, and the last valid value
stands.

Nothing the file system does can stall the event loop.  The file is read in
a reader thread of its own (never the loop's default executor, which the
exchange client needs for DNS), with a bounded wait: a file on a hung network
mount is ``pnl.invalid`` "read timed out" and is retried, while the loop,
the other triggers and the staleness timer go on.  The read itself opens
with ``O_NONBLOCK`` (a FIFO opens at once instead of waiting for a writer),
follows a symlink (a link to the real file is a legitimate deployment; the
*target* is checked), accepts only a regular file (``fstat`` on the opened
descriptor, so nothing can be swapped in between) and reads at most
``MAX_BYTES`` + 1: anything bigger is "too large", never read whole.  Changes
that arrive while a read is in flight are coalesced into one more read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import math
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from killswitch.clock import Clock
from killswitch.damping import Damper
from killswitch.log import get_logger

__all__ = ["MAX_BYTES", "PnlMonitor", "PnlWatcher", "Reading", "parse_pnl", "read_bounded"]

MAX_BYTES = 64 * 1024
READ_TIMEOUT = 1.0  # seconds a read may take before it counts as hung (and is retried)
_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class Reading:
    """One read of the PnL file: its bytes, or why there are none."""

    raw: bytes | None = None
    problem: str | None = None
    missing: bool = False
    key: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of what was read


def read_bounded(path: Path, limit: int = MAX_BYTES) -> Reading:
    """Open without blocking, accept only a regular file, read at most ``limit`` + 1 bytes.

    Runs in the reader thread; every outcome is a :class:`Reading`, never an exception.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return Reading(missing=True)
    except OSError as exc:
        return Reading(problem=f"unreadable: {exc.strerror}")
    try:
        st = os.fstat(fd)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a file")
            return Reading(problem=f"not a regular file ({kind})", key=key)
        if st.st_size > limit:
            return Reading(problem=f"too large ({st.st_size} bytes, at most {limit})", key=key)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew after fstat
            return Reading(problem=f"too large (over {limit} bytes)", key=key)
        return Reading(raw=b"".join(chunks), key=key)
    except OSError as exc:
        return Reading(problem=f"unreadable: {exc.strerror}")
    finally:
        os.close(fd)


class _ReaderThread:
    """One daemon thread that runs file reads; a hung read never blocks exit."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Reading], Callable[[], Reading]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], Reading]) -> concurrent.futures.Future[Reading]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        future: concurrent.futures.Future[Reading] = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # read_bounded returns problems; this is a bug
                future.set_exception(exc)

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


def parse_pnl(raw: bytes) -> float:
    """A JSON object with a numeric ``pnl``, or a bare number.  ValueError otherwise."""
    if len(raw) > MAX_BYTES:
        raise ValueError("file too large")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not text:
        raise ValueError("empty")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError("not JSON") from None
    if isinstance(data, dict):
        if "pnl" not in data:
            raise ValueError("no 'pnl' field")
        data = data["pnl"]
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise ValueError("pnl is not a number")
    try:
        value = float(data)
    except OverflowError:  # an integer too large for a float
        raise ValueError("pnl is not finite") from None
    if not math.isfinite(value):
        raise ValueError("pnl is not finite")
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


class PnlMonitor:
    """The trigger logic, apart from the file system: edges and staleness.

    Fires on the edge from ≥ threshold to < threshold; the first valid reading
    after start counts as an edge.  After a reset it needs a reading at or above
    the threshold before a reading below fires again.
    """

    def __init__(
        self,
        threshold: float,
        stale_after: float,
        clock: Clock,
        on_fire: Callable[[str, float | None], None],
        *,
        latched: Callable[[], bool] = lambda: False,
    ) -> None:
        self.threshold = threshold
        self.stale_after = stale_after
        self.clock = clock
        self.on_fire = on_fire
        self.value: float | None = None
        self.updated_at: float | None = None  # monotonic time of the last valid reading
        self._above: bool | None = None  # None: no reading yet (the first counts as an edge)
        self._stale_fired = False
        self._started = clock.monotonic()
        self._last_bad: str | None = None
        self._waiting_logged = False
        self._read_before_reset = False  # the last valid reading came before a reset
        self._logged_value: float | None = None  # the last value pnl.read showed
        self.latched = latched  # True while the switch is tripped: breaches are damped
        self.damper = Damper()
        self._log = get_logger()

    def observe(self, value: float) -> None:
        self.value = value
        self.updated_at = self.clock.monotonic()
        self._read_before_reset = False
        self._stale_fired = False
        self._last_bad = None
        if value >= self.threshold:
            self._above = True
        elif self._above is not False:
            self._above = False
            self._logged_value = value  # pnl.breach shows it: no pnl.read before the kill
            if self.latched():  # a flapping PnL while tripped: nothing new to do
                self.damper.error(self._log, "pnl.breach", pnl=value, threshold=self.threshold)
            else:
                self._log.error("pnl.breach", pnl=value, threshold=self.threshold)
            self.on_fire("breach", value)
            return
        if value != self._logged_value:  # one line per new value, damped like a warning
            self._logged_value = value
            self.damper.log(self._log, "info", "pnl.read", pnl=value, threshold=self.threshold)

    def invalid(self, problem: str, content: bytes | None) -> None:
        """Log bad content once per distinct content, damped; the last valid value stands."""
        digest = problem if content is None else hashlib.sha256(content).hexdigest()
        if digest == self._last_bad:
            return
        self._last_bad = digest
        preview = None if content is None else content[:80].decode("utf-8", "replace")
        self.damper.warning(
            self._log, "pnl.invalid", problem=problem, content=preview, last_valid=self.value
        )

    def missing(self, path: str) -> None:
        """No file: before any valid reading the writer has not started yet (info, once)."""
        if self.value is None and self._last_bad is None:
            if not self._waiting_logged:
                self._waiting_logged = True
                self._log.info("pnl.waiting", path=path, note="no PnL file written yet")
            return
        self.invalid("missing", None)

    def rearm(self) -> None:
        """After an operator reset: require ≥ threshold, then < threshold, to fire again."""
        self._above = False
        self._stale_fired = False
        self._started = self.clock.monotonic()
        self._read_before_reset = self.value is not None

    def read_before_reset(self) -> bool:
        """True when the last valid reading is older than the last reset: it does not count
        towards the edge the re-armed trigger waits for."""
        return self._read_before_reset

    def state(self) -> str:
        """The trigger's own state (the edge it waits for), in words."""
        if self._stale_fired:
            return "stale: fired, waits for a fresh reading"
        if self.value is None:
            return "waiting for first reading"
        if self._above is False:
            if self.value < self.threshold:
                return "below threshold: waits for a recovery above it"
            return "re-armed: waits for a new reading at or above the threshold"
        return "watching"

    def stale_deadline(self) -> float | None:
        if self.stale_after <= 0 or self._stale_fired:
            return None
        since = self.updated_at if self.updated_at is not None else self._started
        return since + self.stale_after

    def check_stale(self) -> None:
        deadline = self.stale_deadline()
        if deadline is not None and self.clock.monotonic() >= deadline:
            self._stale_fired = True
            age = None if self.updated_at is None else self.clock.monotonic() - self.updated_at
            self._log.error("pnl.stale", age=age, stale_after=self.stale_after)
            self.on_fire("stale", self.value)

    def age(self) -> float | None:
        return None if self.updated_at is None else self.clock.monotonic() - self.updated_at


class PnlWatcher:
    """Feeds a :class:`PnlMonitor` from the file at ``path``."""

    def __init__(
        self,
        path: Path,
        monitor: PnlMonitor,
        *,
        poll_interval: float = 0.05,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.path = path
        self.monitor = monitor
        self.poll_interval = poll_interval
        self.read_timeout = read_timeout
        self._last_key: tuple[bool, tuple[int, int, int] | None] | None = None
        self._inotify: Any = None
        self._reader = _ReaderThread("pnl-reader")
        self._busy: concurrent.futures.Future[Reading] | None = None  # the read in flight
        self._dirty = asyncio.Event()
        self.backend = "none"

    def _submit(self) -> concurrent.futures.Future[Reading] | None:
        """Start a read unless one is still in flight (hung); never queue behind it."""
        if self._busy is not None and not self._busy.done():
            return None
        path = self.path
        self._busy = self._reader.submit(lambda: read_bounded(path))
        return self._busy

    def _apply(self, reading: Reading, *, only_changes: bool = False) -> None:
        key = (reading.missing, reading.key)
        if only_changes and key == self._last_key:
            return
        self._last_key = key
        if reading.missing:
            self.monitor.missing(str(self.path))
        elif reading.problem is not None or reading.raw is None:
            self.monitor.invalid(reading.problem or "unreadable", None)
        else:
            try:
                value = parse_pnl(reading.raw)
            except ValueError as exc:
                self.monitor.invalid(str(exc), reading.raw)
                return
            self.monitor.observe(value)

    def _hung(self) -> None:
        self.monitor.invalid("read timed out: the file system does not answer", None)

    def read(self) -> None:
        """Read and parse the file once, waiting at most ``read_timeout`` (start-up only)."""
        future = self._submit()
        if future is None:
            self._hung()
            return
        try:
            reading = future.result(timeout=self.read_timeout)
        except concurrent.futures.TimeoutError:
            self._hung()
            self._dirty.set()  # read again once the loop runs
            return
        self._apply(reading)

    async def _read_now(self, *, only_changes: bool = False) -> bool:
        """One read in the reader thread, awaited at most ``read_timeout``; False if hung.

        A read already in flight (one that hung) is joined rather than queued
        behind; once it returns, the file is read again, since it began earlier.
        """
        joined = self._busy is not None and not self._busy.done()
        future = self._busy if joined else self._submit()
        assert future is not None
        try:
            reading = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self.read_timeout
            )
        except TimeoutError:
            return False
        self._apply(reading, only_changes=only_changes)
        if joined:
            return await self._read_now(only_changes=only_changes)
        return True

    async def _read_loop(self) -> None:
        """Reads whenever a change was seen; changes during a read coalesce into one more."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self._read_now():
                self._hung()
                await asyncio.sleep(max(self.poll_interval, 0.5))
                self._dirty.set()

    def open(self) -> None:
        """Start watching, then read the file once.

        The watch is in place before the first read, so no rename after this
        returns can be missed; the daemon calls it before ``daemon.ready``.
        """
        if self.backend == "none":
            if not self.path.parent.is_dir():
                get_logger().warning(
                    "pnl.directory_missing",
                    path=str(self.path.parent),
                    note="polling until it appears",
                )
                self.backend = "poll"
            else:
                self.backend = "inotify" if self._open_inotify() else "poll"
        self.read()

    def close(self) -> None:
        """Release the inotify descriptor and the reader thread; safe to call twice.

        The daemon's exit stack calls this whatever happened.  A read still
        hanging is left to the OS (the reader is a daemon thread).
        """
        self._release()

    def _release(self) -> None:
        self._reader.close()
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.close()

    def _open_inotify(self) -> bool:
        try:
            from asyncinotify import Inotify, Mask
        except ImportError:  # not Linux
            return False
        try:
            inotify = Inotify()
        except OSError:
            return False
        mask = (
            Mask.MOVED_TO
            | Mask.CLOSE_WRITE
            | Mask.CREATE
            | Mask.DELETE
            | Mask.MOVED_FROM
            | Mask.DELETE_SELF
            | Mask.MOVE_SELF
        )
        try:
            inotify.add_watch(self.path.parent, mask)
        except OSError as exc:
            inotify.close()
            self.monitor.invalid(f"cannot watch directory: {exc.strerror}", None)
            return False
        self._inotify = inotify
        return True

    async def run(self) -> None:
        """Watch until cancelled: inotify on the directory, else a poll."""
        if self.backend == "none":
            self.open()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._stale_loop())
                tg.create_task(self._read_loop())
                if self.backend == "inotify":
                    await self._inotify_loop()
                    self.backend = "poll"
                await self._poll_loop()
        finally:
            self._release()

    async def _stale_loop(self) -> None:
        clock = self.monitor.clock
        while True:
            deadline = self.monitor.stale_deadline()
            if deadline is None:
                await clock.sleep(1.0)  # nothing to time; re-check after observe()/rearm()
                continue
            await clock.sleep(max(0.0, deadline - clock.monotonic()))
            self.monitor.check_stale()

    async def _inotify_loop(self) -> None:
        """Consume inotify events; returns when the directory watch is lost."""
        from asyncinotify import Mask

        inotify = self._inotify
        if inotify is None:  # closed before it ran
            return
        with inotify:
            async for event in inotify:
                if event.mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
                    self.monitor.invalid("directory went away; polling instead", None)
                    return
                if event.name is not None and event.name.name == self.path.name:
                    if event.mask & (Mask.DELETE | Mask.MOVED_FROM):
                        continue  # a replacement will follow; keep the last valid value
                    self._dirty.set()

    async def _poll_loop(self) -> None:
        """Read in the reader thread every ``poll_interval``; act on what changed."""
        while True:
            await asyncio.sleep(self.poll_interval)
            if not self._dirty.is_set() and not await self._read_now(only_changes=True):
                self._hung()

"""The PnL trigger: watch a file the strategy rewrites, fire on a loss breach.

The strategy replaces the file atomically (write a temp file, rename over), so
the watcher watches the *directory* for ``MOVED_TO``/``CLOSE_WRITE`` of that
name (inotify; a watch on the file itself dies with the first rename) and
falls back to an ``os.stat`` poll where inotify is unavailable.  Every change
is re-read and parsed; bad content is an event, never a crash, and the last
valid value stands.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from killswitch.clock import Clock
from killswitch.log import get_logger

__all__ = ["PnlMonitor", "PnlWatcher", "parse_pnl"]

MAX_BYTES = 64 * 1024


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
        self._log = get_logger()

    def observe(self, value: float) -> None:
        self.value = value
        self.updated_at = self.clock.monotonic()
        self._stale_fired = False
        self._last_bad = None
        if value >= self.threshold:
            self._above = True
            return
        if self._above is not False:
            self._above = False
            self._log.error("pnl.breach", pnl=value, threshold=self.threshold)
            self.on_fire("breach", value)

    def invalid(self, problem: str, content: bytes | None) -> None:
        """Log bad content once per distinct content; the last valid value stands."""
        digest = problem if content is None else hashlib.sha256(content).hexdigest()
        if digest == self._last_bad:
            return
        self._last_bad = digest
        preview = None if content is None else content[:80].decode("utf-8", "replace")
        self._log.warning("pnl.invalid", problem=problem, content=preview, last_valid=self.value)

    def rearm(self) -> None:
        """After an operator reset: require ≥ threshold, then < threshold, to fire again."""
        self._above = False
        self._stale_fired = False
        self._started = self.clock.monotonic()

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

    def __init__(self, path: Path, monitor: PnlMonitor, *, poll_interval: float = 0.05) -> None:
        self.path = path
        self.monitor = monitor
        self.poll_interval = poll_interval
        self._last_stat: tuple[int, int, int] | None = None
        self._inotify: Any = None
        self.backend = "none"

    def read(self) -> None:
        """Read and parse the file once; every outcome goes to the monitor."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.monitor.invalid("missing", None)
            return
        except OSError as exc:
            self.monitor.invalid(f"unreadable: {exc.strerror}", None)
            return
        try:
            value = parse_pnl(raw)
        except ValueError as exc:
            self.monitor.invalid(str(exc), raw)
            return
        self.monitor.observe(value)

    def open(self) -> None:
        """Start watching, then read the file once.

        The watch is in place before the first read, so no rename after this
        returns can be missed; the daemon calls it before ``daemon.ready``.
        """
        if self.backend == "none":
            self.backend = "inotify" if self._open_inotify() else "poll"
            self._last_stat = self._stat()
        self.read()

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

    def close(self) -> None:
        """Release the inotify fd (the daemon's exit stack calls this whatever happened)."""
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.close()

    async def run(self) -> None:
        """Watch until cancelled: inotify on the directory, else a stat poll."""
        if self.backend == "none":
            self.open()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._stale_loop())
            if self.backend == "inotify":
                await self._inotify_loop()
                self.backend = "poll"
            await self._poll_loop()

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
        assert inotify is not None
        with inotify:
            async for event in inotify:
                if event.mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
                    self.monitor.invalid("directory went away; polling instead", None)
                    return
                if event.name is not None and event.name.name == self.path.name:
                    if event.mask & (Mask.DELETE | Mask.MOVED_FROM):
                        continue  # a replacement will follow; keep the last valid value
                    self.read()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _poll_loop(self) -> None:
        self._last_stat = self._stat()
        while True:
            await asyncio.sleep(self.poll_interval)
            current = self._stat()
            if current != self._last_stat:
                self._last_stat = current
                self.read()

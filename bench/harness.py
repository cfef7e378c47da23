"""What every scenario shares: its settings, and a sim + daemon pair that always stops."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.procs import DaemonProcess, Event, SimProcess, daemon_config

__all__ = ["Settings", "event_time", "progress", "sim_and_daemon"]


@dataclass(frozen=True)
class Settings:
    root: Path  # a short directory under /tmp (UNIX socket paths are limited to 107 bytes)
    quick: bool = False
    loop: str = "asyncio"  # the daemon's event loop: "asyncio" or "uvloop"
    slow: bool = False  # --slow: also the runs that take tens of minutes

    def runs(self, normal: int, quick: int) -> int:
        return quick if self.quick else normal

    def directory(self, name: str) -> Path:
        suffix = "" if self.loop == "asyncio" else f"-{self.loop}"
        path = self.root / f"{name}{suffix}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def label(self, title: str) -> str:
        return title if self.loop == "asyncio" else f"{title} [{self.loop}]"

    def key(self, key: str) -> str:
        return key if self.loop == "asyncio" else f"{key}.{self.loop}"


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def event_time(event: Event) -> float:
    """An event's ``timestamp`` (ISO 8601, UTC) as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


@contextlib.asynccontextmanager
async def sim_and_daemon(
    settings: Settings,
    name: str,
    *,
    sim: Mapping[str, Any],
    daemon: Mapping[str, Any],
    before_start: Callable[[Path], None] | None = None,
) -> AsyncIterator[tuple[SimProcess, DaemonProcess]]:
    """A simulated exchange and a daemon against it, both stopped on the way out.

    ``before_start(directory)`` runs after the config is written and before
    the daemon starts (e.g. to write the PnL file it will read first).
    """
    directory = settings.directory(name)
    exchange = SimProcess(directory, **sim)
    await exchange.start()
    proc: DaemonProcess | None = None
    try:
        config = daemon_config(directory, exchange.base_url, daemon)
        if before_start is not None:
            before_start(directory)
        proc = DaemonProcess(directory, config, loop=settings.loop)
        try:
            await proc.start()
        except BaseException:
            progress(f"{name}: daemon failed to start: {proc.stderr_tail()}")
            raise
        yield exchange, proc
    finally:
        if proc is not None:
            code = await proc.stop()
            if code not in (0, None):
                progress(f"{name}: daemon exited {code}: {proc.stderr_tail()}")
        await exchange.stop()

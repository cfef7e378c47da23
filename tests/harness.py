"""End-to-end harness: the real daemon as a subprocess, its events as data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import tomli_w

from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET

__all__ = ["DaemonProcess", "check_json_output", "write_atomically", "write_config"]

Event = dict[str, Any]
LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})


def check_json_output(stream: str, data: bytes, returncode: int | None) -> None:
    """Every line a daemon wrote on ``stream`` is one JSON event (contract §8).

    The only text allowed is the one ``config error: ...`` line of a config
    refused before anything starts (exit status 2).
    """
    for number, line in enumerate(data.splitlines(), 1):
        text = line.decode(errors="replace")
        if returncode == 2 and text.startswith("config error: "):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        ok = (
            isinstance(event, dict)
            and isinstance(event.get("event"), str)
            and event.get("level") in LEVELS
            and isinstance(event.get("timestamp"), str)
        )
        if not ok:
            raise AssertionError(
                f"daemon {stream} line {number} is not a JSON event "
                f"(event, level, timestamp): {text[:500]!r}"
            )


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_config(directory: Path, base_url: str, **overrides: Any) -> Path:
    """A daemon config against ``base_url`` with everything under ``directory``."""
    data: dict[str, Any] = {
        "exchange": {"base_url": base_url, "request_timeout": 1.0},
        "cancel_all": {"retry_base": 0.05, "retry_max": 0.5},
        "targets": [{"exchange": "EXCHANGE_2", "symbols": []}],
        "confirm": {
            "poll_interval": 0.05,
            "max_poll_interval": 0.2,
            "deadline": 20,
            "rate_limit": {"requests": 2000, "per_seconds": 1, "margin": 0.05},
        },
        "triggers": {
            "heartbeat": {"enabled": False},
            "pnl": {"enabled": False, "path": str(directory / "pnl.json")},
        },
        "control": {"socket": str(directory / "ctl.sock")},
        "state": {"path": str(directory / "state.db")},
        "daemon": {"shutdown_grace": 5},
    }
    data = _merge(data, overrides)
    path = directory / "killswitch.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` the way a strategy writes its PnL file: temp file, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(
        KILLSWITCH_API_KEY=DEMO_API_KEY,
        KILLSWITCH_API_SECRET=DEMO_API_SECRET,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class DaemonProcess:
    """``python -m killswitch run`` with its stdout parsed into events."""

    started: ClassVar[list[DaemonProcess]] = []  # every one, so teardown can reap them

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, *, nofile: int | None = None
    ) -> None:
        self.config = config
        self.env = env if env is not None else daemon_env()
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the daemon, like `ulimit -n`
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[Event] = []
        self.raw: list[bytes] = []
        self.stderr = b""
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self.output_checked = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, *, wait_ready: bool = True) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "killswitch",
            "run",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            preexec_fn=None if self.nofile is None else self._limit_nofile,
        )
        DaemonProcess.started.append(self)
        self._reader = asyncio.create_task(self._read())
        if wait_ready:
            await self.wait_for("daemon.ready")

    def _limit_nofile(self) -> None:  # runs in the child, before exec
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.raw.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "<unparsed>", "line": line.decode(errors="replace")}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        if self.proc.stderr is not None:
            self.stderr = await self.proc.stderr.read()
        async with self._changed:
            self._changed.notify_all()

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(
        self,
        name: str,
        where: Callable[[Event], bool] = lambda e: True,
        *,
        count: int = 1,
        timeout: float = 20.0,
    ) -> Event:
        """Wait until ``count`` events named ``name`` (matching ``where``) were logged."""

        def found() -> list[Event]:
            return [e for e in self.named(name) if where(e)]

        async with asyncio.timeout(timeout), self._changed:
            while len(found()) < count:
                if self._reader is not None and self._reader.done():
                    raise AssertionError(
                        f"daemon exited before {name!r}: rc={self.returncode} "
                        f"stderr={self.stderr.decode(errors='replace')[-2000:]}"
                    )
                await self._changed.wait()
        return found()[count - 1]

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def check_output(self) -> None:
        """Fail unless everything on stdout and stderr was JSON events (once per daemon)."""
        self.output_checked = True
        check_json_output("stdout", b"".join(self.raw), self.returncode)
        check_json_output("stderr", self.stderr, self.returncode)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        self.check_output()
        return code

    async def exited(self, timeout: float = 20.0) -> int:
        """Wait for the process to end by itself."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        self.check_output()
        return code

    async def kill(self) -> None:
        """SIGKILL: no chance to clean up (a crash)."""
        await self.stop(signal.SIGKILL)

"""The processes a benchmark drives, and how it talks to them.

Every child writes its stdout to a file, never to a pipe: the bench reads the
file when it chooses to, so it is not woken on the path it is measuring.  The
simulated exchange runs in its own process (``python -m bench.simproc``), so its
arrival times are taken by a loop that does nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import tomli_w

from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET

__all__ = [
    "Child",
    "DaemonProcess",
    "Event",
    "EventLog",
    "SimProcess",
    "daemon_config",
    "daemon_env",
]

Event = dict[str, Any]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- config


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


FAST_LISTINGS_SIM: dict[str, Any] = {
    "open_orders_limit": [1000, 1.0],
    "closed_orders_limit": [1000, 1.0],
}
"""The sim's listing windows unless a scenario names them."""


def daemon_config(directory: Path, base_url: str, overrides: Mapping[str, Any]) -> Path:
    """A daemon config against ``base_url``; every trigger but the signal is off by default.

    The listing windows match :data:`FAST_LISTINGS_SIM` unless ``overrides`` name them.
    """
    data: dict[str, Any] = {
        "exchange": {"base_url": base_url},
        "flat": {"rate_limit": {"requests": 1000, "per_seconds": 1, "margin": 0.05}},
        "targets": [{"exchange": "EXCHANGE_2", "symbols": []}],
        "triggers": {
            "heartbeat": {"enabled": False},
            "pnl": {"enabled": False, "path": str(directory / "pnl" / "pnl.json")},
        },
        "control": {"socket": str(directory / "ctl.sock")},
        "state": {"path": str(directory / "state.db")},
        "log": {"format": "json", "level": "info"},
        "daemon": {"shutdown_grace": 5},
    }
    path = directory / "killswitch.toml"
    path.write_text(tomli_w.dumps(_merge(data, overrides)))
    return path


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(
        KILLSWITCH_API_KEY=DEMO_API_KEY,
        KILLSWITCH_API_SECRET=DEMO_API_SECRET,
        PYTHONUNBUFFERED="1",
    )
    return env


# --------------------------------------------------------------------------- events


class EventLog:
    """JSON lines appended to a file by a child, read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "<unparsed>", "line": line.decode(errors="replace")}
            if not isinstance(event, dict):
                event = {"event": "<unparsed>", "line": line.decode(errors="replace")}
            self.events.append(event)

    def named(self, name: str) -> list[Event]:
        self.poll()
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(
        self,
        name: str,
        *,
        count: int = 1,
        timeout: float = 30.0,
        interval: float = 0.005,
        alive: Callable[[], bool] = lambda: True,
    ) -> Event:
        """Wait until ``count`` events named ``name`` are in the file; the last of them."""
        async with asyncio.timeout(timeout):
            while True:
                found = self.named(name)
                if len(found) >= count:
                    return found[count - 1]
                if not alive():
                    raise RuntimeError(f"{self.path.name}: process exited before {name!r}")
                await asyncio.sleep(interval)


# --------------------------------------------------------------------------- processes


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Child:
    """A subprocess with stdout (JSON lines) and stderr going to files in ``directory``."""

    def __init__(self, name: str, argv: list[str], directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.directory = directory
        self.env = env
        self.out_path = directory / f"{name}.out"
        self.err_path = directory / f"{name}.err"
        self.log = EventLog(self.out_path)
        self.proc: asyncio.subprocess.Process | None = None
        self._files: list[BinaryIO] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        out = self.out_path.open("wb")
        err = self.err_path.open("wb")
        self._files = [out, err]
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=out, stderr=err, stdin=asyncio.subprocess.DEVNULL, env=self.env
        )

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def cpu_ticks(self) -> int:
        return proc_cpu_ticks(self.pid)

    def stderr_tail(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        for f in self._files:
            f.close()
        return self.proc.returncode


class SimProcess(Child):
    """The simulated exchange in its own process, with its ``/_sim/`` admin API."""

    def __init__(self, directory: Path, **config: Any) -> None:
        # The listings are not what most scenarios measure: far above their use
        # unless a scenario names them (bench/flat.py states the venue's limits).
        config = {**FAST_LISTINGS_SIM, **config}
        argv = [sys.executable, "-m", "bench.simproc", json.dumps(config)]
        super().__init__("sim", argv, directory, daemon_env())
        self.base_url = ""
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await super().start()
        ready = await self.log.wait_for("sim.ready", timeout=20, interval=0.02, alive=self.alive)
        self.base_url = str(ready["base_url"])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def _call(self, method: str, route: str, body: Any = None) -> Any:
        assert self._session is not None
        async with self._session.request(method, self.base_url + route, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def seed(self, orders: dict[str, int]) -> list[str]:
        answer = await self._call("POST", "/_sim/seed", {"orders": orders})
        return list(answer["order_ids"])

    async def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", "/_sim/stats")
        return answer

    async def inject(self, endpoint: str, kind: str, count: int = 1) -> None:
        await self._call(
            "POST", "/_sim/faults", {"endpoint": endpoint, "kind": kind, "count": count}
        )

    async def arrivals(self) -> list[tuple[float, float]]:
        """(monotonic, wall) arrival times of every ``cancel_all``, in order."""
        stats = await self.stats()
        return [(float(a["monotonic"]), float(a["wall"])) for a in stats["cancel_all_arrivals"]]

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        return await super().stop(sig, timeout)


class DaemonProcess(Child):
    """``python -m killswitch run`` (or under uvloop), with a client for its control socket."""

    def __init__(self, directory: Path, config: Path, *, loop: str = "asyncio") -> None:
        module = "bench.uvloop_run" if loop == "uvloop" else "killswitch"
        argv = [sys.executable, "-m", module, "run", "--config", str(config)]
        super().__init__("daemon", argv, directory, daemon_env())
        self.socket = directory / "ctl.sock"
        self._control: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await super().start()
        await self.log.wait_for("daemon.ready", timeout=30, interval=0.02, alive=self.alive)
        self._control = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            timeout=aiohttp.ClientTimeout(total=10),
        )

    async def control(self, method: str, route: str) -> tuple[int, Any]:
        """One request on the control socket (a kept-alive connection)."""
        assert self._control is not None
        async with self._control.request(method, f"http://killswitch{route}") as resp:
            return resp.status, await resp.json()

    async def heartbeat(self) -> None:
        status, _ = await self.control("POST", "/heartbeat")
        if status != 200:
            raise RuntimeError(f"heartbeat answered {status}")

    async def reset(self) -> dict[str, Any]:
        status, body = await self.control("POST", "/reset")
        if status != 200:
            raise RuntimeError(f"reset answered {status}: {body}")
        result: dict[str, Any] = body
        return result

    async def status(self) -> dict[str, Any]:
        _, body = await self.control("GET", "/status")
        result: dict[str, Any] = body
        return result

    async def completed(
        self, count: int, *, timeout: float = 30.0, interval: float = 0.005
    ) -> Event:
        """Wait for the ``count``-th ``kill.completed``."""
        return await self.log.wait_for(
            "kill.completed", count=count, timeout=timeout, interval=interval, alive=self.alive
        )

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self._control is not None:
            await self._control.close()
            self._control = None
        return await super().stop(sig, timeout)

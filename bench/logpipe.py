"""13. SIGUSR1 → ``cancel_all`` arrival while the daemon's stdout is read, full, or closed.

Issue 17 §1: a log reader that stops reading (the pipe full, the writer
thread blocked on it) or went away (every write ``EPIPE``) must not slow the
kill.  Three daemons at once, their stdout and stderr on pipes this bench
owns: ``read`` drains them all along (the reference), ``full`` stops reading
after ``daemon.ready`` and lets a warm-up fill the pipe, ``closed`` closes the
read ends after ``daemon.ready``.  They are signalled in turn, in random order,
one at a time, so the machine's load falls on all three alike.  Each SIGUSR1
after the first hits a TRIPPED switch, which answers with a new sweep; the
time is from just before ``kill(2)`` to the sim's arrival of the
``cancel_all`` (one monotonic clock).
The bench learns that a kill ended from ``GET /status``, not from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import sys
import time
from typing import Any

import aiohttp

from bench.harness import Settings, progress
from bench.procs import SimProcess, daemon_config, daemon_env
from bench.report import Figure, percentile

__all__ = ["run"]

LIMIT = {"requests": 1000, "per_seconds": 1, "margin": 0.05}
CASES = ("read", "full", "closed")
WARMUP = 30
TARGET_RATIO = 1.5  # full or closed against read, p99


async def run(settings: Settings) -> list[Figure]:
    runs = settings.runs(200, 60)
    cases = {case: _Case(settings, case) for case in CASES}
    try:
        for case in cases.values():
            await case.start()
        rng = random.Random(17)
        for i in range(WARMUP + runs):  # one run of each case per round, in random order
            order = list(cases.values())
            rng.shuffle(order)
            for case in order:
                await case.fire(measured=i >= WARMUP)
                await asyncio.sleep(rng.uniform(0.01, 0.03))
            if (i + 1) % 50 == 0:
                progress(f"logpipe: {i + 1}/{WARMUP + runs} rounds")
        for case in cases.values():
            await case.finish()
    finally:
        for case in cases.values():
            await case.stop()
    samples = {name: case.samples for name, case in cases.items()}
    base = percentile(samples["read"], 99)
    figures = [
        Figure(
            settings.key("logpipe.read"),
            settings.label("13a. SIGUSR1 → cancel_all, stdout read"),
            "ms",
            samples["read"],
            details=cases["read"].details,
        )
    ]
    titles = {"full": "13b. ... stdout full (never read)", "closed": "13c. ... stdout closed"}
    for name, title in titles.items():
        ratio = percentile(samples[name], 99) / base
        case = cases[name]
        figures.append(
            Figure(
                settings.key(f"logpipe.{name}"),
                settings.label(title),
                "ms",
                samples[name],
                target=f"p99 ≤ {TARGET_RATIO}x stdout read",
                met=ratio <= TARGET_RATIO and case.details["completed"] == runs + WARMUP,
                base=base,
                base_label="stdout read",
                details=case.details,
            )
        )
    return figures


class _Case:
    """One daemon (and its own simulated exchange) whose stdout is read, full or closed."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.directory = settings.directory(f"logpipe-{name}")
        self.sim = SimProcess(self.directory, cancel_all_limit=[1000, 1.0])
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.fds: list[int] = []
        self.drains: list[asyncio.Task[None]] = []
        self.samples: list[float] = []
        self.details: dict[str, Any] = {"completed": 0}
        self.fired = 0

    async def start(self) -> None:
        await self.sim.start()
        config = daemon_config(
            self.directory,
            self.sim.base_url,
            {"cancel_all": {"rate_limit": LIMIT}, "log": {"buffer_lines": 100}},
        )
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.uvloop_run" if self.settings.loop == "uvloop" else "killswitch",
            "run",
            "--config",
            str(config),
            stdout=out_w,
            stderr=err_w,
            stdin=asyncio.subprocess.DEVNULL,
            env=daemon_env(),
        )
        os.close(out_w)
        os.close(err_w)
        self.fds = [out_r, err_r]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.directory / "ctl.sock")),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        await _until_ready(out_r)
        for fd in self.fds:
            os.set_blocking(fd, False)
        if self.name == "read":
            self.drains = [asyncio.create_task(_drain(fd)) for fd in self.fds]
        elif self.name == "closed":
            for fd in self.fds:
                os.close(fd)
            self.fds = []
        else:
            with contextlib.suppress(OSError):  # EBUSY: more than a page unread already
                fcntl.fcntl(out_r, fcntl.F_SETPIPE_SZ, 4096)  # fills during the warm-up

    async def fire(self, *, measured: bool) -> None:
        assert self.proc is not None
        assert self.session is not None
        kill_id = await _last_kill(self.session)
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGUSR1)
        self.fired += 1
        await _arrivals(self.sim, self.fired)
        self.details["completed"] += await _completed(self.session, kill_id)
        arrived = (await self.sim.arrivals())[self.fired - 1][0]
        if measured:
            self.samples.append((arrived - t0) * 1000)

    async def finish(self) -> None:
        assert self.session is not None
        self.details["log"] = (await _status(self.session)).get("log")

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        for task in self.drains:
            task.cancel()
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            self.details["exit_status"] = self.proc.returncode
        for fd in self.fds:
            os.close(fd)
        await self.sim.stop()


async def _until_ready(fd: int) -> None:
    """Read stdout (blocking, in a thread) up to the ``daemon.ready`` line."""
    seen = b""
    async with asyncio.timeout(30):
        while b'"daemon.ready"' not in seen:
            chunk = await asyncio.to_thread(os.read, fd, 65536)
            if not chunk:
                raise RuntimeError(f"daemon exited before daemon.ready: {seen[-2000:]!r}")
            seen += chunk


async def _drain(fd: int) -> None:
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 65536):
                    pass
    finally:
        loop.remove_reader(fd)


async def _status(session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get("http://killswitch/status") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def _last_kill(session: aiohttp.ClientSession) -> str | None:
    last = (await _status(session)).get("last_kill") or {}
    kill_id = last.get("kill_id")
    return None if kill_id is None else str(kill_id)


async def _arrivals(sim: SimProcess, count: int) -> None:
    async with asyncio.timeout(30):
        while True:
            if len(await sim.arrivals()) >= count:
                return
            await asyncio.sleep(0.01)


async def _completed(session: aiohttp.ClientSession, previous: str | None) -> int:
    """Wait until ``GET /status`` shows a kill other than ``previous`` completed: 1."""
    async with asyncio.timeout(30):
        while True:
            status = await _status(session)
            last = status.get("last_kill") or {}
            if status["state"] == "TRIPPED" and last.get("kill_id") not in (None, previous):
                return 1
            await asyncio.sleep(0.01)

"""13. SIGUSR1 → ``cancel_all`` arrival while the daemon's stdout is read, full, or closed.

Issue 17 §1: a log reader that stops reading (the pipe full, the writer
thread blocked on it) or went away (every write ``EPIPE``) must not slow the
kill.  One daemon per case, its stdout and stderr on pipes this bench owns:
``read`` drains them all along (the reference), ``full`` stops reading after
``daemon.ready`` and lets a warm-up fill the pipe, ``closed`` closes the read
ends after ``daemon.ready``.  Each SIGUSR1 after the first hits a TRIPPED
switch, which answers with a new sweep; the time is from just before
``kill(2)`` to the sim's arrival of the ``cancel_all`` (one monotonic clock).
The bench learns that a kill ended from ``GET /status``, not from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
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
    samples: dict[str, list[float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for case in CASES:
        samples[case], details[case] = await _case(settings, case, runs)
        progress(f"logpipe {case}: p50 {percentile(samples[case], 50):.2f} ms")
    base = percentile(samples["read"], 99)
    figures = [
        Figure(
            settings.key("logpipe.read"),
            settings.label("13a. SIGUSR1 → cancel_all, stdout read"),
            "ms",
            samples["read"],
            details=details["read"],
        )
    ]
    for case, title in (
        ("full", "13b. ... stdout full (never read)"),
        ("closed", "13c. ... closed"),
    ):
        ratio = percentile(samples[case], 99) / base
        figures.append(
            Figure(
                settings.key(f"logpipe.{case}"),
                settings.label(title),
                "ms",
                samples[case],
                target=f"p99 ≤ {TARGET_RATIO}x stdout read",
                met=ratio <= TARGET_RATIO and details[case]["completed"] == runs + WARMUP,
                base=base,
                base_label="stdout read",
                details=details[case],
            )
        )
    return figures


async def _case(settings: Settings, case: str, runs: int) -> tuple[list[float], dict[str, Any]]:
    directory = settings.directory(f"logpipe-{case}")
    sim = SimProcess(directory, cancel_all_limit=[1000, 1.0])
    await sim.start()
    config = daemon_config(
        directory,
        sim.base_url,
        {"cancel_all": {"rate_limit": LIMIT}, "log": {"buffer_lines": 100}},
    )
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.uvloop_run" if settings.loop == "uvloop" else "killswitch",
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
    reading = True
    drains: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(directory / "ctl.sock")),
        timeout=aiohttp.ClientTimeout(total=10),
    )
    try:
        await _until_ready(out_r)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        if case == "read":
            drains = [asyncio.create_task(_drain(fd)) for fd in (out_r, err_r)]
        elif case == "closed":
            os.close(out_r)
            os.close(err_r)
            reading = False
        else:
            with contextlib.suppress(OSError):  # EBUSY: more than a page unread already
                fcntl.fcntl(out_r, fcntl.F_SETPIPE_SZ, 4096)  # fills during the warm-up
        samples: list[float] = []
        completed = 0
        for i in range(WARMUP + runs):
            kill_id = await _last_kill(session)
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGUSR1)
            await _arrivals(sim, i + 1)
            completed += await _completed(session, kill_id)
            arrived = (await sim.arrivals())[i][0]
            if i >= WARMUP:
                samples.append((arrived - t0) * 1000)
        status = await _status(session)
        detail = {"completed": completed, "log": status.get("log")}
    finally:
        await session.close()
        for task in drains:
            task.cancel()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                detail_rc = await proc.wait()
        if proc.returncode is None:
            proc.kill()
            detail_rc = await proc.wait()
        if reading:
            os.close(out_r)
            os.close(err_r)
        await sim.stop()
    detail["exit_status"] = detail_rc
    return samples, detail


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

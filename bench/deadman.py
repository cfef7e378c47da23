"""2. Dead-man switch precision: first ``cancel_all`` arrival minus (last heartbeat + timeout).

Each run: ``POST /reset``, two heartbeats 50 ms apart over the control socket,
then silence.  The heartbeats go over a plain blocking UNIX socket (HTTP/1.1,
kept alive), so the bench's own client adds as little as possible between
the daemon answering and the bench taking the time.  The daemon receives the
last heartbeat somewhere between the bench sending it and the bench reading
the answer, so

- ``arrival - (answered + timeout)`` is a lower bound of the true lateness:
  if it is never negative, the switch never fired early;
- ``arrival - (sent + timeout)`` is an upper bound;
- ``heartbeat.timeout`` ``late_ms`` is the daemon's own account of its timer
  (deadline to firing, before the request is built and sent).
"""

from __future__ import annotations

import asyncio
import socket
import time

from bench.harness import Settings, progress, sim_and_daemon
from bench.procs import DaemonProcess
from bench.report import Figure, percentile

__all__ = ["run"]

TIMEOUT = 0.2
TARGET_P99_MS = 5.0
WARMUP = 5


async def run(settings: Settings) -> list[Figure]:
    runs = settings.runs(200, 60)
    total = WARMUP + runs
    sim_cfg = {"cancel_all_limit": [1000, 1.0]}
    daemon_cfg = {
        "cancel_all": {"rate_limit": {"requests": 1000, "per_seconds": 1, "margin": 0.05}},
        "triggers": {"heartbeat": {"enabled": True, "timeout": TIMEOUT}},
    }
    beats: list[tuple[float, float]] = []  # (sent, answered) of each run's last heartbeat
    async with sim_and_daemon(settings, "deadman", sim=sim_cfg, daemon=daemon_cfg) as (sim, daemon):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(daemon.socket))
        sock.settimeout(5.0)
        try:
            await _runs(daemon, sock, beats, total)
        finally:
            sock.close()
        arrivals = await sim.arrivals()
        late = [float(e["late_ms"]) for e in daemon.log.named("heartbeat.timeout")]
    if len(arrivals) != total or len(late) != total:
        raise RuntimeError(f"{total} runs, {len(arrivals)} arrivals, {len(late)} timeouts")
    lower = [(a - (ans + TIMEOUT)) * 1000 for (a, _), (_, ans) in zip(arrivals, beats, strict=True)]
    upper = [(a - (snt + TIMEOUT)) * 1000 for (a, _), (snt, _) in zip(arrivals, beats, strict=True)]
    lower, upper, late = lower[WARMUP:], upper[WARMUP:], late[WARMUP:]
    return [
        Figure(
            settings.key("deadman.arrival"),
            settings.label(
                f"2. dead-man: cancel_all arrival - (heartbeat answered + {TIMEOUT:g} s)"
            ),
            "ms",
            lower,
            target=f"never < 0, p99 ≤ {TARGET_P99_MS:g} ms",
            met=min(lower) >= 0 and percentile(lower, 99) <= TARGET_P99_MS,
            note="lower bound of the true lateness",
        ),
        Figure(
            settings.key("deadman.arrival_upper"),
            settings.label(f"2b. dead-man: cancel_all arrival - (heartbeat sent + {TIMEOUT:g} s)"),
            "ms",
            upper,
            note="upper bound of the true lateness",
        ),
        Figure(
            settings.key("deadman.late_ms"),
            settings.label("2c. dead-man: daemon's heartbeat.timeout late_ms (timer only)"),
            "ms",
            late,
            target="never < 0",
            met=min(late) >= 0,
        ),
    ]


REQUEST = b"POST /heartbeat HTTP/1.1\r\nHost: killswitch\r\nContent-Length: 0\r\n\r\n"


def beat(sock: socket.socket) -> tuple[float, float]:
    """One heartbeat; (monotonic time sent, monotonic time the whole answer was read)."""
    sent = time.monotonic()
    sock.sendall(REQUEST)
    data = b""
    while True:
        data += sock.recv(65536)
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(body) >= length:
                break
    answered = time.monotonic()
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"heartbeat answered {data[:40]!r}")
    return sent, answered


async def _runs(
    daemon: DaemonProcess, sock: socket.socket, beats: list[tuple[float, float]], total: int
) -> None:
    """Reset, beat twice, fall silent, ``total`` times; (sent, answered) of each last beat."""
    for i in range(total):
        if i:
            await daemon.reset()
        for k in range(2):
            if k:
                await asyncio.sleep(0.05)
            sent, answered = beat(sock)
        beats.append((sent, answered))
        await asyncio.sleep(TIMEOUT + 0.02)  # asleep while the timer runs out
        await daemon.completed(i + 1)
        if (i + 1) % 50 == 0:
            progress(f"deadman: {i + 1}/{total}")

"""Soak (issue 20): minutes of steady load; the daemon's memory, descriptors and store stay flat.

Heartbeats at 50 per second over the control socket; every 10 s 200 orders
seeded, a kill (SIGUSR1), its completion awaited and a reset; a SIGHUP every
minute; every alert sent to two receivers (JSON and Slack) that fail one
request in three.  ``[state] keep_kills`` is small (10), so after 10 kills the
store must stop growing.  Every 10 s: the daemon's RSS, its open descriptors
(by kind: files, TCP peers) and the size of ``state.db`` (with its WAL).  The
warm-up lasts until the store holds ``keep_kills`` kills and at least a
minute (a third of a short run): until then the store, and sqlite's page
cache with it, grow by design.  After it RSS may grow by at most 2 MB, the
descriptors by none, and the store stays bounded (its WAL is checkpointed and
reused at about 4 MB).

``python -m bench soak`` runs 5 minutes, ``--quick`` 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

from bench.harness import Settings, progress
from bench.procs import DaemonProcess, SimProcess, daemon_config, proc_status_kb
from bench.report import Figure
from bench.webhooks import Webhook

__all__ = ["run"]

KEEP_KILLS = 10
ORDERS = 200
PERIOD = 10.0  # seconds between kills and between samples
HUP_EVERY = 60.0
HEARTBEATS_PER_S = 50
RSS_GROWTH_KB = 2048


@dataclass(frozen=True)
class Sample:
    t: float
    kills: int
    rss_kb: int
    fds: int
    store_kb: int
    alerts_sent: int
    alerts_failed: int


def _tcp_peers() -> dict[str, int]:
    """Socket inode -> remote port, from /proc/net/tcp (IPv4 loopback is all we use)."""
    peers: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                peers[parts[9]] = int(parts[2].rsplit(":", 1)[1], 16)
    return peers


def fd_inventory(pid: int, names: dict[int, str]) -> dict[str, int]:
    """What the daemon's descriptors are: files by name, TCP sockets by peer, the rest by kind."""
    peers = _tcp_peers()
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            port = peers.get(target[8:-1])
            kind = "socket (unix or listening)" if not port else f"tcp to {names.get(port, port)}"
        elif target.startswith("/"):
            kind = os.path.basename(target)
        else:
            kind = target.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def _store_kb(directory: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{directory}/state.db{suffix}").st_size
    return total // 1024


async def _heartbeats(daemon: DaemonProcess, stop: asyncio.Event) -> int:
    sent = 0
    interval = 1 / HEARTBEATS_PER_S
    next_at = time.monotonic()
    while not stop.is_set():
        await daemon.heartbeat()
        sent += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


async def run(settings: Settings) -> list[Figure]:
    duration = 120.0 if settings.quick else 300.0
    warmup = duration / 3 if settings.quick else 60.0
    directory = settings.directory("soak")
    sim = SimProcess(directory, cancel_all_limit=[1000, 1.0], status_limit=[5000, 1.0])
    await sim.start()
    plain, slack = Webhook("flaky"), Webhook("flaky")
    await plain.start()
    await slack.start()
    overrides = {
        "cancel_all": {"rate_limit": {"requests": 1000, "per_seconds": 1, "margin": 0.05}},
        "confirm": {"rate_limit": {"requests": 5000, "per_seconds": 1, "margin": 0.05}},
        "triggers": {"heartbeat": {"enabled": True, "timeout": 5.0}},
        "state": {"keep_kills": KEEP_KILLS},
        "alerts": {
            "webhook": [
                {"url_env": "SOAK_HOOK_JSON", "format": "json"},
                {"url_env": "SOAK_HOOK_SLACK", "format": "slack"},
            ],
            "retry_max": 2.0,
        },
    }
    daemon = DaemonProcess(directory, daemon_config(directory, sim.base_url, overrides))
    daemon.env.update(SOAK_HOOK_JSON=plain.url, SOAK_HOOK_SLACK=slack.url)
    await daemon.start()
    samples: list[Sample] = []
    inventories: list[tuple[float, dict[str, int]]] = []
    names = {
        int(sim.base_url.rsplit(":", 1)[1]): "sim",
        plain.port: "json hook",
        slack.port: "slack hook",
    }
    stop = asyncio.Event()
    beats = asyncio.create_task(_heartbeats(daemon, stop))
    t0 = time.monotonic()
    kills = hups = 0
    try:
        while (elapsed := time.monotonic() - t0) < duration:
            if elapsed >= (hups + 1) * HUP_EVERY:
                daemon.send(signal.SIGHUP)
                hups += 1
            await sim.seed({"BTCUSDT": ORDERS})
            daemon.send(signal.SIGUSR1)
            kills += 1
            await daemon.completed(kills, timeout=60)
            await daemon.reset()
            tick = t0 + kills * PERIOD
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            samples.append(
                Sample(
                    round(time.monotonic() - t0, 1),
                    kills,
                    proc_status_kb(daemon.pid, "VmRSS"),
                    len(os.listdir(f"/proc/{daemon.pid}/fd")),
                    _store_kb(str(directory)),
                    len(daemon.log.named("alert.sent")),
                    len(daemon.log.named("alert.failed")),
                )
            )
            inventories.append((samples[-1].t, fd_inventory(daemon.pid, names)))
            progress(f"soak: {samples[-1]}")
    finally:
        stop.set()
        sent = await beats
        await daemon.stop()
        await sim.stop()
        await plain.stop()
        await slack.stop()
    return _figures(settings, samples, warmup, sent / duration, hups, inventories)


def _figures(
    settings: Settings,
    samples: list[Sample],
    warmup: float,
    rate: float,
    hups: int,
    inventories: list[tuple[float, dict[str, int]]],
) -> list[Figure]:
    full = next((s.t for s in samples if s.kills > KEEP_KILLS), samples[-1].t)
    warmup = max(warmup, full)
    after = [s for s in samples if s.t >= warmup]
    if len(after) < 2:
        raise RuntimeError("soak: too short to have samples after the warm-up")
    rss = (after[-1].rss_kb - after[0].rss_kb) / 1024
    fds = after[-1].fds - after[0].fds
    bounded = after
    store = (max(s.store_kb for s in bounded) - bounded[0].store_kb) / 1024 if bounded else 0.0
    table = [
        {"t_s": s.t, "kills": s.kills, "rss_mb": round(s.rss_kb / 1024, 2), "fds": s.fds,
         "store_kb": s.store_kb, "alerts_sent": s.alerts_sent, "alerts_failed": s.alerts_failed}
        for s in samples
    ]  # fmt: skip
    first = next(inv for t, inv in inventories if t >= warmup)
    changed = [
        {"t_s": t, **_diff(first, inv)} for t, inv in inventories if t >= warmup and inv != first
    ]
    details = {
        "warmup_s": warmup,
        "samples": table,
        "heartbeats_per_s": round(rate, 1),
        "sighups": hups,
        "descriptors_after_warmup": first,
        "descriptors_changed": changed,
    }
    return [
        Figure(
            settings.key("soak.rss"),
            "17. soak: RSS growth after the warm-up",
            "MB",
            [rss],
            target="≤ 2 MB",
            met=rss * 1024 <= RSS_GROWTH_KB,
            details=details,
        ),
        Figure(
            settings.key("soak.fds"),
            "17b. soak: open descriptors gained after the warm-up",
            "fds",
            [float(fds)],
            target="0",
            met=fds <= 0,
        ),
        Figure(
            settings.key("soak.store"),
            f"17c. soak: state.db growth once kills > keep_kills ({KEEP_KILLS})",
            "MB",
            [store],
            target="bounded (≤ the 4 MB WAL)",
            met=not bounded or store <= 4.5,
            note="" if bounded else "too few kills to exceed keep_kills",
        ),
    ]


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The kinds of descriptor whose count changed, with their new count."""
    return {
        k: after.get(k, 0)
        for k in sorted(set(before) | set(after))
        if after.get(k, 0) != before.get(k, 0)
    }

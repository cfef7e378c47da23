"""``killswitch demo``: a whole kill against the built-in simulated exchange.

Starts the simulated exchange on loopback, seeds open orders across symbols,
starts the real daemon as a subprocess (``python -m killswitch run``), sends it
``SIGUSR1``, follows its events to ``kill.completed`` and checks the result
against the exchange's own truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET, SimConfig, SimExchange

__all__ = ["run_demo", "write_demo_config"]

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT")
# The demo venue allows far more status polls than the contract's default 20/60 s,
# or confirming a few hundred orders would take a quarter of an hour.
DEMO_STATUS_LIMIT = (500, 1.0)


def write_demo_config(directory: Path, base_url: str, *, status_limit: tuple[int, float]) -> Path:
    requests, per_seconds = status_limit
    text = f"""\
# Written by `killswitch demo`: the daemon against the simulated exchange.
[exchange]
base_url = "{base_url}"
signing = "ed25519"
request_timeout = 2.0

[cancel_all.rate_limit]
requests = 10
per_seconds = 60
margin = 0.5

[[targets]]
exchange = "EXCHANGE_2"
symbols = []

[confirm]
max_concurrency = 64
poll_interval = 0.05
max_poll_interval = 0.5
deadline = 20

[confirm.rate_limit]
requests = {requests}
per_seconds = {per_seconds}
margin = 0.05

[triggers.heartbeat]
enabled = false

[triggers.pnl]
enabled = false

[control]
socket = "{directory / "control.sock"}"

[state]
path = "{directory / "state.db"}"

[daemon]
shutdown_grace = 5
"""
    path = directory / "killswitch.toml"
    path.write_text(text)
    return path


class _Screen:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.3f}s] {text}", flush=True)


async def _events(stream: asyncio.StreamReader) -> Any:
    while True:
        line = await stream.readline()
        if not line:
            return
        with contextlib.suppress(json.JSONDecodeError):
            yield json.loads(line)


async def run_demo(orders: int = 300, fill_ratio: float = 0.02) -> int:
    screen = _Screen()
    sim = SimExchange(
        SimConfig(
            api_key=DEMO_API_KEY,
            api_secret=DEMO_API_SECRET,
            fill_ratio=fill_ratio,
            cancel_delay=(0.05, 0.8),
            status_limit=DEMO_STATUS_LIMIT,
        )
    )
    base_url = await sim.start()
    per_symbol = {s: orders // len(SYMBOLS) for s in SYMBOLS}
    per_symbol[SYMBOLS[0]] += orders - sum(per_symbol.values())
    sim.seed(per_symbol)
    screen.say(
        f"simulated exchange on {base_url}: {orders} open orders across "
        f"{len(SYMBOLS)} symbols ({', '.join(f'{k} {v}' for k, v in per_symbol.items())})"
    )
    with tempfile.TemporaryDirectory(prefix="killswitch-demo-") as tmp:
        config = write_demo_config(Path(tmp), base_url, status_limit=DEMO_STATUS_LIMIT)
        env = {
            **os.environ,
            "KILLSWITCH_API_KEY": DEMO_API_KEY,
            "KILLSWITCH_API_SECRET": DEMO_API_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("NOTIFY_SOCKET", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "killswitch",
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        try:
            code = await asyncio.wait_for(_follow(proc, screen, sim, orders), timeout=60)
        except TimeoutError:
            screen.say("demo: the kill did not complete within 60 s")
            code = 1
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), timeout=10)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await sim.stop()
    return code


async def _follow(
    proc: asyncio.subprocess.Process, screen: _Screen, sim: SimExchange, seeded: int
) -> int:
    assert proc.stdout is not None
    final: set[str] = set()
    total = 0
    summary: dict[str, Any] | None = None
    next_progress = 0.0
    async for event in _events(proc.stdout):
        name = event.get("event")
        if name == "daemon.ready":
            screen.say(
                f"daemon ready (pid {event.get('pid')}, state {event.get('state')}); "
                "sending SIGUSR1"
            )
            proc.send_signal(signal.SIGUSR1)
        elif name == "trigger.fired":
            screen.say(f"trigger.fired source={event['source']} reason={event['reason']}")
        elif name == "cancel_all.sent":
            screen.say(
                f"cancel_all.sent exchange={event.get('exchange')} symbol={event.get('symbol')}"
            )
        elif name == "cancel_all.accepted":
            total += int(event["order_count"])
            screen.say(f"cancel_all.accepted: {event['order_count']} orders to confirm")
        elif name == "cancel_all.failed":
            screen.say(
                f"cancel_all.failed {event.get('error')}; retrying in {event.get('retry_in')}s"
            )
        elif name == "order.status" and event.get("status") in (
            "CANCELLED",
            "EXECUTED",
            "EXPIRED",
            "DISCARDED",
            "FAILED",
            "REJECTED",
        ):
            final.add(str(event["order_id"]))
            now = time.monotonic()
            if now >= next_progress or len(final) == total:
                next_progress = now + 0.25
                screen.say(f"confirming: {len(final)}/{total} terminal")
        elif name == "order.unconfirmed":
            screen.say(f"order.unconfirmed {event['order_id']} last={event.get('last_status')}")
        elif name == "kill.completed":
            summary = event
            break
    if summary is None:
        screen.say("demo: the daemon ended before kill.completed")
        return 1
    truth = sim.stats()
    by_status: dict[str, int] = truth["orders"]
    violations = sum(truth["violations"].values())
    print()
    print("kill completed")
    rows = [
        ("orders seeded", seeded, seeded),
        ("cancelled", summary["cancelled"], by_status.get("CANCELLED", 0)),
        ("filled", summary["filled"], by_status.get("EXECUTED", 0)),
        ("other", summary["other"], 0),
        ("unknown", summary["unknown"], 0),
        ("unconfirmed", summary["unconfirmed"], 0),
    ]
    print(f"  {'':16}{'daemon':>10}{'exchange':>10}")
    for label, ours, theirs in rows:
        print(f"  {label:16}{ours:>10}{theirs:>10}")
    print(
        f"  duration          {summary['duration_ms']} ms "
        f"({summary['polls']} status polls, {summary['polls'] / max(1, summary['orders']):.2f} "
        "per order)"
    )
    print(f"  rate-limit violations seen by the exchange: {violations}")
    ok = (
        summary["cancelled"] == by_status.get("CANCELLED", 0)
        and summary["filled"] == by_status.get("EXECUTED", 0)
        and summary["cancelled"] + summary["filled"] == seeded
        and violations == 0
    )
    print("  result: " + ("OK, every order confirmed terminal" if ok else "MISMATCH"))
    return 0 if ok else 1

"""``killswitch demo``: a whole kill against the built-in simulated exchange.

Starts the simulated exchange on loopback at the venue's default limits
(cancel_all 10/60 s; order status, open and closed orders 20/60 s each), seeds
open orders over 2 symbols, starts the real daemon as a subprocess (``python -m
killswitch run``), sends it ``SIGUSR1``, follows its events through the flat
proof (``kill.flat``: every target listed empty) to ``kill.completed``, and
checks the counts against the exchange's own truth, with 0 rate-limit
violations on all four endpoints.  The outcomes come from the closed-order
listing, 50 a page, so 300 orders need a handful of requests, not 300 polls.

It also seeds two positions (SOLUSDT long, XRPUSDT short), each protected by a
stop-loss that the kill's ``cancel_all`` cancels, and shows the exposure the
kill leaves (``kill.exposure``); with ``--flatten`` the daemon closes them
(``[flatten] enabled``) and the table shows the closes.
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
from decimal import Decimal
from pathlib import Path
from typing import Any

from killswitch.config.model import DEFAULT_TERMINAL
from killswitch.exchange.client import ENDPOINTS as ORDER_ENDPOINTS
from killswitch.exchange.positions import PLACE_ORDER, POSITIONS
from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET, SimConfig, SimExchange

__all__ = ["run_demo", "write_demo_config"]

SYMBOLS = ("BTCUSDT", "ETHUSDT")
ENDPOINTS = (*ORDER_ENDPOINTS, POSITIONS, PLACE_ORDER)
SEEDED_POSITIONS = {
    "SOLUSDT": {"side": "LONG", "size": "40", "entry_price": "150", "stops": 1},
    "XRPUSDT": {"side": "SHORT", "size": "5000", "entry_price": "0.6", "stops": 1,
                "take_profits": 1},
}  # fmt: skip


def write_demo_config(directory: Path, base_url: str, *, flatten: bool = False) -> Path:
    """The daemon's config for the demo: the venue's default limits on every endpoint."""
    text = f"""\
# Written by `killswitch demo`: the daemon against the simulated exchange, at the
# venue's default limits (cancel_all 10/60 s; status, open and closed orders 20/60 s).
[exchange]
base_url = "{base_url}"
signing = "ed25519"
request_timeout = 2.0

[[targets]]
exchange = "EXCHANGE_2"
symbols = []

[confirm]
deadline = 60

[guard]
enabled = false

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

[log]
level = "debug"   # the demo follows every order.status (a debug event)

[flatten]
enabled = {"true" if flatten else "false"}
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


async def run_demo(
    orders: int = 300,
    fill_ratio: float = 0.02,
    partial_fill_ratio: float = 0.05,
    *,
    flatten: bool = False,
) -> int:
    screen = _Screen()
    sim = SimExchange(
        SimConfig(
            api_key=DEMO_API_KEY,
            api_secret=DEMO_API_SECRET,
            fill_ratio=fill_ratio,
            partial_fill_ratio=partial_fill_ratio,
            cancel_delay=(0.05, 0.5),
        )
    )
    base_url = await sim.start()
    per_symbol = {s: orders // len(SYMBOLS) for s in SYMBOLS}
    per_symbol[SYMBOLS[0]] += orders - sum(per_symbol.values())
    sim.seed(per_symbol)
    stops = len(sim.open_positions(SEEDED_POSITIONS)["stop_ids"])
    screen.say(
        f"simulated exchange on {base_url}: {orders} open orders across "
        f"{len(SYMBOLS)} symbols ({', '.join(f'{k} {v}' for k, v in per_symbol.items())}); "
        "limits: cancel_all 10/60 s, order status, open and closed orders 20/60 s each"
    )
    screen.say(
        "positions: "
        + ", ".join(f"{k} {v['side']} {v['size']}" for k, v in SEEDED_POSITIONS.items())
        + f", protected by {stops} TP/SL orders (cancel_all cancels those too)"
        + ("; flatten on" if flatten else "")
    )
    with tempfile.TemporaryDirectory(prefix="killswitch-demo-") as tmp:
        config = write_demo_config(Path(tmp), base_url, flatten=flatten)
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
            code = await asyncio.wait_for(_follow(proc, screen, sim, orders + stops), timeout=60)
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
    flat: dict[str, Any] | None = None
    exposure: dict[str, Any] | None = None
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
            screen.say(f"cancel_all.accepted: {event['order_count']} orders named")
        elif name == "cancel_all.failed":
            screen.say(
                f"cancel_all.failed {event.get('error')}; retrying in {event.get('retry_in')}s"
            )
        elif name == "flat.leftover":
            screen.say(
                f"flat.leftover {event.get('symbol')}: {len(event.get('order_ids', []))} open "
                "orders no answer named: swept again"
            )
        elif name == "kill.flat":
            flat = event
            screen.say(
                f"kill.flat: every target lists no open order ({event['duration_ms']} ms after "
                "the trigger)"
            )
        elif name == "order.status" and event.get("status") in TERMINAL:
            final.add(str(event["order_id"]))
            now = time.monotonic()
            if now >= next_progress or len(final) == total:
                next_progress = now + 0.25
                via = event.get("via", "order status")
                screen.say(f"confirming: {len(final)}/{total} terminal (latest via {via})")
        elif name == "order.unconfirmed":
            screen.say(f"order.unconfirmed {event['order_id']} last={event.get('last_status')}")
        elif name == "kill.exposure":
            exposure = event
            screen.say(f"kill.exposure: {len(event['positions'])} positions open after the kill")
        elif name in ("flatten.sent", "flatten.done", "flatten.refused", "flatten.rejected",
                      "flatten.failed"):  # fmt: skip
            detail = event.get("quantity") or event.get("filled_quantity") or event.get("why")
            screen.say(f"{name} {event.get('symbol')} {event.get('side', '')} {detail}")
        elif name == "kill.completed":
            summary = event
            break
    if summary is None:
        screen.say("demo: the daemon ended before kill.completed")
        return 1
    code = _report(summary, flat, sim.stats(), seeded)
    _exposure_table(exposure, sim.stats())
    return code


TERMINAL = frozenset(DEFAULT_TERMINAL)  # the daemon's default terminal set


def _report(
    summary: dict[str, Any], flat: dict[str, Any] | None, truth: dict[str, Any], seeded: int
) -> int:
    by_status: dict[str, int] = {
        "CANCELLED": truth["cancelled"],
        "EXECUTED": truth["executed"],
        "PARTIALLY_EXECUTED": truth["partially_executed"],
    }
    violations = {e: truth["violations"].get(e, 0) for e in ENDPOINTS}
    requests = {e: truth["requests"].get(e, 0) for e in ENDPOINTS}
    still_open = len(truth["open"])
    print()
    print("kill completed")
    rows = [
        ("orders seeded", seeded, seeded),
        ("cancelled", summary["cancelled"], by_status.get("CANCELLED", 0)),
        ("filled", summary["filled"], by_status.get("EXECUTED", 0)),
        ("partially filled", summary["partially_filled"], by_status.get("PARTIALLY_EXECUTED", 0)),
        ("other", summary["other"], 0),
        ("unknown", summary["unknown"], 0),
        ("unconfirmed", summary["unconfirmed"], 0),
        ("still open", 0, still_open),
    ]
    print(f"  {'':18}{'daemon':>10}{'exchange':>10}")
    for label, ours, theirs in rows:
        print(f"  {label:18}{ours:>10}{theirs:>10}")
    flat_ms = None if flat is None else flat["duration_ms"]
    print(f"  proven flat       {summary['flat']} (kill.flat {flat_ms} ms after the trigger)")
    print(
        f"  completed         {summary['duration_ms']} ms; {summary['listed']} outcomes from "
        f"listings, {summary['polls']} status polls"
    )
    print("  requests          " + ", ".join(f"{e} {requests[e]}" for e in ENDPOINTS))
    print(
        "  rate-limit violations seen by the exchange: "
        + ", ".join(f"{e} {violations[e]}" for e in ENDPOINTS)
    )
    ok = (
        summary["flat"] is True
        and still_open == 0
        and summary["cancelled"] == by_status.get("CANCELLED", 0)
        and summary["filled"] == by_status.get("EXECUTED", 0)
        and summary["partially_filled"] == by_status.get("PARTIALLY_EXECUTED", 0)
        and summary["cancelled"] + summary["filled"] + summary["partially_filled"] == seeded
        and sum(violations.values()) == 0
    )
    print("  result: " + ("OK, proven flat, every order confirmed terminal" if ok else "MISMATCH"))
    return 0 if ok else 1


def _money(value: Any) -> str:
    """A venue's decimal string as a fixed two-decimal amount (``?`` when it is not one)."""
    try:
        return f"{Decimal(str(value)):.2f}"
    except (ArithmeticError, ValueError):
        return "?"


def _exposure_table(exposure: dict[str, Any] | None, truth: dict[str, Any]) -> None:
    """What "flat" does not prove: the positions the kill left, and what the venue holds now."""
    print()
    print("positions after the kill (kill.exposure; flat is about orders, not positions)")
    if exposure is None:
        print("  not read")
        return
    print(f"  {'symbol':10}{'side':>6}{'size':>10}{'notional':>14}{'TP/SL cancelled':>17}")
    for p in exposure["positions"]:
        notional = _money(p.get("notional"))
        print(
            f"  {p['symbol']:10}{p['side']:>6}{p['size']:>10}{notional:>14}"
            f"{p['stops_cancelled']:>17}"
        )
    if exposure.get("unreadable"):
        print(f"  UNKNOWN (could not be read): {', '.join(exposure['unreadable'])}")
    left = truth["position_truth"]["positions"]
    closes = len(truth["position_truth"]["placed"])
    print(
        f"  at the exchange now: {len(left)} open"
        + (f" ({', '.join(p['symbol'] for p in left)})" if left else "")
        + f"; {closes} reduce-only close orders placed"
        + ("" if closes else " (flatten is off: `killswitch demo --flatten` closes them)")
    )

"""``python -m bench.simproc '<json SimConfig fields>'``: the simulated exchange alone.

Prints ``{"event": "sim.ready", "base_url": ...}`` once listening on a free
loopback port, then serves until SIGTERM/SIGINT.  Limits and ``cancel_delay``
are given as two-element lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from killswitch.sim import SimConfig, SimExchange

_PAIRS = (
    "cancel_all_limit",
    "status_limit",
    "open_orders_limit",
    "closed_orders_limit",
    "cancel_delay",
)


def sim_config(raw: dict[str, Any]) -> SimConfig:
    fields: dict[str, Any] = {k: tuple(v) if k in _PAIRS else v for k, v in raw.items()}
    return SimConfig(**fields)


async def serve(config: SimConfig) -> None:
    sim = SimExchange(config)
    base_url = await sim.start("127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        sys.stdout.write(json.dumps({"event": "sim.ready", "base_url": base_url}) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await sim.stop()


def main() -> int:
    config = sim_config(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())

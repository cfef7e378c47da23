"""``python -m bench.uvloop_run run --config PATH``: the daemon's own CLI on uvloop.

A candidate measured by the benchmarks (``python -m bench --uvloop``), not a
dependency of killswitch: uvloop is imported at run time and must be installed
by hand (``.venv/bin/pip install uvloop``).
"""

from __future__ import annotations

import asyncio
import importlib
import sys

from killswitch.cli import main


def run() -> int:
    uvloop = importlib.import_module("uvloop")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return main()


if __name__ == "__main__":
    sys.exit(run())

"""``python -m bench``: run the scenarios, print the table, write ``bench/results/latest.json``."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    access,
    alerts,
    confirmation,
    deadman,
    flat,
    fleet,
    hostile,
    idle,
    logpipe,
    pnl_breach,
    positions,
    sentinel,
    signal_latency,
    soak,
    storm,
)
from bench.harness import Settings, progress
from bench.report import Figure, LoadMeter, machine, render_table

Scenario = Callable[[Settings], Awaitable[list[Figure]]]

SCENARIOS: dict[str, Scenario] = {
    "signal": signal_latency.run,
    "deadman": deadman.run,
    "pnl": pnl_breach.run,
    "confirm": confirmation.run,
    "naive": confirmation.run_naive,
    "idle": idle.run,
    "storm": storm.run,
    "hostile": hostile.run,
    "contract": confirmation.run_contract_default,
    "flat": flat.run,
    "large": flat.run_large,
    "flat_poll": flat.run_polling,
    "fleet": fleet.run,
    "access": access.run,
    "logpipe": logpipe.run,
    "positions": positions.run,
    "sentinel": sentinel.run,
    "sentinel_soak": sentinel.run_soak,  # 10 minutes (--quick: 60 s)
    "alerts": alerts.run,
    "soak": soak.run,
}
SLOW_ONLY = ("contract", "flat_poll", "sentinel_soak", "soak")
UVLOOP_SCENARIOS = ("signal", "deadman", "pnl", "confirm")
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the real killswitch daemon against the simulated exchange.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs, 10 s idle phases (about 2 minutes)"
    )
    parser.add_argument(
        "--slow",
        action="store_true",
        help="add scenario 'contract': 40 orders at the contract's default 20 polls per 60 s"
        " (about 2 minutes), and 'flat_poll': time to confirm N = 50, 200 (and, named"
        " with --slow, 1,000) orders by per-id polling alone (15 minutes; 65 with 1,000),"
        " and 'sentinel_soak': 10 minutes without a false sentinel kill",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="also run " + ", ".join(UVLOOP_SCENARIOS) + " with the daemon on uvloop",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated scenarios to run: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="scenarios to run (the same as --only), e.g. `python -m bench flat`",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


async def run_all(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    if args.only or args.scenarios:
        names = [n.strip() for n in (args.only or "").split(",") if n.strip()]
        names += list(args.scenarios)
    else:
        names = [n for n in SCENARIOS if args.slow or n not in SLOW_ONLY]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    plan = [(name, "asyncio") for name in names]
    if args.uvloop:
        if importlib.util.find_spec("uvloop") is None:
            raise SystemExit("--uvloop: uvloop is not installed (.venv/bin/pip install uvloop)")
        plan += [(name, "uvloop") for name in names if name in UVLOOP_SCENARIOS]
    figures: list[Figure] = []
    runs: list[dict[str, Any]] = []
    for name, loop in plan:
        settings = Settings(root=root, quick=args.quick, loop=loop, slow=args.slow)
        progress(f"--- {name} ({loop})")
        meter = LoadMeter()
        error = None
        try:
            got = await SCENARIOS[name](settings)
        except Exception as exc:
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
            got = [Figure(f"{name}.error", f"{name}: FAILED ({error})", "", [], met=False)]
        figures += got
        load = meter.stop()
        runs.append({"scenario": name, "loop": loop, "load": load, "error": error})
        progress(f"{name} ({loop}): {load}")
    return {"figures": figures, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ksb-", dir="/tmp"))
    info = machine()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    try:
        result = asyncio.run(run_all(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures: list[Figure] = result["figures"]
    info["loadavg_at_end"] = list(os.getloadavg())
    table = render_table(figures)
    print()
    print(table)
    print()
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
        f"aiohttp {info['aiohttp']}; {time.monotonic() - t0:.0f} s"
    )
    for r in result["runs"]:
        load = r["load"]
        print(
            f"  {r['scenario']:8s} {r['loop']:8s} {load['seconds']:6.1f} s: machine busy "
            f"{load['machine_busy_pct']:5.1f} %, of which not the bench "
            f"{load['others_pct_of_machine']:5.1f} % of the machine"
        )
    document = {
        "started": started,
        "seconds": round(time.monotonic() - t0, 1),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": info,
        "runs": result["runs"],
        "figures": [f.to_json() for f in figures],
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"results: {args.out}")
    failed = [r for r in result["runs"] if r["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``killswitch demo`` and ``killswitch sim`` (contract §5): the simulated exchange's
commands.  The simulator (aiohttp's server) is imported only when one of them runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

__all__ = ["add_sim_commands"]

EXIT_OK, EXIT_CONFIG = 0, 2


def cmd_sim(args: argparse.Namespace) -> int:
    from killswitch.sim import run_sim

    try:
        config = _sim_config(args)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sim(config, args.host, args.port))
    return EXIT_OK


def _sim_config(args: argparse.Namespace) -> Any:
    from killswitch import sim

    return sim.SimConfig(
        api_key=os.environ.get("KILLSWITCH_API_KEY", sim.DEMO_API_KEY),
        api_secret=os.environ.get("KILLSWITCH_API_SECRET", sim.DEMO_API_SECRET),
        cancel_all_limit=args.cancel_all_limit,
        status_limit=args.status_limit,
        open_orders_limit=args.open_orders_limit,
        closed_orders_limit=args.closed_orders_limit,
        positions_limit=args.positions_limit,
        place_order_limit=args.place_order_limit,
        fill_ratio=args.fill_ratio,
        partial_fill_ratio=args.partial_fill_ratio,
        expire_ratio=args.expire_ratio,
        cancel_delay=args.cancel_delay,
        clock_offset_ms=args.clock_offset_ms,
        require_content_type=args.require_content_type,
        retry_after_on_violation=args.retry_after,
        seed=args.seed,
    )


def _sim_limit(text: str) -> tuple[int, float]:
    """``REQUESTS/SECONDS``, e.g. ``10/60``."""
    try:
        requests, seconds = text.split("/")
        return int(requests), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected REQUESTS/SECONDS, got {text!r}") from None


def _sim_delay(text: str) -> tuple[float, float]:
    """``LOW-HIGH`` seconds, e.g. ``0.05-0.5``."""
    try:
        low, high = text.split("-")
        return float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH seconds, got {text!r}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from killswitch.demo import run_demo

    return asyncio.run(
        run_demo(
            orders=args.orders,
            fill_ratio=args.fill_ratio,
            partial_fill_ratio=args.partial_fill_ratio,
            flatten=args.flatten,
        )
    )


def add_sim_commands(sub: Any) -> None:
    """The two commands, on the CLI's subparsers."""
    p = sub.add_parser(
        "demo",
        help="run a kill against the built-in simulated exchange",
        description="Start the simulated exchange on loopback (the venue's default limits) and"
        " the real daemon, seed open orders, fire a kill with SIGUSR1, follow it to"
        " kill.completed and compare the counts with the exchange's own truth.",
    )
    p.add_argument("--orders", type=int, default=300, help="open orders to seed (default 300)")
    p.add_argument(
        "--fill-ratio",
        type=float,
        default=0.02,
        help="share of the cancelled orders that end EXECUTED instead (default 0.02)",
    )
    p.add_argument(
        "--partial-fill-ratio",
        type=float,
        default=0.05,
        help="share that end PARTIALLY_EXECUTED, terminal on futures (default 0.05)",
    )
    p.add_argument(
        "--flatten",
        action="store_true",
        help="also close the two seeded positions after the kill ([flatten] enabled)",
    )
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser(
        "sim",
        help="run the simulated exchange alone",
        description="Run the simulated exchange (the venue's endpoints, strict rate limits, "
        "admin API under /_sim/) until interrupted. Credentials: KILLSWITCH_API_KEY and "
        "KILLSWITCH_API_SECRET, else the demo pair.",
    )
    p.add_argument("--port", type=int, required=True, help="port to listen on (0: any free)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    for name, default in (
        ("cancel-all", "10/60"),
        ("status", "20/60"),
        ("open-orders", "20/60"),
        ("closed-orders", "20/60"),
        ("positions", "20/60"),
        ("place-order", "20/60"),
    ):
        p.add_argument(
            f"--{name}-limit",
            type=_sim_limit,
            default=_sim_limit(default),
            metavar="N/S",
            help=f"{name} requests per seconds, strict sliding window (default {default})",
        )
    p.add_argument(
        "--fill-ratio",
        type=float,
        default=0.0,
        help="share of cancelled orders that end EXECUTED instead (default 0)",
    )
    p.add_argument(
        "--partial-fill-ratio",
        type=float,
        default=0.0,
        help="share of cancelled orders that end PARTIALLY_EXECUTED (default 0)",
    )
    p.add_argument(
        "--expire-ratio",
        type=float,
        default=0.0,
        help="share of cancelled orders that end EXPIRED, a status the closed listing "
        "does not show (default 0)",
    )
    p.add_argument(
        "--cancel-delay",
        type=_sim_delay,
        default=(0.02, 0.3),
        metavar="LOW-HIGH",
        help="seconds an order stays CANCELLATION_RAISED, drawn uniformly (default 0.02-0.3)",
    )
    p.add_argument(
        "--clock-offset-ms",
        type=int,
        default=0,
        help="the venue's clock minus the real one; epochs more than 60 s off get 401 (default 0)",
    )
    p.add_argument(
        "--no-require-content-type",
        dest="require_content_type",
        action="store_false",
        help="serve signed requests that lack Content-Type: application/json (default: 400)",
    )
    p.add_argument(
        "--no-retry-after",
        dest="retry_after",
        action="store_false",
        help="answer a request over a limit 429 without Retry-After (default: with it)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed for ids and outcomes")
    p.set_defaults(fn=cmd_sim)

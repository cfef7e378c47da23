"""The command line (contract §5).  ``main()`` is sync; the work is async."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from killswitch import __version__
from killswitch.cluster.fleet import add_fleet_commands
from killswitch.config.load import TARGETS_REQUIRED, load_config, pnl_directory_problem
from killswitch.config.model import Config, as_dict
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import load_credentials
from killswitch.record.cli import add_record_commands
from killswitch.service.control import ControlClient, DaemonUnavailable
from killswitch.service.status_view import format_status  # small; also imported by tests from here
from killswitch.sim_commands import add_sim_commands

if TYPE_CHECKING:
    from killswitch.cluster.settings import ClusterSettings

__all__ = ["format_status", "main", "watch"]

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _config(path: str) -> Config:
    return load_config(Path(path))


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from killswitch import logsink
    from killswitch.alerts import load_receivers
    from killswitch.log import configure_logging
    from killswitch.service.daemon import Daemon
    from killswitch.service.loop import run as run_loop

    try:
        config = _config(args.config)
        credentials = load_credentials(config.exchange)
        cluster = None if config.cluster is None else _cluster_settings(config)
        alerts = load_receivers(config.alerts)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_CONFIG)
    logsink.install_std_streams()  # already done at the package's first line, when run as the CLI
    configure_logging(config.log.level, config.log.format, buffer_lines=config.log.buffer_lines)
    return run_loop(Daemon(config, credentials, cluster=cluster, alerts=alerts).serve())


def _cluster_settings(config: Config) -> ClusterSettings | None:
    from killswitch.cluster.settings import resolve_cluster

    settings = resolve_cluster(config.cluster)
    sentinel = config.sentinel
    if settings is not None and sentinel is not None and settings.desk == sentinel.desk:
        raise ConfigError(
            "sentinel.desk",
            f"is this daemon's own desk name {settings.desk!r}: a sentinel has its own "
            f"(for example cluster.desk = {settings.desk + '-sentinel'!r})",
        )
    return settings


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config), require_targets=False)
        if not config.targets and config.cluster is None:  # usable by nothing
            raise ConfigError("targets", TARGETS_REQUIRED)
        problem = pnl_directory_problem(config) if config.targets else None  # fleet: no PnL
        if problem is not None:
            raise problem
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_CONFIG)
    effective = as_dict(config)
    if not config.targets:
        effective["targets"] = "none: only `killswitch fleet` can use this file (`run` refuses it)"
    try:
        credentials = load_credentials(config.exchange)
        effective["credentials"] = "found (values not shown)"
    except ConfigError as exc:
        if args.online:
            return _fail(f"config error: {exc}", EXIT_CONFIG)
        effective["credentials"] = (
            f"NOT USABLE: {exc}" if config.targets else "not needed: `killswitch fleet` only"
        )
    if config.cluster is not None:
        try:
            settings = _cluster_settings(config)
            assert settings is not None
            effective["cluster"]["desk"] = settings.desk  # as resolved here
            effective["cluster"]["credentials"] = "found (values not shown)"
        except ConfigError as exc:
            effective["cluster"]["credentials"] = f"NOT USABLE: {exc}"
    if config.alerts.webhooks:
        from killswitch.alerts import load_receivers

        try:
            load_receivers(config.alerts)
            effective["alerts"]["secrets"] = "found (values not shown)"
        except ConfigError as exc:
            effective["alerts"]["secrets"] = f"NOT USABLE: {exc}"
    if not args.online:
        print(json.dumps(effective, indent=2))
        return EXIT_OK
    from killswitch.log import configure_logging, redactor

    redactor.register([credentials.api_key.reveal(), credentials.api_secret.reveal()])
    configure_logging(config.log.level, "json", stream=sys.stderr)  # events on stderr
    effective["online"] = asyncio.run(_check_online(config, credentials))
    print(json.dumps(effective, indent=2, default=str))
    return EXIT_OK if effective["online"]["ok"] else EXIT_FAIL


async def _check_online(config: Config, credentials: Any) -> dict[str, Any]:
    """Clock sync and the self-test (one signed open-orders call per target), as the daemon
    does at start.  Read-only, so it runs even when ``exchange.dry_run`` is set."""
    from dataclasses import replace

    from killswitch.clock import SystemClock
    from killswitch.exchange.client import (
        CANCEL_ALL,
        ENDPOINTS,
        ORDER_STATUS,
        ExchangeClient,
    )
    from killswitch.exchange.errors import ExchangeError
    from killswitch.exchange.ratelimit import SlidingWindowLimiter
    from killswitch.exchange.signing import make_signer

    clock = SystemClock()
    exchange = replace(config.exchange, dry_run=False)
    limits = {CANCEL_ALL: config.cancel_all.rate_limit, ORDER_STATUS: config.confirm.rate_limit}
    limiters = {
        e: SlidingWindowLimiter(e, lim.requests, lim.per_seconds, clock, margin=lim.margin)
        for e in ENDPOINTS
        for lim in [limits.get(e, config.flat.rate_limit)]
    }
    client = ExchangeClient(
        exchange,
        make_signer(exchange, credentials),
        limiters=limiters,
        clock=clock,
        status_pool_size=4,
        cancel_pool_size=1,
        cancel_warm_connections=1,
    )
    clock_error = None
    async with client:  # start() makes the first clock sync
        if client.health()["offset_ms"] is None:
            try:
                await client.sync_clock()
            except ExchangeError as exc:
                clock_error = {"error": exc.kind, "http_status": exc.status, "message": exc.message}
        result = await client.self_test(config.targets)
    health = client.health()
    return {
        "ok": result.ok,
        "base_url": exchange.base_url,
        "clock": {
            "offset_ms": health["offset_ms"],
            "rtt_ms": health["rtt_ms"],
            "problem": clock_error,
        },
        "self_test": result.as_dict(),
    }


def _control(args: argparse.Namespace) -> ControlClient | int:
    try:
        config = _config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_CONFIG)
    return ControlClient(config.control.socket)


def _call(args: argparse.Namespace, method: str, route: str, body: Any = None) -> tuple[int, Any]:
    client = _control(args)
    if isinstance(client, int):
        return -1, client
    try:
        status, answer = asyncio.run(client.request(method, route, body))
    except DaemonUnavailable as exc:
        return -1, _fail(f"killswitch: {exc}", EXIT_FAIL)
    if status == 403 and isinstance(answer, dict) and "right" in answer:  # contract §13
        peer = answer.get("peer") or {}
        who = peer.get("user") or "?"
        return -1, _fail(
            f"killswitch: permission denied: user {who} (uid {peer.get('uid')}) does not hold"
            f" the right {answer['right']!r} on the control socket {client.path}",
            EXIT_FAIL,
        )
    return status, answer


def cmd_trigger(args: argparse.Namespace) -> int:
    status, body = _call(args, "POST", "/trigger", {"reason": args.reason})
    if status < 0:
        if int(body) == EXIT_FAIL:  # no daemon answered: say what still works
            from killswitch.store.holder import what_still_kills

            config = _config(args.config)
            print(what_still_kills(config.state.path, config.source), file=sys.stderr)
        return int(body)
    print(f"trigger {body.get('outcome')}: kill {body.get('kill_id')}")
    return EXIT_OK if status == 202 else EXIT_FAIL


def cmd_heartbeat(args: argparse.Namespace) -> int:
    status, body = _call(args, "POST", "/heartbeat")
    if status < 0:
        return int(body)
    if status != 200:
        return _fail(f"killswitch: heartbeat refused (HTTP {status}): {body}", EXIT_FAIL)
    kill = f" (kill {body['kill_id']})" if body.get("kill_id") else ""
    trigger = "" if body.get("heartbeat_trigger", True) else "; the heartbeat trigger is off"
    print(f"heartbeat accepted: state {body.get('state')}{kill}{trigger}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        client = _control(args)
        if isinstance(client, int):
            return client
        try:
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(watch(client, args.interval, sys.stdout))
        except DaemonUnavailable as exc:
            return _fail(f"killswitch: {exc}", EXIT_FAIL)
        return EXIT_OK
    status, body = _call(args, "GET", "/status")
    if status < 0:
        return int(body)
    print(json.dumps(body, indent=2) if args.json else format_status(body))
    return EXIT_OK


async def watch(
    client: ControlClient,
    interval: float,
    out: TextIO,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Redraw the status every ``interval`` s until a kill that was seen running has ended.
    On a switch already TRIPPED (its kill over) it draws one screen and ends; while ARMED
    it waits for a kill (Ctrl-C stops it).  On a terminal each screen replaces the last;
    otherwise screens follow one another (a log, a pipe)."""
    from datetime import UTC, datetime

    from killswitch.service.status_view import render_watch

    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    seen_kill = False
    first = True
    while True:
        _, body = await client.request("GET", "/status")
        now = datetime.now(UTC).strftime("%H:%M:%SZ")
        out.write(clear + render_watch(body, now=now, socket=str(client.path)))
        if body["state"] == "KILLING":
            seen_kill = True
        elif seen_kill or (first and body["state"] == "TRIPPED"):
            rearm = "; `killswitch reset` re-arms" if body["state"] == "TRIPPED" else ""
            out.write(f"the kill has ended (no kill running): {body['state']}{rearm}\n")
            out.flush()
            return EXIT_OK
        out.flush()
        first = False
        await sleep(interval)


def cmd_reset(args: argparse.Namespace) -> int:
    reason = {"reason": args.reason} if args.reason else None
    status, body = _call(args, "POST", "/reset?force=1" if args.force else "/reset", reason)
    if status < 0:
        return int(body)
    if status == 202:  # four eyes (contract §13)
        print(
            f"reset: approval {body.get('approvals')} of {body.get('needed')} recorded; "
            "another user holding the reset right must reset too (state "
            f"{body.get('state')})"
        )
        return EXIT_OK
    if status != 200:
        return _fail(f"killswitch: reset refused: {body.get('error')}", EXIT_FAIL)
    outcome = body.get("reset")
    if outcome == "already armed":
        print(f"reset: already armed (state {body['state']})")
    elif outcome == "abandoned":
        print(f"reset: the running kill was abandoned; state {body['state']}")
    else:
        print(f"reset: state {body['state']}")
    return EXIT_OK


FLATTEN_TIMEOUT = 120.0  # seconds a flatten may take (reads, closes, reads again)


def cmd_flatten(args: argparse.Namespace) -> int:
    """``POST /flatten`` (contract §12): exit 0 when every position named is closed."""
    client = _control(args)
    if isinstance(client, int):
        return client
    client.timeout = FLATTEN_TIMEOUT
    body = {} if args.symbol is None else {"symbol": args.symbol}
    try:
        status, answer = asyncio.run(client.request("POST", "/flatten", body))
    except DaemonUnavailable as exc:
        return _fail(f"killswitch: {exc}", EXIT_FAIL)
    if status != 200:
        return _fail(f"killswitch: flatten refused: {answer.get('error')}", EXIT_FAIL)
    positions = answer.get("positions") or {}
    for symbol, outcome in sorted((positions.get("flatten") or {}).items()):
        why = f" ({outcome['why']})" if outcome.get("why") else ""
        print(f"flatten {symbol}: {outcome.get('outcome')}{why}")
    for symbol in positions.get("unreadable", []):
        print(f"flatten {symbol}: positions unreadable (unknown, not closed)")
    left = positions.get("positions_open", 0)
    print(f"flatten: {'every position closed' if answer.get('closed') else f'{left} left open'}")
    return EXIT_OK if answer.get("closed") else EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="killswitch",
        description="Cancel every open order on the exchange, inside its rate limit, and prove it.",
    )
    parser.add_argument("--version", action="version", version=f"killswitch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", required=True, metavar="PATH", help="the TOML config file")
        return p

    with_config("run", "run the daemon in the foreground").set_defaults(fn=cmd_run)
    p = with_config("check-config", "validate and print the effective config")
    p.add_argument(
        "--online",
        action="store_true",
        help="also check key, signature and clock against the exchange (one listing call"
        " per target); exit 1 if that fails",
    )
    p.set_defaults(fn=cmd_check_config)
    p = with_config("trigger", "ask the running daemon to kill now")
    p.add_argument("--reason", default="operator", help="why (logged with the kill)")
    p.set_defaults(fn=cmd_trigger)
    with_config("heartbeat", "send one heartbeat").set_defaults(fn=cmd_heartbeat)
    p = with_config("status", "show state, heartbeat, PnL and the last kill")
    p.add_argument("--json", action="store_true", help="print the body of GET /status")
    p.add_argument(
        "--watch",
        action="store_true",
        help="redraw the status, with a kill's progress bar and estimate, until a running"
        " kill ends; on a TRIPPED switch with no kill running, draw once; while ARMED, wait"
        " for a kill (Ctrl-C stops it)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between redraws with --watch (default 1)",
    )
    p.set_defaults(fn=cmd_status)
    p = with_config("reset", "re-arm a tripped switch")
    p.add_argument(
        "--force",
        action="store_true",
        help="also end a kill that cannot complete (kill.abandoned), then re-arm",
    )
    p.add_argument("--reason", default=None, help="why (recorded in switch.reset)")
    p.set_defaults(fn=cmd_reset)
    p = with_config("flatten", "close the positions a kill left (while TRIPPED)")
    p.add_argument("--symbol", metavar="S", help="only this symbol")
    p.set_defaults(fn=cmd_flatten)
    add_sim_commands(sub)
    add_fleet_commands(sub)
    add_record_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
            code: int = args.fn(args)
        finally:
            sys.stdout.flush()  # inside the try: a closed pipe fails here, not at exit
    except BrokenPipeError:
        # `killswitch status | head`: the reader went away.  No traceback; and stdout
        # goes to /dev/null so that the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code

"""``killswitch history`` and ``killswitch report`` (contract §5, §16): read the state store
named by the config, read-only, with or without a running daemon."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from killswitch.config.load import load_config
from killswitch.config.reader import ConfigError
from killswitch.record.reader import RecordReader, RecordUnavailable
from killswitch.record.report import history_json, history_text, report_json, report_text

__all__ = ["add_record_commands"]


def _reader(args: argparse.Namespace) -> RecordReader | int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        return RecordReader(config.state.path)
    except RecordUnavailable as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return 1


def cmd_history(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if isinstance(reader, int):
        return reader
    try:
        kills = reader.kills()
    finally:
        reader.close()
    if args.json:
        print(json.dumps(history_json(kills), indent=2))
    else:
        sys.stdout.write(history_text(kills))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if isinstance(reader, int):
        return reader
    try:
        kill = reader.kill(args.kill_id)
    finally:
        reader.close()
    if kill is None:
        which = f"no kill {args.kill_id!r}" if args.kill_id else "no kill"
        print(f"killswitch: {which} in {reader.path}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report_json(kill, partial=reader.partial), indent=2))
    else:
        sys.stdout.write(report_text(kill, partial=reader.partial))
    return 0


def add_record_commands(sub: Any) -> None:
    """The two commands, on the CLI's subparsers."""
    p = sub.add_parser(
        "history",
        help="the kills in the state store, newest first",
        description="The kills recorded in the state store, newest first: id, trigger, start,"
        " duration, outcome counts, flat, reset by and when.  Reads the store read-only; works"
        " while the daemon runs and after it died.",
    )
    p.add_argument("--config", required=True, metavar="PATH", help="the TOML config file")
    p.add_argument("--json", action="store_true", help="one JSON list")
    p.set_defaults(fn=cmd_history)
    p = sub.add_parser(
        "report",
        help="the whole record of one kill (default: the last)",
        description="The whole record of one kill: trigger, timeline, sweeps, every order with"
        " its last status and how it was learned, positions, alerts, the reset.  Exit 1 when"
        " there is no such kill.",
    )
    p.add_argument("--config", required=True, metavar="PATH", help="the TOML config file")
    p.add_argument("kill_id", nargs="?", metavar="KILL_ID", help="the kill (default: the last)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(fn=cmd_report)

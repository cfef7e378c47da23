"""``killswitch fleet trigger|status``: the firm-wide button and the fleet's table (§11).

``fleet trigger`` publishes one trigger message (to every desk, or with
``--desk`` to one) as a request whose replies all come back to one inbox
(scatter-gather), and asks ``P.<firm>.status`` once the acknowledgements
settle: the desks that answer are the known fleet.  (The status request
follows the kills rather than preceding or accompanying them, so that no desk
spends time answering it while it or a desk beside it starts its kill.)
It prints every desk's acknowledgement and exits 1 if a known desk did not
acknowledge within ``--timeout``.  The NATS server decides who may publish a
trigger (its users' permissions); a refused publish is reported, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from killswitch.config.load import SUBJECT_TOKEN, load_config
from killswitch.config.reader import ConfigError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from killswitch.cluster.settings import ClusterSettings

__all__ = ["Fleet", "FleetAnswer", "add_fleet_commands"]

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
SETTLE = 0.25  # once every known desk has answered: wait this long for late status replies
ACKS_SETTLE = 0.05  # the status request goes out once no acknowledgement came for this long
STATUS_LATEST = 0.25  # ... or this long after the trigger, if none came at all


@dataclass
class FleetAnswer:
    """What one broadcast gathered: status replies and acknowledgements, by desk."""

    trigger_id: str
    subject: str
    sent_mono: float
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    ack_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    twins: list[str] = field(default_factory=list)


class Fleet:
    """An operator's connection to the firm's NATS: broadcast, gather, show."""

    def __init__(self, settings: ClusterSettings) -> None:
        from killswitch.cluster.settings import Subjects

        self.settings = settings
        self.subjects = Subjects.of(settings.config, settings.desk)
        self.errors: list[str] = []
        self.twins: set[str] = set()  # desk names more than one daemon answered for
        self.nc: NatsClient | None = None
        self._changed = asyncio.Event()

    async def connect(self, timeout: float) -> None:
        import nats

        from killswitch.cluster.settings import connect_options, is_tls, wants_tls

        async def on_error(exc: Exception) -> None:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self._changed.set()

        # nats-py 2.16 keeps retrying a refused first connection even with
        # allow_reconnect=False: the deadline is ours.
        try:
            async with asyncio.timeout(timeout):
                self.nc = await nats.connect(
                    servers=list(self.settings.config.servers),
                    name=f"killswitch fleet {_user()}@{self.settings.host}",
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=max(1, round(timeout)),
                    error_cb=on_error,
                    **connect_options(self.settings),
                )
        except TimeoutError:
            raise ConnectionError(self.errors[-1] if self.errors else "timed out") from None
        self.errors.clear()
        if wants_tls(self.settings.config) and not is_tls(self.nc):
            raise ConnectionError("tls:// configured, the connection is not encrypted")

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.nc.close()
            self.nc = None

    async def _gather(self, store: Callable[[dict[str, Any]], None]) -> str:
        """A fresh inbox whose JSON replies go to ``store``."""
        assert self.nc is not None
        inbox = self.nc.new_inbox()

        async def on_reply(msg: Msg) -> None:
            try:
                body = json.loads(msg.data)
            except ValueError:
                return
            if isinstance(body, dict) and isinstance(body.get("desk"), str):
                store(body)
                self._changed.set()

        await self.nc.subscribe(inbox, cb=on_reply)
        return inbox

    async def _wait(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._changed.wait()

    async def trigger(
        self, reason: str, *, desk: str | None = None, timeout: float = 2.0, origin: str = ""
    ) -> FleetAnswer:
        """Broadcast one trigger, gather the acknowledgements, and ask every desk for its
        status once they settle (:data:`ACKS_SETTLE`); gather until done.

        The status request waits for the kills: each desk answers it with a full
        status, and desks that share a host would spend that time in the middle of
        one another's first ``cancel_all`` (measured: about 1.5 ms per desk of added
        latency at the tenth desk of a host, BENCHMARKS.md).
        """
        from killswitch.cluster.messages import encode_trigger, new_trigger

        assert self.nc is not None
        nc = self.nc
        answer: FleetAnswer | None = None

        def on_status(body: dict[str, Any]) -> None:
            assert answer is not None
            self._note_twin(answer.statuses, body)
            answer.statuses.setdefault(body["desk"], body)

        def on_ack(body: dict[str, Any]) -> None:
            assert answer is not None
            if body["desk"] not in answer.acks:
                answer.acks[body["desk"]] = body
                answer.ack_ms[body["desk"]] = (time.monotonic() - answer.sent_mono) * 1000

        ack_inbox = await self._gather(on_ack)
        status_inbox = await self._gather(on_status)
        await nc.flush()
        subject = self.subjects.firm_trigger
        if desk is not None:
            subject = f"{self.settings.config.subject_prefix}.{self.settings.config.firm}"
            subject += f".{desk}.trigger"
        message = new_trigger(origin or self.origin(), reason, time.time())
        answer = FleetAnswer(message.id, subject, time.monotonic())
        await nc.publish(subject, encode_trigger(message), reply=ack_inbox)
        await nc.flush()
        deadline = answer.sent_mono + timeout
        status_at = answer.sent_mono + min(STATUS_LATEST, timeout / 2)
        acked, last_ack = 0, answer.sent_mono
        asked = False
        quiet_since, known = 0.0, 0
        while (now := time.monotonic()) < deadline:
            if len(answer.acks) != acked:
                acked, last_ack = len(answer.acks), now
            if not asked:
                if (acked and now - last_ack >= ACKS_SETTLE) or now >= status_at:
                    await nc.publish(self.subjects.status, b"", reply=status_inbox)
                    await nc.flush()
                    asked, quiet_since, known = True, now, len(answer.statuses)
                    continue
                settle_at = last_ack + ACKS_SETTLE if acked else status_at
                await self._wait(min(deadline, settle_at, status_at) - now)
                continue
            if len(answer.statuses) != known:
                known, quiet_since = len(answer.statuses), now
            expected = self.expected(answer, desk)
            if expected and expected <= set(answer.acks) and now - quiet_since >= SETTLE:
                break
            if self.errors:
                break
            await self._wait(min(deadline - now, SETTLE))
        answer.errors = list(self.errors)
        answer.twins = sorted(self.twins)
        return answer

    @staticmethod
    def expected(answer: FleetAnswer, desk: str | None) -> set[str]:
        return {desk} if desk is not None else set(answer.statuses)

    async def status(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Every desk's status reply within ``timeout`` (``received_ms`` added)."""
        assert self.nc is not None
        statuses: dict[str, dict[str, Any]] = {}

        def on_status(body: dict[str, Any]) -> None:
            self._note_twin(statuses, body)
            statuses.setdefault(body["desk"], {**body, "received_ms": int(time.time() * 1000)})

        inbox = await self._gather(on_status)
        await self.nc.publish(self.subjects.status, b"", reply=inbox)
        await self.nc.flush()
        deadline = time.monotonic() + timeout
        while (now := time.monotonic()) < deadline and not self.errors:
            await self._wait(deadline - now)
        return statuses

    def _note_twin(self, known: dict[str, dict[str, Any]], body: dict[str, Any]) -> None:
        """Two daemons answering under one desk name (a copied config): both obey its subject."""
        first = known.get(body["desk"])
        if first is not None and (first.get("host"), first.get("pid")) != (
            body.get("host"),
            body.get("pid"),
        ):
            self.twins.add(body["desk"])

    def origin(self) -> str:
        return f"{_user()}@{socket.gethostname()}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the server's user decides anyway
        return "unknown"


# --------------------------------------------------------------------------- output


def format_trigger(answer: FleetAnswer, desk: str | None, timeout: float) -> tuple[str, bool]:
    """The report's lines, and whether every expected desk acknowledged."""
    lines = [f"trigger {answer.trigger_id} on {answer.subject}"]
    expected = Fleet.expected(answer, desk)
    ok = bool(expected)
    for name in sorted(expected | set(answer.acks)):
        ack = answer.acks.get(name)
        host = (ack or answer.statuses.get(name) or {}).get("host", "?")
        if ack is None:
            unseen = "" if name in answer.statuses else " (no status reply either)"
            lines.append(f"{name}\t{host}\tNO ACK within {timeout:g} s{unseen}")
            ok = False
        elif ack.get("accepted"):
            wire = "" if ack.get("on_wire", True) else f" ({ack.get('why')})"
            lines.append(
                f"{name}\t{host}\tACK\tkill {ack.get('kill_id')} {ack.get('outcome', '')}"
                f"\t{answer.ack_ms[name]:.1f} ms{wire}"
            )
        else:
            lines.append(f"{name}\t{host}\tREFUSED\t{ack.get('why')}")
            ok = ok and name not in expected
    for error in answer.errors:
        refused = "permissions violation" in error.lower()
        lines.append(f"{'refused by the NATS server' if refused else 'error'}: {error}")
        ok = False
    for twin in answer.twins:  # one acknowledgement cannot speak for both
        lines.append(f"error: more than one daemon answers as desk {twin}: fix their desk names")
        ok = False
    if not expected:
        lines.append("no desk answered the status request: the fleet is unknown")
    acked = sum(1 for n in expected if answer.acks.get(n, {}).get("accepted"))
    lines.append(f"{len(expected)} known desk(s), {acked} acknowledged")
    return "\n".join(lines), ok


def _age(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f}s"


def fleet_rows(statuses: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for desk in sorted(statuses):
        s = statuses[desk]
        last = s.get("last_kill") or {}
        exchange = s.get("exchange") or {}
        now_ms, got_ms = s.get("now_ms"), s.get("received_ms")
        rows.append(
            {
                "desk": desk,
                "host": s.get("host"),
                "state": s.get("state"),
                "last_kill": last.get("kill_id"),
                "flat": last.get("flat"),
                "heartbeat_age": s.get("heartbeat_age"),
                "venue_offset_ms": exchange.get("offset_ms"),
                "clock_skew_ms": None if now_ms is None or got_ms is None else now_ms - got_ms,
                "cluster_connected": (s.get("cluster") or {}).get("connected"),
            }
        )
    return rows


def format_fleet(rows: list[dict[str, Any]]) -> str:
    header = ("DESK", "HOST", "STATE", "LAST KILL", "FLAT", "HEARTBEAT", "VENUE OFFSET", "SKEW")
    table = [header]
    for r in rows:

        def flat(v: Any) -> str:
            return "-" if v is None else ("yes" if v else "NO")

        def ms(v: Any) -> str:
            return "-" if v is None else f"{v:+.0f} ms"

        table.append(
            (
                str(r["desk"]),
                str(r["host"]),
                str(r["state"]),
                str(r["last_kill"] or "none"),
                flat(r["flat"]),
                _age(r["heartbeat_age"]),
                ms(r["venue_offset_ms"]),
                ms(r["clock_skew_ms"]),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


# --------------------------------------------------------------------------- commands


def _settings(path: str) -> ClusterSettings:
    from killswitch.cluster.settings import resolve_cluster

    config = load_config(Path(path), require_targets=False)  # ops.toml: [cluster] alone
    if config.cluster is None:
        raise ConfigError("cluster", "fleet commands need a [cluster] table")
    settings = resolve_cluster(config.cluster)
    assert settings is not None
    return settings


async def _run(
    settings: ClusterSettings, timeout: float, work: Callable[[Fleet], Any], err: TextIO
) -> Any:
    fleet = Fleet(settings)
    try:
        await fleet.connect(timeout)
    except Exception as exc:
        print(f"killswitch: cannot reach NATS {list(settings.config.servers)}: {exc}", file=err)
        return None
    try:
        return await work(fleet)
    finally:
        await fleet.close()


def cmd_fleet_trigger(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    if args.desk is not None and not SUBJECT_TOKEN.fullmatch(args.desk):
        print(f"killswitch: --desk {args.desk!r}: not a desk name ([A-Za-z0-9_-])", file=sys.stderr)
        return EXIT_CONFIG

    async def work(fleet: Fleet) -> FleetAnswer:
        return await fleet.trigger(args.reason, desk=args.desk, timeout=args.timeout)

    answer = asyncio.run(_run(settings, args.timeout, work, sys.stderr))
    if answer is None:
        return EXIT_FAIL
    text, ok = format_trigger(answer, args.desk, args.timeout)
    if args.json:
        print(
            json.dumps(
                {
                    "trigger_id": answer.trigger_id,
                    "subject": answer.subject,
                    "known": sorted(Fleet.expected(answer, args.desk)),
                    "acks": answer.acks,
                    "ack_ms": answer.ack_ms,
                    "errors": answer.errors,
                    "ok": ok,
                },
                indent=2,
            )
        )
    else:
        print(text)
    return EXIT_OK if ok else EXIT_FAIL


def cmd_fleet_status(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def work(fleet: Fleet) -> tuple[dict[str, dict[str, Any]], list[str]]:
        statuses = await fleet.status(args.timeout)
        twins = [f"more than one daemon answers as desk {t}" for t in sorted(fleet.twins)]
        return statuses, fleet.errors + twins

    result = asyncio.run(_run(settings, args.timeout, work, sys.stderr))
    if result is None:
        return EXIT_FAIL
    statuses, errors = result
    rows = fleet_rows(statuses)
    if args.json:
        print(json.dumps({"desks": rows, "status": statuses, "errors": errors}, indent=2))
    else:
        print(format_fleet(rows))
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
    return EXIT_OK if statuses and not errors else EXIT_FAIL


def add_fleet_commands(sub: Any) -> None:
    """``killswitch fleet trigger|status`` under the CLI's subcommands."""
    fleet = sub.add_parser(
        "fleet",
        help="firm-wide: trigger every desk or list them (NATS)",
        description="Firm-wide commands over the [cluster] NATS servers of --config.",
    )
    verbs = fleet.add_subparsers(dest="fleet_command", required=True, metavar="VERB")
    p = verbs.add_parser(
        "trigger",
        help="broadcast a kill; exit 1 if a known desk did not ack",
        description="Broadcast a kill to every desk of the firm (or one, --desk), print each"
        " desk's acknowledgement, then the fleet's status; exit 1 if a desk that answers status"
        " did not acknowledge within --timeout, if the server refused the publish, or if no"
        " desk answered.",
    )
    p.add_argument("--config", required=True, metavar="PATH", help="a config with [cluster]")
    p.add_argument("--desk", default=None, help="only this desk (default: every desk)")
    p.add_argument("--reason", default="fleet trigger", help="why (logged by every desk)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for acks (2)")
    p.add_argument("--json", action="store_true", help="print the acknowledgements as JSON")
    p.set_defaults(fn=cmd_fleet_trigger)
    p = verbs.add_parser(
        "status",
        help="one row per desk: state, last kill, heartbeat, clock",
        description="Ask every desk of the firm for its status over NATS and print one row per"
        " desk that answers within --timeout: desk, host, state, last kill, flat, heartbeat,"
        " clock.  A desk that is down or cut off from NATS is not listed.",
    )
    p.add_argument("--config", required=True, metavar="PATH", help="a config with [cluster]")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to gather replies (1)")
    p.add_argument("--json", action="store_true", help="print the rows and status bodies")
    p.set_defaults(fn=cmd_fleet_status)

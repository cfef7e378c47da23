"""``killswitch report`` and ``history`` (contract §16): the record of a kill, for a human
who was not there (text) and for a compliance tool (JSON).  Pure functions of the record."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from killswitch.record.reader import Entry, KillSummary, OrderLine

__all__ = ["history_json", "history_text", "report_json", "report_text"]

_OUTCOME = {
    "CANCELLED": "cancelled",
    "EXECUTED": "filled",
    "PARTIALLY_EXECUTED": "partially filled",
}
_WORKING = {"RAISED", "OPEN", "CANCELLATION_RAISED", "EXPIRATION_RAISED"}
_COUNTS = ("cancelled", "filled", "partially_filled", "other", "unknown", "unconfirmed")


def _when(wall: float | None) -> str:
    if wall is None:
        return "-"
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d} UTC"
    )


def _wall(entry: Entry) -> float | None:
    try:
        return datetime.fromisoformat(entry.at).timestamp()
    except ValueError:
        return None


def _offset(kill: KillSummary, wall: float | None) -> str:
    return "      ?" if wall is None else f"{wall - kill.started_at:+8.3f}"


def outcome(order: OrderLine) -> str:
    if not order.status:
        return "no status learned"
    if order.status in _WORKING:
        return "NOT terminal"
    return _OUTCOME.get(order.status, "other")


def learned(order: OrderLine) -> str:
    if order.via:
        return f"listing ({order.via})"
    if order.first_polled_at is not None:
        return "order status call"
    return "listing" if order.status else "never learned"


def _peer(fields: dict[str, Any]) -> str:
    peer = fields.get("peer")
    if not isinstance(peer, dict):
        return ""
    name = peer.get("user") or "?"
    return f" by {name} (uid {peer.get('uid')}, pid {peer.get('pid')})"


def _reset(kill: KillSummary) -> dict[str, Any] | None:
    entry = kill.last("switch.reset")
    if entry is None:
        return None
    f = entry.fields
    return {
        "at": _wall(entry),
        "peer": f.get("peer"),
        "peers": f.get("peers"),
        "reason": f.get("reason"),
        "force": bool(f.get("force")),
    }


def _counts(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "not completed"
    parts = [f"{summary[k]} {k.replace('_', ' ')}" for k in _COUNTS if summary.get(k)]
    orders = summary.get("orders", 0)
    return f"{orders} order(s)" + (": " + ", ".join(parts) if parts else "")


def _line(kill: KillSummary, e: Entry) -> str | None:
    """One journal entry in words (None: not worth a line of its own)."""
    f = e.fields
    where = " ".join(str(x) for x in (f.get("exchange"), f.get("symbol")) if x)
    table: dict[str, Callable[[], str]] = {
        "trigger.fired": lambda: (
            f"TRIGGER {f.get('source')}: {f.get('reason')}{_peer(f)}"
            + (" (again: swept once more)" if f.get("resweep") else "")
        ),
        "kill.started": lambda: f"kill started, {f.get('sweeps')} sweep(s) planned",
        "kill.resumed": lambda: f"kill RESUMED after a restart ({f.get('pending_orders')} pending)",
        "cancel_all.sent": lambda: f"cancel_all sent {where}",
        "cancel_all.accepted": lambda: (
            f"cancel_all answered {where}: {f.get('order_count')} order(s)"
        ),
        "cancel_all.failed": lambda: (
            f"cancel_all FAILED {where}: {f.get('error')}"
            + (f" HTTP {f['http_status']}" if f.get("http_status") else "")
            + (" (outcome unknown)" if f.get("outcome_unknown") else "")
        ),
        "exchange.rejected": lambda: (
            f"STUCK: venue rejected {f.get('endpoint')} {where}: "
            f"HTTP {f.get('http_status')} {f.get('message')!r} (retry in {f.get('retry_in')} s)"
        ),
        "kill.stuck": lambda: f"kill STUCK: {f.get('why') or f.get('message')}",
        "kill.unstuck": lambda: (
            f"unstuck {where}: cancel_all accepted after {f.get('attempts')} attempts"
        ),
        "flat.leftover": lambda: (
            f"LEFTOVER {where}: {len(f.get('order_ids') or [])} open order(s) "
            "no answer had named, swept again"
        ),
        "flat.recovered": lambda: (
            f"found by listing {where}: {len(f.get('order_ids') or [])} order(s)"
        ),
        "flat.not_proven": lambda: f"NOT flat {where}",
        "kill.flat": lambda: "FLAT: every target listed no open order",
        "kill.completed": lambda: f"completed: {_counts(f)}",
        "kill.classified": lambda: f"classified: {_counts(f)}",
        "kill.exposure": lambda: f"positions read: {len(f.get('positions') or [])} open",
        "kill.abandoned": lambda: f"ABANDONED ({f.get('why')})",
        "kill.interrupted": lambda: "interrupted by a stop (resumed at the next start)",
        "halt.stopped": lambda: f"halted {', '.join(f.get('units') or [])}",
        "halt.failed": lambda: f"HALT FAILED {f.get('unit')}: {f.get('problem')}",
        "flatten.sent": lambda: f"flatten {f.get('symbol')}: {f.get('side')} {f.get('quantity')}",
        "flatten.done": lambda: f"flattened {f.get('symbol')} ({f.get('filled_quantity')})",
        "flatten.failed": lambda: f"FLATTEN FAILED {f.get('symbol')}",
        "flatten.rejected": lambda: f"FLATTEN REJECTED {f.get('symbol')}: {f.get('message')}",
        "flatten.refused": lambda: f"flatten REFUSED {f.get('symbol')} (over max_notional)",
        "guard.swept": lambda: (
            f"guard swept {where}: {len(f.get('order_ids') or [])} order(s) "
            "found open while tripped"
        ),
        "switch.reset": lambda: (
            "RESET"
            + _peer(f)
            + (f": {f['reason']!r}" if f.get("reason") else "")
            + (" (forced)" if f.get("force") else "")
        ),
        "reset.pending": lambda: f"reset approval 1 of 2{_peer(f)}",
        "order.unconfirmed": lambda: (
            f"order {f.get('order_id')} UNCONFIRMED ({f.get('last_status')})"
        ),
        "order.not_found": lambda: f"order {f.get('order_id')} unknown to the venue",
    }
    text = table.get(e.event)
    return None if text is None else text()


def _positions(kill: KillSummary) -> tuple[str, list[dict[str, Any]] | None]:
    exposure = kill.last("kill.exposure")
    summary = kill.summary or {}
    if exposure is None:
        left = summary.get("positions_open")
        return ("not read by this version" if left is None else f"{left} open"), None
    positions = exposure.fields.get("positions") or []
    return f"{len(positions)} open", positions


def report_text(kill: KillSummary, *, partial: bool = False) -> str:
    s = kill.summary or {}
    out: list[str] = [f"Kill {kill.kill_id}"]
    trig = kill.first("trigger.fired")
    who = _peer(trig.fields) if trig else ""
    out.append(f"  trigger     {kill.source}: {kill.reason}{who}")
    out.append(f"  started     {_when(kill.started_at)}")
    first = kill.first("cancel_all.sent")
    if first is not None:
        out.append(f"  first cancel_all  {_offset(kill, _wall(first)).strip()} s")
    if s.get("flat_ms") is not None:
        out.append(f"  flat        +{s['flat_ms'] / 1000:.3f} s")
    if kill.completed_at is None:
        out.append(
            "  completed   NO: the kill is unfinished (it resumes at the daemon's next start)"
        )
    elif s.get("abandoned"):
        out.append(f"  ABANDONED   {_when(kill.completed_at)} ({s.get('why')})")
    else:
        out.append(f"  completed   +{(s.get('duration_ms') or 0) / 1000:.3f} s")
    flat = "FLAT (every target listed no open order)" if s.get("flat") else "NOT proven flat"
    out.append(f"  outcome     {_counts(s)}; {s.get('leftover', 0)} leftover(s); {flat}")
    shown, positions = _positions(kill)
    out.append(f"  positions   {shown}")
    for p in positions or []:
        out.append(
            f"              {p.get('symbol')} {p.get('side')} {p.get('size')}"
            f" (notional {_num(p.get('notional'))}, unrealised {_num(p.get('unrealised_pnl'))})"
        )
    reset = _reset(kill)
    if reset is None:
        out.append("  reset       not yet: the switch is still TRIPPED by this kill")
    else:
        by = _peer({"peer": reset["peer"]}) if reset["peer"] else " (who: not recorded)"
        why = f': "{reset["reason"]}"' if reset["reason"] else " (no reason given)"
        out.append(
            f"  reset       {_when(reset['at'])}{by}{why}{' FORCED' if reset['force'] else ''}"
        )
    # The trigger's own events are logged once its first requests are on the wire.
    out += [
        "",
        "Timeline (seconds after the trigger; the first cancel_all leaves before it is logged)",
    ]
    for e in kill.journal:
        line = _line(kill, e)
        if line is not None:
            out.append(f"  {_offset(kill, _wall(e))}  {line}")
    out += ["", "Sweeps"]
    for w in kill.sweeps:
        state = (
            f"answered (its last answer named {w.order_count} order(s))"
            if w.acked_at is not None
            else "NEVER answered"
        )
        notes = [
            n for n, on in (("leftover sweep", w.leftover), ("an answer was lost", w.lost)) if on
        ]
        rejected = sum(
            1 for e in kill.named("exchange.rejected")
            if e.fields.get("symbol") == w.symbol and e.fields.get("exchange") == w.exchange
        )  # fmt: skip
        if rejected:
            notes.append(f"stuck: rejected {rejected} time(s)")
        out.append(
            f"  {w.exchange} {w.symbol or '(all symbols)'}: {state}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    groups: dict[str, list[OrderLine]] = {}
    for o in kill.orders:
        groups.setdefault(outcome(o), []).append(o)
    out += ["", f"Orders ({len(kill.orders)}), by outcome"]
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        out.append(f"  {name} ({len(groups[name])})")
        for o in groups[name]:
            mark = "  LEFTOVER" if o.leftover else ""
            unit = f"{o.exchange} {o.symbol or '-'}"
            out.append(f"    {o.order_id}  {unit}  {o.status or '-'}  via {learned(o)}{mark}")
    partials = groups.get("partially filled", [])
    if partials:
        out += [
            "",
            f"Partial fills ({len(partials)}): each traded part of its size before the cancel"
            " landed",
        ]
        out += [f"  {o.order_id}  {o.symbol or '-'}" for o in partials]
    leftovers = [o for o in kill.orders if o.leftover]
    if leftovers:
        out += [
            "",
            f"Leftovers ({len(leftovers)}): found open by a listing, named by no cancel_all answer",
        ]
        out += [f"  {o.order_id}  {o.symbol or '-'}  -> {o.status or '-'}" for o in leftovers]
    out += ["", "Alerts"]
    if not kill.alerts:
        out.append("  none")
    for a in kill.alerts:
        state = (
            f"delivered {_when(a.delivered_at)} ({a.attempts} attempt(s))"
            if a.delivered_at is not None
            else f"NOT delivered yet ({a.attempts} attempt(s), last: {a.last_error or '-'})"
        )
        out.append(f"  {a.receiver}  {a.event} [{a.action}]  {a.dedup_key}  {state}")
    if partial:
        out += [
            "",
            "NOTE: the store was read without its write-ahead log: the newest records may be"
            " missing.",
        ]
    return "\n".join(out) + "\n"


def report_json(kill: KillSummary, *, partial: bool = False) -> dict[str, Any]:
    _shown, positions = _positions(kill)
    return {
        "kill_id": kill.kill_id,
        "trigger": {
            "source": kill.source,
            "reason": kill.reason,
            "peer": (kill.first("trigger.fired") or Entry("", "", {})).fields.get("peer"),
        },
        "started_at": kill.started_at,
        "completed_at": kill.completed_at,
        "summary": kill.summary,
        "positions": positions,
        "reset": _reset(kill),
        "timeline": [{"at": _wall(e), "event": e.event, **e.fields} for e in kill.journal],
        "sweeps": [
            {
                "exchange": w.exchange,
                "symbol": w.symbol,
                "acked_at": w.acked_at,
                "order_count": w.order_count,
                "leftover": w.leftover,
                "lost": w.lost,
            }
            for w in kill.sweeps
        ],
        "orders": [
            {
                "order_id": o.order_id,
                "exchange": o.exchange,
                "symbol": o.symbol,
                "status": o.status or None,
                "outcome": outcome(o),
                "learned": learned(o),
                "leftover": o.leftover,
                "updated_at": o.updated_at,
            }
            for o in kill.orders
        ],
        "alerts": [
            {
                "receiver": a.receiver,
                "event": a.event,
                "action": a.action,
                "dedup_key": a.dedup_key,
                "delivered_at": a.delivered_at,
                "attempts": a.attempts,
                "last_error": a.last_error,
            }
            for a in kill.alerts
        ],
        "partial_read": partial,
    }


def _history_row(kill: KillSummary) -> dict[str, Any]:
    s = kill.summary or {}
    reset = _reset(kill)
    return {
        "kill_id": kill.kill_id,
        "source": kill.source,
        "reason": kill.reason,
        "started_at": kill.started_at,
        "duration_ms": s.get("duration_ms"),
        "completed": kill.completed_at is not None,
        "abandoned": bool(s.get("abandoned")),
        **{k: s.get(k) for k in ("orders", *_COUNTS, "leftover", "flat")},
        "reset": reset,
    }


def history_json(kills: list[KillSummary]) -> list[dict[str, Any]]:
    return [_history_row(k) for k in kills]


def history_text(kills: list[KillSummary]) -> str:
    if not kills:
        return "No kill recorded in this state store.\n"
    columns = (("KILL", 16), ("SOURCE", 9), ("STARTED (UTC)", 19), ("TOOK", -8))
    numbers = (("ORDERS", -6), ("CANC", -5), ("FILL", -5), ("PART", -5), ("FLAT", 4))
    head = "  ".join(_cell(n, w) for n, w in (*columns, *numbers)) + "  RESET"
    out = [head]
    for k in kills:
        r = _history_row(k)
        took = "-" if r["duration_ms"] is None else f"{r['duration_ms'] / 1000:.1f}s"
        flat = "yes" if r["flat"] else ("-" if not r["completed"] else "NO")
        reset = r["reset"]
        if reset is None:
            shown = "not reset" if r["completed"] else "RUNNING/unfinished"
        else:
            peer = reset["peer"] or {}
            by = peer.get("user") or (f"uid {peer['uid']}" if "uid" in peer else None)
            shown = _when(reset["at"])[:19] + (f" by {by}" if by else "")
        if r["abandoned"]:
            shown = "ABANDONED; " + shown
        started = _when(k.started_at)[:19]
        counts = [r["orders"] or 0, r["cancelled"] or 0, r["filled"] or 0]
        counts.append(r["partially_filled"] or 0)
        cells = [k.kill_id, k.source, started, took, *counts, flat]
        widths = [w for _, w in (*columns, *numbers)]
        out.append(
            "  ".join(_cell(c, w) for c, w in zip(cells, widths, strict=True)) + f"  {shown}"
        )
    return "\n".join(out) + "\n"


def _cell(value: object, width: int) -> str:
    """Left-aligned in ``width``; a negative width right-aligns."""
    return f"{value!s:>{-width}}" if width < 0 else f"{value!s:<{width}}"


def _num(value: object) -> str:
    """A venue's decimal string, to cents (the JSON report keeps it exact)."""
    try:
        return f"{float(str(value)):,.2f}"
    except ValueError:
        return str(value)

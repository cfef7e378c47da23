"""What a receiver is sent: the event as JSON, a Slack message in words, or a PagerDuty
Events API v2 event (contract §16).  Pure functions of the alert; no I/O."""

from __future__ import annotations

import socket
from typing import Any

from killswitch.alerts.model import Action, Alert

__all__ = ["body", "words"]

_RESET_HINT = "the switch stays TRIPPED until an operator runs `killswitch reset --reason ...`"
_OUTCOMES = (
    ("cancelled", "cancelled"),
    ("filled", "filled"),
    ("partially_filled", "partially filled"),
    ("other", "ended otherwise"),
    ("unknown", "unknown to the venue"),
    ("unconfirmed", "NOT confirmed"),
    ("unclassified", "not yet classified"),
)


def _kill(alert: Alert) -> str:
    return f"kill {alert.kill_id}" if alert.kill_id else "the switch"


def _positions(fields: dict[str, Any]) -> str:
    if fields.get("exposure_read") is False:
        return "Positions could NOT be read: check them on the venue."
    left = fields.get("positions_open")
    if left is None:
        return "Positions were not reported: check them on the venue."
    if left == 0:
        return "No position is left open."
    return f"{left} position(s) left OPEN: close them (`killswitch flatten`) or hedge."


def _completed(alert: Alert) -> str:
    f = alert.fields
    counts = ", ".join(f"{f[k]} {label}" for k, label in _OUTCOMES if f.get(k))
    seconds = (f.get("duration_ms") or 0) / 1000
    head = (
        f"Kill {alert.kill_id} finished in {seconds:.1f} s "
        f"(trigger {f.get('source')}: {f.get('reason')}): "
        f"{f.get('orders', 0)} order(s){': ' + counts if counts else ''}."
    )
    if f.get("flat"):
        book = "The book is FLAT: every target lists no open order."
    else:
        book = "The book was NOT proven flat: orders may still be open on the venue."
    leftover = (
        f" {f['leftover']} leftover order(s) were found open and swept."
        if f.get("leftover")
        else ""
    )
    todo = "What to do: find out why it fired; " + _RESET_HINT + "."
    return f"{head} {book}{leftover} {_positions(f)} {todo}"


def words(alert: Alert) -> str:
    """The alert in plain words: what happened, what it means, what to do."""
    f, who = alert.fields, _kill(alert)
    host = socket.gethostname()
    if alert.event == "trigger.fired":
        text = (
            f"KILL SWITCH FIRED on {host}: trigger {f.get('source')} ({f.get('reason')}). "
            f"Every open order is being cancelled ({who}). "
            f"What to do: stop the trading process if it still runs; {_RESET_HINT}."
        )
    elif alert.event == "kill.completed":
        text = _completed(alert)
    elif alert.event == "kill.stuck":
        text = (
            f"{who.capitalize()} on {host} is STUCK: the venue refuses cancel_all "
            f"(HTTP {f.get('http_status')}: {f.get('why') or f.get('message')}). Orders may "
            "still be live. What to do: check the account on the venue; the switch keeps "
            "retrying; `killswitch reset --force` only once the orders are known gone."
        )
    elif alert.event == "kill.abandoned":
        text = (
            f"{who.capitalize()} on {host} was ABANDONED ({f.get('why')}): it was not proven "
            "complete, orders may still be live. What to do: check the account on the venue."
        )
    elif alert.event == "exchange.rejected":
        text = (
            f"The venue rejected {f.get('endpoint', 'a request')} from {host} "
            f"(HTTP {f.get('http_status')}: {f.get('message')}). What to do: check the "
            "account, the key and the symbol on the venue."
        )
    elif alert.event.startswith("store."):
        text = (
            f"The state store on {host} failed ({alert.event}: "
            f"{f.get('problem') or f.get('detail')}). The switch fails closed (TRIPPED). "
            "What to do: fix the disk or the file, then reset the switch."
        )
    elif alert.event == "guard.swept":
        ids = f.get("order_ids") or []
        text = (
            f"While tripped, the guard on {host} found {len(ids)} open order(s) on "
            f"{f.get('exchange')} {f.get('symbol') or ''} and cancelled them: something is "
            "STILL TRADING. What to do: stop the trading process."
        )
    elif alert.event == "halt.failed":
        text = (
            f"A kill on {host} could not stop trading unit {f.get('unit')} "
            f"({f.get('problem')}). What to do: stop it by hand."
        )
    elif alert.event == "sentinel.blind":
        text = (
            f"The sentinel on {host} lost its link to the bus: it cannot watch desk "
            f"{f.get('desk')} and will not fire. What to do: check NATS from {host}."
        )
    elif alert.event == "switch.reset":
        peer = f.get("peer") if isinstance(f.get("peer"), dict) else {}
        by = f" by {peer.get('user') or peer.get('uid')}" if peer else ""
        why = f": {f['reason']}" if f.get("reason") else ""
        text = f"The switch on {host} was reset (re-armed){by}{why}; {who} is closed."
    else:
        shown = {k: v for k, v in f.items() if k not in ("event", "level", "timestamp")}
        text = f"{alert.event} on {host}: " + ", ".join(f"{k}={v}" for k, v in shown.items())
    return text


def _pagerduty(alert: Alert, routing_key: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": alert.action.value,
        "dedup_key": alert.dedup_key,
    }
    if alert.action is Action.TRIGGER:
        summary = words(alert)
        event["payload"] = {
            "summary": summary if len(summary) <= 1024 else summary[:1021] + "...",
            "source": socket.gethostname(),
            "severity": alert.severity.value,
            "timestamp": alert.fields.get("timestamp"),
            "component": "killswitch",
            "class": alert.event,
            "custom_details": alert.fields,
        }
    return event


def body(alert: Alert, fmt: str, routing_key: str | None = None) -> dict[str, Any]:
    """The JSON document POSTed to a receiver of format ``fmt``."""
    if fmt == "slack":
        return {"text": words(alert)}
    if fmt == "pagerduty":
        assert routing_key is not None
        return _pagerduty(alert, routing_key)
    return {**alert.fields, "dedup_key": alert.dedup_key, "severity": alert.severity.value}

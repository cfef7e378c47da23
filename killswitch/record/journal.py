"""The journal of a kill: the events that tell its story, kept in the state store.

``killswitch report`` (contract §16) needs more than the kill's summary: the
trigger's peer, when the first ``cancel_all`` left, each sweep, leftover and
stuck spell, the positions, the halt, the reset and its reason.  Those are
all events already; :class:`Journal` is a log listener that keeps them, one
row each in a ``kill_events`` table of its own, written through the store's
writer thread (queued, never awaited on the loop).  An ``order.status`` is
kept only when a listing taught it (``via``): the order's last status itself
is in ``orders``.  A kill that repeats an event for hours (a venue rejecting
``cancel_all`` at a growing cadence) keeps its first :data:`PER_EVENT` rows
of that event, the last one noting that later ones are not kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from killswitch.store.state import StateStore

__all__ = ["JOURNAL_SCHEMA", "RECORDED", "Journal"]

JOURNAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kill_events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kill_id TEXT NOT NULL, at TEXT NOT NULL, event TEXT NOT NULL, fields TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS kill_events_by_kill ON kill_events (kill_id, id)",
)
RECORDED = frozenset(
    {
        "trigger.fired",
        "kill.started",
        "kill.resumed",
        "cancel_all.sent",
        "cancel_all.accepted",
        "cancel_all.failed",
        "exchange.rejected",
        "kill.stuck",
        "kill.unstuck",
        "flat.leftover",
        "flat.recovered",
        "flat.not_proven",
        "kill.flat",
        "kill.completed",
        "kill.classified",
        "kill.exposure",
        "kill.abandoned",
        "kill.interrupted",
        "order.status",
        "order.unconfirmed",
        "order.not_found",
        "halt.stopped",
        "halt.failed",
        "flatten.sent",
        "flatten.done",
        "flatten.failed",
        "flatten.rejected",
        "flatten.refused",
        "guard.swept",
        "switch.reset",
        "reset.pending",
    }
)
OF_LAST_KILL = frozenset({"switch.reset", "reset.pending", "guard.swept", "exchange.rejected"})
PER_EVENT = 50  # rows of one event name per kill ...
PER_ORDER_EVENT = 10_000  # ... but an order.status taught by a listing: one per order, like orders
_SKIP = frozenset({"event", "timestamp", "kill_id", "_record", "_from_structlog", "exc_info"})


class Journal:
    def __init__(self, store: StateStore, current_kill: Callable[[], str | None]) -> None:
        self._store = store
        self._current_kill = current_kill
        self._last_kill: str | None = None
        self._counts: dict[tuple[str, str], int] = {}
        self._open = False
        self.errors = 0

    def open(self, last_kill: str | None) -> None:
        """The store is open: create the table (queued first, before any row)."""

        def create(db: Any) -> None:
            for statement in JOURNAL_SCHEMA:
                db.execute(statement)

        self._store._call(create)
        self._last_kill = self._last_kill or last_kill
        self._open = True

    def listen(self, event: Mapping[str, Any]) -> None:
        """The log listener: one queued insert for an event of a kill; never raises."""
        try:
            kill_id = event.get("kill_id")
            if isinstance(kill_id, str):
                self._last_kill = kill_id
            name = event.get("event")
            if not self._open or name not in RECORDED:
                return
            if name == "order.status" and "via" not in event:
                return
            if not isinstance(kill_id, str):
                kill_id = self._current_kill()
                if kill_id is None and name in OF_LAST_KILL:
                    kill_id = self._last_kill
            if kill_id is None:
                return
            slot = (kill_id, str(name))
            seen = self._counts.get(slot, 0) + 1
            self._counts[slot] = seen
            limit = PER_ORDER_EVENT if name == "order.status" else PER_EVENT
            if seen > limit:
                return
            fields = {k: v for k, v in event.items() if k not in _SKIP}
            if seen == limit:
                fields["journal_note"] = f"later {name} events of this kill are not kept"
            self._store._write(
                "INSERT INTO kill_events (kill_id, at, event, fields) VALUES (?,?,?,?)",
                kill_id,
                str(event.get("timestamp", "")),
                name,
                json.dumps(fields, default=str),
            )
            if len(self._counts) > 10_000:  # a daemon that lives through many kills
                self._counts.clear()
        except Exception:  # the journal must never break the log call it rides on
            self.errors += 1

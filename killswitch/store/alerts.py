"""The alert queue's table in the state store (contract §16: queued durably before sending).

A table of its own, created on open (``CREATE TABLE IF NOT EXISTS``), written
through the store's one writer thread like every other record, so an alert
queued during a kill joins the kill's own batch and never waits for the disk
on the loop.  A row holds the receiver's *name*, never its URL or key; the
event's fields are stored as they were logged (already redacted).  A row is
pending until ``delivered_at`` is set; pending rows are sent again after a
restart.  Delivered rows stay as part of their kill's record (``killswitch
report``) and go with it (``store/retention.py``).
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from killswitch.store.state import StateStore

__all__ = ["ALERTS_SCHEMA", "AlertRow", "AlertTable"]

ALERTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,        -- the receiver's name (never its URL)
    dedup_key TEXT NOT NULL,       -- <kill_id or daemon>:<event>:<n>
    action TEXT NOT NULL,          -- "trigger", or PagerDuty's "resolve"
    event TEXT NOT NULL,
    kill_id TEXT,
    severity TEXT NOT NULL,
    fields TEXT NOT NULL,          -- the event as logged (redacted), JSON
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    last_error TEXT,
    UNIQUE (receiver, dedup_key, action)
);
CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (delivered_at, id);
CREATE INDEX IF NOT EXISTS alerts_by_kill ON alerts (kill_id);
"""

_COLUMNS = (
    "id, receiver, dedup_key, action, event, kill_id, severity, fields, created_at, attempts,"
    " delivered_at, last_error"
)


@dataclass(frozen=True)
class AlertRow:
    id: int
    receiver: str
    dedup_key: str
    action: str
    event: str
    kill_id: str | None
    severity: str
    fields: dict[str, Any]
    created_at: float
    attempts: int
    delivered_at: float | None
    last_error: str | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> AlertRow:
        fields = json.loads(row[7])
        rid, receiver, key, action, event, kill_id, severity = row[:7]
        created, attempts, delivered, error = row[8:]
        return cls(
            rid, receiver, key, action, event, kill_id, severity, fields,
            created, attempts, delivered, error,
        )  # fmt: skip


def rows(db: sqlite3.Connection, where: str, params: tuple[Any, ...] = ()) -> list[AlertRow]:
    """Alert rows matching ``where`` (oldest first), from any connection (also read-only)."""
    query = f"SELECT {_COLUMNS} FROM alerts WHERE {where} ORDER BY id"  # noqa: S608 (fixed text)
    return [AlertRow.of(r) for r in db.execute(query, params)]


class AlertTable:
    """The ``alerts`` table, through the store's writer thread."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def create(self) -> Future[None]:
        def run(db: sqlite3.Connection) -> None:
            for statement in ALERTS_SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

        return self.store._call(run)

    def insert(
        self,
        *,
        receiver: str,
        dedup_key: str,
        action: str,
        event: str,
        kill_id: str | None,
        severity: str,
        fields: dict[str, Any],
        created_at: float,
    ) -> Future[int | None]:
        """Queue one alert; resolves to its row id once committed (None: already queued)."""
        text = json.dumps(fields, default=str)

        def run(db: sqlite3.Connection) -> int | None:
            cursor = db.execute(
                "INSERT OR IGNORE INTO alerts (receiver, dedup_key, action, event, kill_id,"
                " severity, fields, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (receiver, dedup_key, action, event, kill_id, severity, text, created_at),
            )
            return cursor.lastrowid if cursor.rowcount else None

        return self.store._call(run)

    def delivered(
        self, receiver: str, dedup_key: str, action: str, at: float, attempts: int
    ) -> None:
        self.store._write(
            "UPDATE alerts SET delivered_at = ?, attempts = ?, last_error = NULL"
            " WHERE receiver = ? AND dedup_key = ? AND action = ?",
            at,
            attempts,
            receiver,
            dedup_key,
            action,
        )

    def failed(self, receiver: str, dedup_key: str, action: str, attempts: int, error: str) -> None:
        self.store._write(
            "UPDATE alerts SET attempts = ?, last_error = ?"
            " WHERE receiver = ? AND dedup_key = ? AND action = ?",
            attempts,
            error,
            receiver,
            dedup_key,
            action,
        )

    def remove(self, receiver: str, dedup_key: str, action: str) -> None:
        """A pending alert dropped to keep the queue bounded."""
        self.store._write(
            "DELETE FROM alerts WHERE receiver = ? AND dedup_key = ? AND action = ?",
            receiver,
            dedup_key,
            action,
        )

    def pending(self) -> list[AlertRow]:
        """Every alert not yet delivered (read at start, before anything is sent)."""
        return self.store._read(lambda db: rows(db, "delivered_at IS NULL"), [])

    def known_keys(self) -> list[tuple[str, str, str | None, str]]:
        """(receiver, dedup_key, kill_id, action) of every row: the numbering and the
        PagerDuty incidents a reset resolves continue across restarts."""
        return self.store._read(
            lambda db: list(db.execute("SELECT receiver, dedup_key, kill_id, action FROM alerts")),
            [],
        )

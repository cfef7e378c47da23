"""Read the record of kills from ``state.db`` without the daemon and without changing it.

The file is opened read-only (``mode=ro``): sqlite then writes nothing to the
database, and a WAL left by a daemon that died (or that still runs) is read,
so the newest records show.  Where even that is refused (a directory the
reader cannot write, so no ``-shm`` can be mapped), it falls back to
``immutable=1``, which reads the main file alone: a daemon's records still in
its WAL are then missing, and :attr:`RecordReader.partial` says so.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from killswitch.store.alerts import AlertRow, rows

__all__ = ["Entry", "KillSummary", "OrderLine", "RecordReader", "RecordUnavailable", "SweepLine"]


class RecordUnavailable(Exception):
    """The state store cannot be read (missing, unreadable, not a store)."""


@dataclass(frozen=True)
class Entry:
    """One event of a kill's journal."""

    at: str
    event: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class SweepLine:
    exchange: str
    symbol: str | None
    acked_at: float | None
    order_count: int | None
    leftover: bool
    lost: bool


@dataclass(frozen=True)
class OrderLine:
    order_id: str
    exchange: str
    symbol: str | None
    status: str
    updated_at: float
    first_polled_at: float | None
    leftover: bool
    via: str | None  # the listing that showed its last status, if one did


@dataclass
class KillSummary:
    kill_id: str
    source: str
    reason: str
    started_at: float
    completed_at: float | None
    summary: dict[str, Any] | None
    journal: list[Entry] = field(default_factory=list)
    sweeps: list[SweepLine] = field(default_factory=list)
    orders: list[OrderLine] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)

    def first(self, event: str) -> Entry | None:
        return next((e for e in self.journal if e.event == event), None)

    def last(self, event: str) -> Entry | None:
        return next((e for e in reversed(self.journal) if e.event == event), None)

    def named(self, event: str) -> list[Entry]:
        return [e for e in self.journal if e.event == event]


def _connect(path: Path, immutable: bool) -> sqlite3.Connection:
    mode = "immutable=1" if immutable else "mode=ro"
    db = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, timeout=2.0)
    db.execute("PRAGMA query_only=1")
    db.execute("SELECT count(*) FROM kills").fetchone()  # fails now if it is not a store
    return db


class RecordReader:
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise RecordUnavailable(f"no state store at {path}")
        self.path = path
        self.partial = False
        try:
            self._db = _connect(path, immutable=False)
        except sqlite3.Error:
            try:
                self._db = _connect(path, immutable=True)
            except sqlite3.Error as exc:
                raise RecordUnavailable(f"cannot read {path}: {exc}") from None
            self.partial = True
        self._tables = {
            r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }

    def close(self) -> None:
        self._db.close()

    def kills(self) -> list[KillSummary]:
        """Every kill, newest first, with its journal (for the reset) but not its orders."""
        found = [
            KillSummary(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None)
            for r in self._db.execute(
                "SELECT kill_id, source, reason, started_at, completed_at, summary FROM kills"
                " ORDER BY started_at DESC"
            )
        ]
        for kill in found:
            kill.journal = self._journal(kill.kill_id, ("switch.reset", "kill.abandoned"))
        return found

    def kill(self, kill_id: str | None) -> KillSummary | None:
        """The whole record of one kill (``None``: the newest); None if there is no such kill."""
        columns = "SELECT kill_id, source, reason, started_at, completed_at, summary FROM kills"
        if kill_id:
            row = self._db.execute(f"{columns} WHERE kill_id = ?", (kill_id,)).fetchone()
        else:
            row = self._db.execute(f"{columns} ORDER BY started_at DESC LIMIT 1").fetchone()
        if row is None:
            return None
        kill = KillSummary(
            row[0], row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else None
        )
        kill.journal = self._journal(kill.kill_id)
        via = {
            str(e.fields.get("order_id")): str(e.fields["via"])
            for e in kill.journal
            if e.event == "order.status" and "via" in e.fields
        }
        kill.sweeps = [
            SweepLine(ex, sym or None, acked, count, bool(left), bool(lost))
            for ex, sym, acked, count, left, lost in self._db.execute(
                "SELECT exchange, symbol, acked_at, order_count, leftover, lost FROM sweeps"
                " WHERE kill_id = ? ORDER BY exchange, symbol",
                (kill.kill_id,),
            )
        ]
        kill.orders = [
            OrderLine(oid, ex, sym or None, status, upd, polled, bool(left), via.get(oid))
            for oid, ex, sym, status, upd, polled, left in self._db.execute(
                "SELECT order_id, exchange, symbol, status, updated_at, first_polled_at, leftover"
                " FROM orders WHERE kill_id = ? ORDER BY rowid",
                (kill.kill_id,),
            )
        ]
        if "alerts" in self._tables:
            kill.alerts = rows(self._db, "kill_id = ?", (kill.kill_id,))
        return kill

    def _journal(self, kill_id: str, only: tuple[str, ...] | None = None) -> list[Entry]:
        if "kill_events" not in self._tables:
            return []
        query = "SELECT at, event, fields FROM kill_events WHERE kill_id = ?"
        params: tuple[Any, ...] = (kill_id,)
        if only:
            query += f" AND event IN ({','.join('?' * len(only))})"
            params += only
        return [
            Entry(at, event, json.loads(fields))
            for at, event, fields in self._db.execute(query + " ORDER BY id", params)
        ]

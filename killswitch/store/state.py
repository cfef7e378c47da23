"""The state store (contract §9): sqlite in WAL mode, written from one thread.

It records the latch, every kill with its trigger, every planned ``cancel_all``
sweep and whether the exchange acknowledged it, every order id returned with
its last status, and the send times of rate-limited requests.

Writes go through a single writer thread (``writer.py``), so nothing on
the path from a trigger to the first ``cancel_all`` waits for the disk.  Reads
happen at start-up, before the daemon serves anything.  A store that cannot be
opened or read fails closed (``file.py``): no exception, the latch reads
tripped, and the latch also lives in a marker file that a full disk cannot stop.
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from killswitch.store.file import StoreProblem
from killswitch.store.writer import StoreUnavailable, StoreWriter

__all__ = [
    "FlattenRecord",
    "KillRecord",
    "StateStore",
    "StoreProblem",
    "StoreUnavailable",
    "SweepRecord",
]

FLATTEN_OPEN = ("sending", "accepted", "unknown")
"""States of a close order whose outcome is not known yet (read the venue first)."""


@dataclass(frozen=True)
class FlattenRecord:
    """One close order a flatten sent (or was about to send)."""

    client_order_id: str
    kill_id: str
    exchange: str
    symbol: str
    side: str
    quantity: str
    sent_at: float
    state: str
    order_id: str | None


@dataclass(frozen=True)
class SweepRecord:
    exchange: str
    symbol: str | None
    acked: bool
    leftover: bool = False
    lost: bool = False


@dataclass
class KillRecord:
    kill_id: str
    source: str
    reason: str
    started_at: float
    completed_at: float | None = None
    summary: dict[str, Any] | None = None
    sweeps: list[SweepRecord] = field(default_factory=list)
    orders: dict[str, str] = field(default_factory=dict)
    first_polled: dict[str, float] = field(default_factory=dict)  # wall clock
    order_units: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    leftovers: set[str] = field(default_factory=set)


class StateStore(StoreWriter):
    """Durable state: the latch, kills, sweeps, orders and send times.  Construct, then
    :meth:`~killswitch.store.writer.StoreWriter.open`; every write is queued."""

    # ------------------------------------------------------------------ latch

    def set_latch(self, tripped: bool, kill_id: str | None = None) -> Future[None]:
        value = json.dumps({"tripped": tripped, "kill_id": kill_id})
        return self._write(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('latch', ?)", value, latch=tripped
        )

    def latch(self) -> tuple[bool, str | None]:
        """Tripped if the database or the latch marker says so; without a database, tripped."""
        if not self.persisting:
            return True, None
        row = self._read(
            lambda db: db.execute("SELECT value FROM meta WHERE key = 'latch'").fetchone(), None
        )
        data: dict[str, Any] = {"tripped": False} if row is None else json.loads(row[0])
        return bool(data["tripped"]) or self.marker.tripped(), data.get("kill_id")

    # ------------------------------------------------------------------ kills

    def start_kill(
        self,
        kill_id: str,
        source: str,
        reason: str,
        started_at: float,
        sweeps: list[tuple[str, str | None]],
    ) -> Future[None]:
        """Record a kill, the latch and the sweeps it plans, atomically."""

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO kills (kill_id, source, reason, started_at) VALUES (?,?,?,?)",
                (kill_id, source, reason, started_at),
            )
            db.executemany(
                "INSERT OR IGNORE INTO sweeps (kill_id, exchange, symbol) VALUES (?,?,?)",
                [(kill_id, ex, sym or "") for ex, sym in sweeps],
            )
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('latch', ?)",
                (json.dumps({"tripped": True, "kill_id": kill_id}),),
            )

        return self._call(run, latch=True)

    def sweep_acked(
        self,
        kill_id: str,
        exchange: str,
        symbol: str | None,
        order_ids: list[str],
        acked_at: float,
    ) -> Future[None]:
        """Record an acknowledged ``cancel_all`` and the ids it returned, atomically."""

        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO orders "
                "(order_id, kill_id, exchange, symbol, status, updated_at) "
                "VALUES (?,?,?,?,'',?)",
                [(oid, kill_id, exchange, symbol or "", acked_at) for oid in order_ids],
            )
            db.execute(
                "UPDATE sweeps SET acked_at = ?, order_count = ? "
                "WHERE kill_id = ? AND exchange = ? AND symbol = ?",
                (acked_at, len(order_ids), kill_id, exchange, symbol or ""),
            )

        return self._call(run)

    def sweep_lost(self, kill_id: str, exchange: str, symbol: str | None) -> Future[None]:
        """A ``cancel_all`` whose answer was lost (5xx, timeout): the cancel may have happened."""
        return self._write(
            "UPDATE sweeps SET lost = 1 WHERE kill_id = ? AND exchange = ? AND symbol = ?",
            kill_id,
            exchange,
            symbol or "",
        )

    def leftover_sweep(
        self, kill_id: str, exchange: str, symbol: str, order_ids: list[str], at: float
    ) -> Future[None]:
        """Leftovers a listing found, and the sweep of their symbol they need, atomically."""

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO sweeps (kill_id, exchange, symbol, leftover) VALUES (?,?,?,1) "
                "ON CONFLICT (kill_id, exchange, symbol) "
                "DO UPDATE SET acked_at = NULL, leftover = 1",
                (kill_id, exchange, symbol),
            )
            db.executemany(
                "INSERT INTO orders "
                "(order_id, kill_id, exchange, symbol, status, updated_at, leftover) "
                "VALUES (?,?,?,?,'',?,1) "
                "ON CONFLICT (kill_id, order_id) DO UPDATE SET leftover = 1",
                [(oid, kill_id, exchange, symbol, at) for oid in order_ids],
            )

        return self._call(run)

    def orders_found(
        self, kill_id: str, exchange: str, symbol: str, order_ids: list[str], at: float
    ) -> Future[None]:
        """Orders of this kill that a listing found (e.g. cancelled by a lost answer)."""

        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO orders "
                "(order_id, kill_id, exchange, symbol, status, updated_at) "
                "VALUES (?,?,?,?,'',?)",
                [(oid, kill_id, exchange, symbol, at) for oid in order_ids],
            )

        return self._call(run)

    def order_status(self, kill_id: str, order_id: str, status: str, at: float) -> Future[None]:
        """The order's latest status; the first one also stamps ``first_polled_at``."""
        return self._write(
            "UPDATE orders SET status = ?, updated_at = ?, "
            "first_polled_at = COALESCE(first_polled_at, ?) WHERE kill_id = ? AND order_id = ?",
            status,
            at,
            at,
            kill_id,
            order_id,
        )

    def complete_kill(
        self, kill_id: str, completed_at: float, summary: dict[str, Any]
    ) -> Future[None]:
        return self._write(
            "UPDATE kills SET completed_at = ?, summary = ? WHERE kill_id = ?",
            completed_at,
            json.dumps(summary),
            kill_id,
        )

    def _kill(self, db: sqlite3.Connection, row: tuple[Any, ...]) -> KillRecord:
        kill = KillRecord(
            kill_id=row[0],
            source=row[1],
            reason=row[2],
            started_at=row[3],
            completed_at=row[4],
            summary=json.loads(row[5]) if row[5] else None,
        )
        for exchange, symbol, acked_at, leftover, lost in db.execute(
            "SELECT exchange, symbol, acked_at, leftover, lost FROM sweeps WHERE kill_id = ? "
            "ORDER BY exchange, symbol",
            (kill.kill_id,),
        ):
            kill.sweeps.append(
                SweepRecord(
                    exchange, symbol or None, acked_at is not None, bool(leftover), bool(lost)
                )
            )
        for order_id, status, first_polled_at, exchange, symbol, leftover in db.execute(
            "SELECT order_id, status, first_polled_at, exchange, symbol, leftover FROM orders "
            "WHERE kill_id = ? ORDER BY rowid",
            (kill.kill_id,),
        ):
            kill.orders[order_id] = status
            kill.order_units[order_id] = (exchange, symbol or None)
            if leftover:
                kill.leftovers.add(order_id)
            if first_polled_at is not None:
                kill.first_polled[order_id] = first_polled_at
        return kill

    def unfinished_kill(self) -> KillRecord | None:
        """The newest kill that never logged ``kill.completed``, with its sweeps and orders."""

        def fn(db: sqlite3.Connection) -> KillRecord | None:
            row = db.execute(
                "SELECT kill_id, source, reason, started_at, completed_at, summary FROM kills "
                "WHERE completed_at IS NULL ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
            return None if row is None else self._kill(db, row)

        return self._read(fn, None)

    def last_kill(self) -> KillRecord | None:
        def fn(db: sqlite3.Connection) -> KillRecord | None:
            row = db.execute(
                "SELECT kill_id, source, reason, started_at, completed_at, summary FROM kills "
                "ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
            return None if row is None else self._kill(db, row)

        return self._read(fn, None)

    # ------------------------------------------------------------------ positions (§12)

    def exposure(self, kill_id: str, read_at: float, record: dict[str, Any]) -> Future[None]:
        """The positions a kill left, and what its flatten did (replaced as it goes)."""
        return self._write(
            "INSERT OR REPLACE INTO exposures (kill_id, read_at, record) VALUES (?,?,?)",
            kill_id,
            read_at,
            json.dumps(record),
        )

    def last_exposure(self) -> dict[str, Any] | None:
        """The newest exposure record (start-up: ``GET /status`` shows it again)."""
        row = self._read(
            lambda db: db.execute(
                "SELECT record FROM exposures ORDER BY read_at DESC LIMIT 1"
            ).fetchone(),
            None,
        )
        return None if row is None else dict(json.loads(row[0]))

    def flatten_sending(self, record: FlattenRecord) -> Future[None]:
        """A close order about to leave: await this before sending it (crash rule)."""
        return self._write(
            "INSERT INTO flattens (client_order_id, kill_id, exchange, symbol, side, quantity, "
            "sent_at, state, order_id, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            record.client_order_id,
            record.kill_id,
            record.exchange,
            record.symbol,
            record.side,
            record.quantity,
            record.sent_at,
            record.state,
            record.order_id,
            record.sent_at,
        )

    def flatten_update(
        self,
        client_order_id: str,
        state: str,
        at: float,
        *,
        order_id: str | None = None,
        detail: str | None = None,
    ) -> Future[None]:
        return self._write(
            "UPDATE flattens SET state = ?, order_id = COALESCE(?, order_id), "
            "detail = COALESCE(?, detail), updated_at = ? WHERE client_order_id = ?",
            state,
            order_id,
            detail,
            at,
            client_order_id,
        )

    def flatten_open(self) -> Future[list[FlattenRecord]]:
        """Close orders whose outcome is not known yet, oldest first (await it)."""

        def fn(db: sqlite3.Connection) -> list[FlattenRecord]:
            rows = db.execute(
                "SELECT client_order_id, kill_id, exchange, symbol, side, quantity, sent_at, "
                "state, order_id FROM flattens WHERE state IN (?,?,?) ORDER BY sent_at",
                FLATTEN_OPEN,
            ).fetchall()
            return [FlattenRecord(*row) for row in rows]

        return self._call(fn, read=True)

    # ------------------------------------------------------------------ rate-limit log

    def record_send(self, endpoint: str, sent_at: float) -> Future[None]:
        return self._write("INSERT INTO sends (endpoint, sent_at) VALUES (?, ?)", endpoint, sent_at)

    def recent_sends(self, endpoint: str, since: float) -> list[float]:
        """Wall-clock send times of ``endpoint`` at or after ``since``; prunes older rows."""

        def fn(db: sqlite3.Connection) -> list[float]:
            db.execute("DELETE FROM sends WHERE endpoint = ? AND sent_at < ?", (endpoint, since))
            rows = db.execute(
                "SELECT sent_at FROM sends WHERE endpoint = ? AND sent_at >= ? ORDER BY sent_at",
                (endpoint, since),
            ).fetchall()
            return [r[0] for r in rows]

        return self._read(fn, [])

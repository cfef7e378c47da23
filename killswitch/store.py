"""The state store (contract §9): sqlite in WAL mode, written from one thread.

It records the latch, every kill with its trigger, every planned ``cancel_all``
sweep and whether the exchange acknowledged it, every order id returned with
its last status, and the send times of rate-limited requests.

Writes go through a single writer thread, so nothing on the path from a
trigger to the first ``cancel_all`` waits for the disk: the caller enqueues
and moves on; ``flush()`` waits when it matters (shutdown, tests).  Critical
records are committed with ``synchronous=FULL``.  Reads happen at start-up,
before the daemon serves anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["KillRecord", "StateStore", "SweepRecord"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kills (
    kill_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    started_at REAL NOT NULL,
    completed_at REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS sweeps (
    kill_id TEXT NOT NULL,
    exchange TEXT NOT NULL,
    symbol TEXT NOT NULL,          -- '' for an unscoped cancel_all
    acked_at REAL,
    order_count INTEGER,
    PRIMARY KEY (kill_id, exchange, symbol)
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL,
    kill_id TEXT NOT NULL,
    exchange TEXT NOT NULL,
    symbol TEXT NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL,
    first_polled_at REAL,
    PRIMARY KEY (kill_id, order_id)
);
CREATE TABLE IF NOT EXISTS sends (
    endpoint TEXT NOT NULL,
    sent_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_by_endpoint ON sends (endpoint, sent_at);
"""


@dataclass(frozen=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]


@dataclass(frozen=True)
class SweepRecord:
    exchange: str
    symbol: str | None
    acked: bool


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


class StateStore:
    """Durable state.  Construct, then :meth:`open`; every write is queued.

    One writer thread drains the queue: everything queued while it was busy is
    committed in one transaction (one fsync), each operation under its own
    savepoint so a failing one loses nothing else.  So the store keeps up with
    any rate of status updates, and a record reaches the disk within about
    ``coalesce`` seconds and one fsync of being queued.  A write's future
    resolves once it is committed.

    The writer waits ``coalesce`` seconds after the first write of a batch
    before committing: a kill queues its first records on the trigger path,
    and a writer that woke at once would take the GIL (and a core) from the
    loop thread while it builds and sends the first ``cancel_all`` (measured
    by ``python -m bench``: about 1 ms of the trigger → ``cancel_all`` latency).
    """

    def __init__(
        self,
        path: Path,
        on_error: Callable[[BaseException], None] | None = None,
        *,
        coalesce: float = 0.005,
    ) -> None:
        self.path = path
        self.on_error = on_error  # called from the writer thread
        self.coalesce = coalesce
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self.errors: list[BaseException] = []
        self.batches = 0

    # ------------------------------------------------------------------ plumbing

    def open(self) -> None:
        """Create or open the database and start the writer (blocking; call before serving)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db
        with contextlib.suppress(OSError):  # not ours to chmod (e.g. a bind mount)
            self.path.chmod(0o600)
        self._thread = threading.Thread(target=self._work, name="killswitch-store", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        db = self._db
        assert db is not None
        while True:
            first = self._queue.get()
            if first is None:
                return
            time.sleep(self.coalesce)  # let the loop thread send first; batch what follows
            batch = [first]
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(db, batch)
            if stop:
                return

    def _commit(self, db: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                db.execute("SAVEPOINT op")
                try:
                    results.append((op, op.fn(db), None))
                    db.execute("RELEASE op")
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    results.append((op, None, exc))
            db.execute("COMMIT")
        except BaseException as exc:  # the commit itself failed: every op in it failed
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            results = [(op, None, exc) for op in batch]
        self.batches += 1
        for op, value, error in results:
            if error is None:
                op.future.set_result(value)
            else:
                self.errors.append(error)
                op.future.set_exception(error)
                if self.on_error is not None:
                    self.on_error(error)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        if self._thread is None:
            raise RuntimeError("the state store is not open")
        future: Future[T] = Future()
        self._queue.put(_Op(fn, future))
        return future

    def _write(self, sql: str, *params: object) -> Future[None]:
        def run(db: sqlite3.Connection) -> None:
            db.execute(sql, params)

        return self._call(run)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._call(fn).result()

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await asyncio.wrap_future(self._call(lambda db: None))

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the database."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ latch

    def set_latch(self, tripped: bool, kill_id: str | None = None) -> Future[None]:
        value = json.dumps({"tripped": tripped, "kill_id": kill_id})
        return self._write("INSERT OR REPLACE INTO meta (key, value) VALUES ('latch', ?)", value)

    def latch(self) -> tuple[bool, str | None]:
        row = self._read(
            lambda db: db.execute("SELECT value FROM meta WHERE key = 'latch'").fetchone()
        )
        if row is None:
            return False, None
        data = json.loads(row[0])
        return bool(data["tripped"]), data.get("kill_id")

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

        return self._call(run)

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
        for exchange, symbol, acked_at in db.execute(
            "SELECT exchange, symbol, acked_at FROM sweeps WHERE kill_id = ? "
            "ORDER BY exchange, symbol",
            (kill.kill_id,),
        ):
            kill.sweeps.append(SweepRecord(exchange, symbol or None, acked_at is not None))
        for order_id, status, first_polled_at in db.execute(
            "SELECT order_id, status, first_polled_at FROM orders WHERE kill_id = ?",
            (kill.kill_id,),
        ):
            kill.orders[order_id] = status
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

        return self._read(fn)

    def last_kill(self) -> KillRecord | None:
        def fn(db: sqlite3.Connection) -> KillRecord | None:
            row = db.execute(
                "SELECT kill_id, source, reason, started_at, completed_at, summary FROM kills "
                "ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
            return None if row is None else self._kill(db, row)

        return self._read(fn)

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

        return self._read(fn)

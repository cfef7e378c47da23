"""The state store's writer: one thread, a queue, batched transactions, fail closed.

Writes go through a single writer thread, so nothing on the path from a
trigger to the first ``cancel_all`` waits for the disk: the caller enqueues
and moves on; ``flush()`` waits when it matters (shutdown, tests).  Records
are committed with ``synchronous=FULL``.  :class:`~killswitch.store.state.StateStore`
composes it and writes the records through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from killswitch.store.file import LatchMarker, StoreProblem, open_database

__all__ = ["COALESCE", "StoreUnavailable", "StoreWriter", "coalesce_from_env"]

T = TypeVar("T")

COALESCE = 0.005
"""Seconds the writer waits after the first write of a batch (see :class:`StoreWriter`)."""
TEST_COMMIT_DELAY_ENV = "KILLSWITCH_TEST_COMMIT_DELAY"


def coalesce_from_env() -> float:
    """:data:`COALESCE`, or (tests only) the seconds in ``$KILLSWITCH_TEST_COMMIT_DELAY``:
    a wide window from a kill's first request to its first commit, so that a test can
    crash the daemon at any point of it on purpose, not by luck."""
    try:
        return max(COALESCE, float(os.environ.get(TEST_COMMIT_DELAY_ENV, "")))
    except ValueError:
        return COALESCE


@dataclass(frozen=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any] | None  # None: nothing for the database
    future: Future[Any]
    latch: bool | None = None  # also set the latch marker (before the transaction)
    read: bool = False  # needs an answer: fails, instead of being dropped, without a database
    after: Callable[[], Any] | None = None  # run on the writer thread after the transaction


class StoreUnavailable(Exception):
    """A read from a store that has no database (it could not be opened)."""


class StoreWriter:
    """The queue and the thread a :class:`~killswitch.store.state.StateStore` writes through.

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
        on_error: Callable[[BaseException, int], None] | None = None,
        *,
        coalesce: float = COALESCE,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.on_error = on_error  # (error, writes lost), from the writer thread, once per batch
        self.on_change = on_change  # health() changed, from the writer thread
        self.coalesce = coalesce
        self.marker = LatchMarker(path)
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self.problem: StoreProblem | None = None  # the store as found could not be used
        self.write_error: str | None = None  # writes were lost (until acknowledge())
        self._last_batch_ok = True
        self.write_failures = 0  # writes lost, in all
        self.dropped = 0  # writes not even tried: no database
        self.batches = 0

    # ------------------------------------------------------------------ plumbing

    def open(self) -> StoreProblem | None:
        """Open (or create) the database and start the writer; never raises.

        A database that cannot be opened, or fails its checks, is a
        :class:`StoreProblem` (returned and kept in :attr:`problem`): a corrupt
        file is moved aside and replaced by a fresh one; without a database the
        writer still runs, drops the writes and keeps the latch marker.  Either
        way the caller fails closed.
        """
        self._db, self.problem = open_database(self.path)
        if self._db is not None:
            try:
                self.marker.intents.open()
            except OSError as exc:
                self.write_failures += 1
                if self.on_error is not None:
                    self.on_error(exc, 1)
        self._thread = threading.Thread(target=self._work, name="killswitch-store", daemon=True)
        self._thread.start()
        return self.problem

    @property
    def persisting(self) -> bool:
        """True while writes reach a database."""
        return self._db is not None

    def health(self) -> dict[str, Any]:
        """``GET /status`` ``store``: ``{"ok": true}`` or ``{"ok": false, "problem": ...}``."""
        if self.problem is not None:
            return {
                "ok": False,
                "problem": self.problem.describe(),
                "path": self.problem.path,
                "persisting": self.persisting,
            }
        if self.write_error is not None:
            return {"ok": False, "problem": f"write failed: {self.write_error}", "persisting": True}
        return {"ok": True}

    def retry(self) -> Future[bool]:
        """Try again to open a database that could not be opened (on the writer thread).

        Resolves to True if the store now persists; :attr:`problem` is then cleared.
        """

        def run() -> bool:
            if self._db is None:
                self._db, problem = open_database(self.path)
                self.problem = None if self._db is not None else problem
                if self._db is not None:
                    self._changed()
            return self._db is not None

        return self.call(None, after=run)

    def acknowledge(self) -> None:
        """An operator reset the switch: a problem the store recovered from is no longer news.

        (A lost write stays reported until then, even if later writes succeed:
        what it lost is still lost.)
        """
        if not self.persisting or not self._last_batch_ok:
            return
        if self.problem is not None or self.write_error is not None:
            self.problem = None
            self.write_error = None
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            if not first.read:  # let the loop thread send first; batch what follows
                time.sleep(self.coalesce)
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
            try:
                self._commit(batch)
            except Exception as exc:  # a bug must not leave callers waiting forever
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc)
                if self.on_error is not None:
                    self.on_error(exc, len(batch))
            if stop:
                break
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _markers(self, batch: list[_Op]) -> None:
        """The latch marker first, outside the transaction: it needs no data block."""
        wanted = [op.latch for op in batch if op.latch is not None]
        if not wanted:
            return
        try:
            self.marker.set(wanted[-1])
        except OSError as exc:
            self.write_failures += 1
            # Without a database the directory is usually what failed: already reported.
            if self.on_error is not None and self._db is not None:
                self.on_error(exc, 1)

    def _commit(self, batch: list[_Op]) -> None:
        self._markers(batch)
        db = self._db
        if db is None:
            for op in batch:
                if op.read and op.fn is not None:
                    op.future.set_exception(StoreUnavailable(str(self.path)))
                elif op.after is None:
                    self.dropped += op.fn is not None
                    op.future.set_result(None)
        else:
            self._transaction(db, [op for op in batch if op.fn is not None])
        for op in batch:
            if op.after is not None:
                try:
                    op.future.set_result(op.after())
                except Exception as exc:
                    op.future.set_exception(exc)
            elif op.fn is None and not op.future.done():
                op.future.set_result(None)

    def _transaction(self, db: sqlite3.Connection, ops: list[_Op]) -> None:
        if not ops:
            return
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in ops:
                assert op.fn is not None
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
            results = [(op, None, exc) for op in ops]
        self.batches += 1
        failed = [error for _, _, error in results if error is not None]
        for op, value, error in results:
            if error is None:
                op.future.set_result(value)
            else:
                op.future.set_exception(error)
        self._last_batch_ok = not failed
        if failed:
            was = self.write_error
            self.write_failures += len(failed)
            self.write_error = str(failed[-1])
            if self.on_error is not None:
                self.on_error(failed[-1], len(failed))
            if was is None:
                self._changed()

    def call(
        self,
        fn: Callable[[sqlite3.Connection], T] | None,
        *,
        read: bool = False,
        latch: bool | None = None,
        after: Callable[[], T] | None = None,
    ) -> Future[T]:
        if self._thread is None:
            raise RuntimeError("the state store is not open")
        future: Future[T] = Future()
        self._queue.put(_Op(fn, future, latch=latch, read=read, after=after))
        return future

    def write(self, sql: str, *params: object, latch: bool | None = None) -> Future[None]:
        def run(db: sqlite3.Connection) -> None:
            db.execute(sql, params)

        return self.call(run, latch=latch)

    def read(self, fn: Callable[[sqlite3.Connection], T], default: T) -> T:
        """Run ``fn`` on the writer thread and wait; ``default`` without a database."""
        try:
            return self.call(fn, read=True).result()
        except StoreUnavailable:
            return default

    async def flush(self) -> None:
        """Wait until every write queued so far is committed (or dropped, without a database)."""
        await asyncio.wrap_future(self.call(None))

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the database."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.marker.intents.close()

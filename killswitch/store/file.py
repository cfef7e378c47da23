"""The state store's files on disk: open or fail closed, and the latch marker (contract §9).

:func:`open_database` opens (or creates) the sqlite file and checks that it is
this program's: it reads as a database, passes ``PRAGMA quick_check``, and
every table has the columns the store uses.  A file that fails those checks is
**corrupt**: it is moved aside (``state.db.corrupt-<UTC time>``, with its
``-wal``/``-shm``) when the directory allows it, and a fresh database takes its
place.  A file that cannot be opened at all (directory rights, read-only disk,
a path under a regular file) is **unavailable**.  Either way the caller gets a
:class:`StoreProblem` instead of an exception, and fails closed.

The latch has a second home, :class:`LatchMarker`: an empty file next to the
database that exists while the switch is tripped.  Creating an empty file
needs an inode and a directory entry but no data block, so it succeeds on a
full disk where the sqlite commit fails (checked on a full tmpfs by
``tests/test_e2e_store.py``, and true of ext4, whose inodes are allocated
apart from data blocks).  The latch is tripped if either home says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCHEMA", "LatchMarker", "StoreProblem", "Unusable", "connect", "open_database"]

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS exposures (  -- contract §12: the positions a kill left
    kill_id TEXT PRIMARY KEY,
    read_at REAL NOT NULL,
    record TEXT NOT NULL             -- JSON: positions, unreadable symbols, flatten outcomes
);
CREATE TABLE IF NOT EXISTS flattens (   -- every close order, durable before it is sent
    client_order_id TEXT PRIMARY KEY,
    kill_id TEXT NOT NULL,
    exchange TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    sent_at REAL NOT NULL,
    state TEXT NOT NULL,             -- sending, accepted, unknown; then done, rejected, ...
    order_id TEXT,
    detail TEXT,
    updated_at REAL NOT NULL
);
"""

# Columns added after 0.1 (the flat proof): (table, column, definition).  A state.db
# written by 0.1 gains them on open; each has a default, so old rows read as before.
ADDED_COLUMNS = (
    ("sweeps", "leftover", "INTEGER NOT NULL DEFAULT 0"),  # a flat proof's sweep again
    ("sweeps", "lost", "INTEGER NOT NULL DEFAULT 0"),  # an answer was lost (outcome unknown)
    ("orders", "leftover", "INTEGER NOT NULL DEFAULT 0"),  # found open, named by no answer
)


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a 0.1 state.db lacks (idempotent)."""
    for table, column, definition in ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


_COLUMNS = {
    "meta": {"key", "value"},
    "kills": {"kill_id", "source", "reason", "started_at", "completed_at", "summary"},
    "sweeps": {"kill_id", "exchange", "symbol", "acked_at", "order_count"},
    "orders": {
        "order_id",
        "kill_id",
        "exchange",
        "symbol",
        "status",
        "updated_at",
        "first_polled_at",
    },
    "sends": {"endpoint", "sent_at"},
}

# sqlite's primary result codes that mean "the file's content is bad", not "cannot get at it".
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


@dataclass(frozen=True)
class StoreProblem:
    """Why the store as found could not be used."""

    kind: str  # "corrupt" or "unavailable"
    path: str
    problem: str
    moved_to: str | None = None  # where a corrupt file went

    def describe(self) -> str:
        text = f"{self.kind}: {self.problem}"
        return text if self.moved_to is None else f"{text} (moved aside to {self.moved_to})"


class Unusable(Exception):
    """The database file cannot be used; ``kind`` is ``corrupt`` or ``unavailable``."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind = kind
        self.problem = problem


def _why_not_writable(directory: Path) -> str | None:
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only filesystem"
    except OSError as exc:
        return exc.strerror
    if not os.access(directory, os.W_OK | os.X_OK):
        return "directory not writable"
    return None


def _classify(exc: BaseException, path: Path) -> Unusable:
    if isinstance(exc, Unusable):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CORRUPT_CODES:
            return Unusable("corrupt", str(exc))
        why = _why_not_writable(path.parent)
        return Unusable("unavailable", str(exc) if why is None else f"{exc} ({why})")
    if isinstance(exc, OSError):
        return Unusable("unavailable", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    return Unusable("corrupt", f"{type(exc).__name__}: {exc}")


def _check(db: sqlite3.Connection) -> None:
    result = db.execute("PRAGMA quick_check").fetchone()
    if result is None or result[0] != "ok":
        raise Unusable("corrupt", f"integrity check failed: {result[0] if result else 'no answer'}")
    db.executescript(SCHEMA)
    for table, wanted in _COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = sorted(wanted - have)
        if missing:
            raise Unusable("corrupt", f"wrong schema: table {table} lacks {', '.join(missing)}")
    _migrate(db)
    row = db.execute("SELECT value FROM meta WHERE key = 'latch'").fetchone()
    if row is not None:
        try:
            latch = json.loads(row[0])
            bool(latch["tripped"])
        except (ValueError, TypeError, KeyError) as exc:
            raise Unusable("corrupt", f"unreadable latch record: {row[0]!r}") from exc


def connect(path: Path) -> sqlite3.Connection:
    """Open or create the database, WAL mode, schema checked; raises :class:`Unusable`."""
    db: sqlite3.Connection | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
        db.execute("PRAGMA busy_timeout=5000")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or mode[0] != "wal":
            raise Unusable("unavailable", f"cannot use WAL mode (journal_mode={mode})")
        db.execute("PRAGMA synchronous=FULL")
        _check(db)
    except BaseException as exc:
        if db is not None:
            db.close()
        if isinstance(exc, Exception):
            raise _classify(exc, path) from exc
        raise
    with contextlib.suppress(OSError):  # not ours to chmod (e.g. a bind mount)
        path.chmod(0o600)
    return db


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.rename(path, aside)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def open_database(path: Path) -> tuple[sqlite3.Connection | None, StoreProblem | None]:
    """The database, or None; and the problem with the store as found, or None.

    A corrupt file is moved aside and a fresh database created: the result is
    then a connection *and* a problem (the latch that was in the file is lost,
    so the caller must fail closed).
    """
    try:
        return connect(path), None
    except Unusable as exc:
        if exc.kind != "corrupt":
            return None, StoreProblem(exc.kind, str(path), exc.problem)
        found = exc
    try:
        aside = _move_aside(path)
    except OSError as exc:
        why = f"{found.problem}; cannot move it aside: {exc.strerror}"
        return None, StoreProblem("corrupt", str(path), why)
    moved = StoreProblem("corrupt", str(path), found.problem, moved_to=str(aside))
    try:
        return connect(path), moved
    except Unusable as exc:
        fresh = f"{found.problem}; a new store cannot be created: {exc.problem}"
        return None, StoreProblem("corrupt", str(path), fresh, moved_to=str(aside))


class LatchMarker:
    """``<state.db>.tripped``: an empty file that exists while the switch is latched."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".tripped")

    def tripped(self) -> bool:
        return self.path.exists()

    def set(self, tripped: bool) -> None:
        """Create or remove the marker, durably (file and directory synced); may raise OSError."""
        if tripped:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

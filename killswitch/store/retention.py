"""``[state] keep_kills`` (contract §16): the store keeps the records of the newest kills.

After each kill, the records of older kills (the kill, its sweeps, its orders,
its positions and closes, its alerts and its journal) are removed on the writer thread, in the batch
after the kill's own.  Never removed: the kill the latch names and any kill
not completed (a restart resumes it).  Alerts not tied to a kill keep their
newest :data:`KEEP_DAEMON_ALERTS` delivered rows; pending ones stay (their
queue is bounded on its own).
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import Future

from killswitch.store.state import StateStore

__all__ = ["KEEP_DAEMON_ALERTS", "prune_kills"]

KEEP_DAEMON_ALERTS = 1000
# Tables with a kill_id column (exposures and flattens: contract §12's records).
_BY_KILL = ("sweeps", "orders", "alerts", "kill_events", "exposures", "flattens")


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def prune(db: sqlite3.Connection, keep: int) -> int:
    """Remove all but the newest ``keep`` kills (and the protected ones); how many went."""
    row = db.execute("SELECT value FROM meta WHERE key = 'latch'").fetchone()
    latched = json.loads(row[0]).get("kill_id") if row is not None else None
    old = [
        r[0]
        for r in db.execute(
            "SELECT kill_id FROM kills WHERE completed_at IS NOT NULL AND kill_id IS NOT ?"
            " AND kill_id NOT IN (SELECT kill_id FROM kills ORDER BY started_at DESC LIMIT ?)",
            (latched, keep),
        )
    ]
    tables = _tables(db)
    for kill_id in old:
        for table in _BY_KILL:
            if table in tables:
                db.execute(f"DELETE FROM {table} WHERE kill_id = ?", (kill_id,))  # noqa: S608
        db.execute("DELETE FROM kills WHERE kill_id = ?", (kill_id,))
    if "alerts" in tables:
        db.execute(
            "DELETE FROM alerts WHERE kill_id IS NULL AND delivered_at IS NOT NULL AND id NOT IN"
            " (SELECT id FROM alerts WHERE kill_id IS NULL AND delivered_at IS NOT NULL"
            " ORDER BY id DESC LIMIT ?)",
            (KEEP_DAEMON_ALERTS,),
        )
    return len(old)


def prune_kills(store: StateStore, keep: int) -> Future[int]:
    """Queue :func:`prune` on the store's writer thread."""
    return store._call(lambda db: prune(db, keep))

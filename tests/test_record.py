"""The record of kills (contract §16) below the CLI: ``keep_kills`` retention and the report
of a reset with who and why."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from killswitch.record.reader import Entry, KillSummary, RecordReader
from killswitch.record.report import history_text, report_json, report_text
from killswitch.store.alerts import AlertTable
from killswitch.store.retention import prune_kills
from killswitch.store.state import StateStore


def _kill(store: StateStore, kill_id: str, at: float, *, done: bool = True) -> None:
    store.start_kill(kill_id, "signal", "SIGUSR1", at, [("E", None)])
    store.sweep_acked(kill_id, "E", None, [f"{kill_id}-o1", f"{kill_id}-o2"], at + 0.1)
    if done:
        store.complete_kill(kill_id, at + 1, {"orders": 2, "cancelled": 2, "flat": True})


async def test_keep_kills_keeps_the_newest_the_latched_and_the_unfinished(tmp_path: Path) -> None:
    """With keep_kills = 2: the two newest kills stay, and so do an older unfinished one and
    the one the latch names; the others go with their sweeps, orders and alerts."""
    store = StateStore(tmp_path / "state.db")
    store.open()
    AlertTable(store).create()
    _kill(store, "unfinished", 100.0, done=False)
    for n in range(6):
        _kill(store, f"k{n}", 200.0 + n)
    store.set_latch(True, "k1")  # an operator never reset k1 (the latch names it)
    table = AlertTable(store)
    for n in range(6):
        table.insert(receiver="r", dedup_key=f"k{n}:trigger.fired:1", action="trigger",
                     event="trigger.fired", kill_id=f"k{n}", severity="critical", fields={},
                     created_at=0.0)  # fmt: skip
    assert prune_kills(store, 2).result() == 3
    db = sqlite3.connect(tmp_path / "state.db")
    kills = {r[0] for r in db.execute("SELECT kill_id FROM kills")}
    assert kills == {"unfinished", "k1", "k4", "k5"}
    assert {r[0] for r in db.execute("SELECT DISTINCT kill_id FROM orders")} == kills
    assert {r[0] for r in db.execute("SELECT kill_id FROM alerts")} == {"k1", "k4", "k5"}
    db.close()
    store.close()


def test_the_report_says_who_reset_and_why() -> None:
    """A reset with a peer and a reason (contract §13) is in the text and the JSON; without
    a reset the report says the switch is still tripped."""
    summary = {"orders": 1, "cancelled": 1, "flat": True, "duration_ms": 2000}
    kill = KillSummary("k", "manual", "desk halt", 1000.0, 1002.0, summary)
    assert "still TRIPPED" in report_text(kill)
    peer = {"uid": 1001, "user": "bob", "pid": 4242}
    kill.journal.append(
        Entry("1970-01-01T00:20:00Z", "switch.reset",
              {"force": False, "peer": peer, "reason": "strategy fixed, checked by risk"})
    )  # fmt: skip
    text = report_text(kill)
    assert 'by bob (uid 1001, pid 4242): "strategy fixed, checked by risk"' in text
    assert report_json(kill)["reset"]["reason"] == "strategy fixed, checked by risk"
    assert "by bob" in history_text([kill])


async def test_the_reader_changes_nothing_and_reads_what_the_wal_holds(tmp_path: Path) -> None:
    """With the writer still open (records in its WAL), the read-only reader sees the kill;
    the database file's bytes do not change."""
    store = StateStore(tmp_path / "state.db")
    store.open()
    _kill(store, "k0", 100.0)
    await store.flush()
    before = (tmp_path / "state.db").read_bytes()
    reader = RecordReader(tmp_path / "state.db")
    kill = reader.kill(None)
    reader.close()
    assert kill is not None
    assert kill.kill_id == "k0"
    assert [o.order_id for o in kill.orders] == ["k0-o1", "k0-o2"]
    assert (tmp_path / "state.db").read_bytes() == before
    assert json.loads(json.dumps(report_json(kill)))["kill_id"] == "k0"
    store.close()

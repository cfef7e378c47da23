"""The state store: what a crash must not lose."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from killswitch.store.state import StateStore


def _open(path: Path) -> StateStore:
    store = StateStore(path)
    store.open()
    return store


def test_unfinished_kill_survives_reopen(tmp_path: Path) -> None:
    """A kill with one acked sweep and order statuses is read back as unfinished."""
    db = tmp_path / "state.db"
    store = _open(db)
    store.start_kill("k1", "signal", "SIGUSR1", 100.0, [("EX", None), ("EX2", "BTCUSDT")])
    store.sweep_acked("k1", "EX", None, ["a", "b", "c"], 101.0)
    store.order_status("k1", "a", "CANCELLED", 102.0)
    store.order_status("k1", "b", "CANCELLATION_RAISED", 102.0)
    store.close()

    again = _open(db)
    assert again.latch() == (True, "k1")
    kill = again.unfinished_kill()
    assert kill is not None
    assert (kill.kill_id, kill.source, kill.reason) == ("k1", "signal", "SIGUSR1")
    assert {(s.exchange, s.symbol, s.acked) for s in kill.sweeps} == {
        ("EX", None, True),
        ("EX2", "BTCUSDT", False),
    }
    assert kill.orders == {"a": "CANCELLED", "b": "CANCELLATION_RAISED", "c": ""}
    again.close()


def test_completed_kill_is_not_unfinished_but_latch_stays(tmp_path: Path) -> None:
    """complete_kill ends it; the latch stays set until set_latch(False)."""
    store = _open(tmp_path / "s.db")
    store.start_kill("k1", "manual", "test", 1.0, [("EX", None)])
    store.complete_kill("k1", 2.0, {"cancelled": 3})
    assert store.unfinished_kill() is None
    last = store.last_kill()
    assert last is not None
    assert last.summary == {"cancelled": 3}
    assert store.latch()[0] is True
    store.set_latch(False)
    assert store.latch()[0] is False
    store.close()


def test_recent_sends_prunes_old_rows(tmp_path: Path) -> None:
    """Send times older than the window are dropped; recent ones come back in order."""
    store = _open(tmp_path / "s.db")
    for t in (10.0, 50.0, 70.0, 65.0):
        store.record_send("cancel_all", t)
    store.record_send("order_status", 69.0)
    assert store.recent_sends("cancel_all", 60.0) == [65.0, 70.0]
    store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("SELECT count(*) FROM sends WHERE endpoint='cancel_all'").fetchone() == (2,)
    db.close()


def test_wal_mode_and_private_file(tmp_path: Path) -> None:
    """The database runs in WAL mode and is readable by its owner only."""
    path = tmp_path / "s.db"
    _open(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    assert path.stat().st_mode & 0o077 == 0


async def test_flush_waits_for_queued_writes(tmp_path: Path) -> None:
    """Writes are queued (the caller does not wait); flush() makes them visible."""
    store = _open(tmp_path / "s.db")
    for i in range(200):
        store.record_send("order_status", float(i))
    await store.flush()
    assert len(store.recent_sends("order_status", 0.0)) == 200
    assert store.write_failures == 0
    store.close()


async def test_queued_writes_commit_in_batches(tmp_path: Path) -> None:
    """A burst of writes is committed in far fewer transactions than writes."""
    store = _open(tmp_path / "s.db")
    store.start_kill("k", "manual", "x", 1.0, [("EX", None)])
    store.sweep_acked("k", "EX", None, [f"o{i}" for i in range(500)], 2.0)
    for i in range(500):
        store.order_status("k", f"o{i}", "CANCELLED", 3.0 + i)
    await store.flush()
    kill = store.unfinished_kill()
    assert kill is not None
    assert set(kill.orders.values()) == {"CANCELLED"}
    assert store.writer.batches < 100
    store.close()


async def test_a_failing_write_loses_nothing_else(tmp_path: Path) -> None:
    """One failing operation in a batch fails alone; the others in it are committed."""
    store = _open(tmp_path / "s.db")
    store.start_kill("k", "manual", "x", 1.0, [("EX", None)])
    duplicate = store.start_kill("k", "manual", "again", 1.0, [("EX", None)])  # same kill_id
    store.record_send("cancel_all", 5.0)
    await store.flush()
    assert isinstance(duplicate.exception(), sqlite3.IntegrityError)
    assert store.recent_sends("cancel_all", 0.0) == [5.0]
    assert store.write_failures == 1
    store.close()


def test_first_poll_time_is_kept_for_resume(tmp_path: Path) -> None:
    """The first status stamps first_polled_at; later ones keep it (resume keeps deadlines)."""
    store = _open(tmp_path / "s.db")
    store.start_kill("k", "manual", "x", 1.0, [("EX", None)])
    store.sweep_acked("k", "EX", None, ["a"], 2.0)
    store.order_status("k", "a", "CANCELLATION_RAISED", 10.0)
    store.order_status("k", "a", "CANCELLATION_RAISED", 20.0)
    kill = store.unfinished_kill()
    assert kill is not None
    assert kill.first_polled == {"a": 10.0}
    store.close()


def test_corrupt_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    """Garbage in the file: a corrupt problem, the file kept aside, a fresh working store."""
    path = tmp_path / "state.db"
    path.write_bytes(b"\x07" * 9000)
    store = StateStore(path)
    problem = store.open()
    assert problem is not None
    assert (problem.kind, problem.path) == ("corrupt", str(path))
    assert "not a database" in problem.problem
    assert problem.moved_to is not None
    assert Path(problem.moved_to).read_bytes() == b"\x07" * 9000
    assert store.persisting
    assert store.health()["ok"] is False
    store.set_latch(True)
    assert store.latch() == (True, None)
    store.close()


def test_foreign_schema_is_corrupt(tmp_path: Path) -> None:
    """A table of ours with other columns is a corrupt store, named by table and columns."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE orders (id INTEGER)")
    db.commit()
    db.close()
    store = StateStore(path)
    problem = store.open()
    assert problem is not None
    assert problem.kind == "corrupt"
    assert problem.problem.startswith("wrong schema: table orders lacks")
    store.close()


def test_unreadable_latch_record_is_corrupt(tmp_path: Path) -> None:
    """A latch record that is not the JSON the store writes is a corrupt store."""
    path = tmp_path / "state.db"
    _open(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO meta (key, value) VALUES ('latch', 'garbage')")
    db.commit()
    db.close()
    store = StateStore(path)
    problem = store.open()
    assert problem is not None
    assert "unreadable latch record" in problem.problem
    store.close()


async def test_without_a_database_writes_are_dropped_and_the_latch_reads_tripped(
    tmp_path: Path,
) -> None:
    """A path that cannot be opened: unavailable; nothing raises, the latch reads tripped."""
    (tmp_path / "file").write_text("")
    store = StateStore(tmp_path / "file" / "state.db")  # a directory that is a file
    problem = store.open()
    assert problem is not None
    assert problem.kind == "unavailable"
    assert problem.moved_to is None
    assert not store.persisting
    store.start_kill("k", "manual", "x", 1.0, [("EX", None)])
    store.record_send("cancel_all", 5.0)
    await store.flush()
    assert store.latch() == (True, None)
    assert store.unfinished_kill() is None
    assert store.recent_sends("cancel_all", 0.0) == []
    assert store.writer.dropped == 2
    assert store.health() == {
        "ok": False,
        "problem": problem.describe(),
        "path": problem.path,
        "persisting": False,
    }
    store.close()


async def test_retry_opens_a_store_that_works_again(tmp_path: Path) -> None:
    """Once the path can be opened, retry() gives a persisting store with no problem."""
    (tmp_path / "state").write_text("")
    store = StateStore(tmp_path / "state" / "state.db")
    assert store.open() is not None
    assert store.retry().result() is False
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir()
    assert store.retry().result() is True
    assert store.persisting
    assert store.health() == {"ok": True}
    store.set_latch(True, "k9")
    assert store.latch() == (True, "k9")
    store.close()


async def test_latch_marker_follows_the_latch(tmp_path: Path) -> None:
    """<db>.tripped exists while the latch is set; either home alone reads tripped."""
    path = tmp_path / "state.db"
    marker = tmp_path / "state.db.tripped"
    store = _open(path)
    store.start_kill("k", "manual", "x", 1.0, [("EX", None)])
    await store.flush()
    assert marker.exists()
    store.set_latch(False)
    await store.flush()
    assert not marker.exists()
    assert store.latch() == (False, None)
    marker.touch()  # the database lost the write, the marker did not
    assert store.latch() == (True, None)
    store.close()


async def test_a_lost_write_is_reported_until_acknowledged(tmp_path: Path) -> None:
    """A failed write keeps health() not ok, even after good writes, until acknowledge()."""
    store = _open(tmp_path / "s.db")
    seen: list[tuple[str, int]] = []
    store.writer.on_error = lambda exc, lost: seen.append((type(exc).__name__, lost))
    store.start_kill("k", "manual", "x", 1.0, [("EX", None)])
    store.start_kill("k", "manual", "again", 1.0, [("EX", None)])  # fails: same kill_id
    await store.flush()
    assert seen == [("IntegrityError", 1)]
    store.record_send("cancel_all", 5.0)
    await store.flush()
    assert store.health()["ok"] is False
    assert "write failed" in store.health()["problem"]
    store.acknowledge()
    assert store.health() == {"ok": True}
    store.close()


def test_kill_intent_latches_until_its_record_is_committed(tmp_path: Path) -> None:
    """intend() alone latches across a reopen and reads as a lost kill, until its record
    is committed."""
    db = tmp_path / "state.db"
    store = _open(db)
    store.intend("k9", "signal")  # the crash comes before the writer's first commit
    store.close()

    again = _open(db)
    assert again.latch()[0] is True
    lost = again.lost_kill()
    assert lost is not None
    assert (lost.kill_id, lost.source) == ("k9", "signal")
    again.start_kill("k9", "signal", "resumed by proof", lost.started_at, [("EX", None)])
    assert again.unfinished_kill() is not None  # a read: the record above is committed
    assert again.lost_kill() is None  # the slot still names it: latched, not lost
    again.close()


def test_reset_removes_intents_and_unlatches(tmp_path: Path) -> None:
    """A reset clears the intent slot: ARMED after a reopen."""
    db = tmp_path / "state.db"
    store = _open(db)
    store.intend("k1", "manual")
    store.set_latch(False).result()
    store.close()
    again = _open(db)
    assert again.latch()[0] is False
    again.close()

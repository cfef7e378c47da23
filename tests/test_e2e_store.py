"""End to end: a state store that fails closes the switch, never the daemon (contract §9).

Real failures, not mocks: garbage bytes and a foreign schema in ``state.db``, a
read-only filesystem (a tmpfs mounted ``ro``: root ignores file modes, not a
read-only mount) and a full one (a 1 MiB tmpfs filled to the last block).  The
mounts need root and a kernel that lets us mount; without them those tests are
skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from killswitch.store.state import StateStore
from tests.harness import DaemonProcess, write_config

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def _only_json(daemon: DaemonProcess) -> None:
    for line in daemon.raw:
        assert isinstance(json.loads(line), dict), line
    assert daemon.stderr == b"", daemon.stderr.decode(errors="replace")


@contextlib.contextmanager
def _mounted(where: Path, args: list[str]) -> Iterator[Path]:
    """``mount <args> where`` for the test (skipped, with the reason, where that fails)."""
    where.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount/umount on this machine")
    done = subprocess.run([mount, *args, str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run([umount, "-l", str(where)], check=False)


def _tmpfs(where: Path, options: str) -> contextlib.AbstractContextManager[Path]:
    return _mounted(where, ["-t", "tmpfs", "-o", options, "tmpfs"])


async def _status(workdir: Path) -> dict[str, Any]:
    code, body = await ControlClient(workdir / "ctl.sock").request("GET", "/status")
    assert code == 200
    assert isinstance(body, dict)
    return body


async def _kills_at_the_sim(daemon: DaemonProcess, sim: SimExchange) -> None:
    """SIGUSR1 still kills: one cancel_all reaches the exchange, every order ends cancelled."""
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("kill.completed")
    assert sim.stats()["requests"]["cancel_all"] == 1
    assert sim.stats()["orders"] == {"CANCELLED": 4}


async def _comes_up_tripped(
    workdir: Path, sim_factory: SimFactory, event: str, state_db: Path | None = None
) -> tuple[DaemonProcess, SimExchange, dict[str, Any]]:
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 4})
    extra = {} if state_db is None else {"state": {"path": str(state_db)}}
    daemon = DaemonProcess(write_config(workdir, url, **extra))
    await daemon.start()
    assert daemon.named("daemon.ready")[0]["state"] == "TRIPPED"
    found = daemon.named(event)
    assert len(found) == 1, [e["event"] for e in daemon.events]
    assert found[0]["level"] == "critical"
    status = await _status(workdir)
    assert status["state"] == "TRIPPED"
    assert status["store"]["ok"] is False
    assert found[0]["problem"] in status["store"]["problem"]
    return daemon, sim, found[0]


async def test_corrupt_store_is_moved_aside_and_the_switch_comes_up_tripped(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Garbage in state.db: moved aside, store.corrupt, TRIPPED, store.ok false; SIGUSR1 kills."""
    garbage = os.urandom(16384)
    (workdir / "state.db").write_bytes(garbage)
    daemon, sim, event = await _comes_up_tripped(workdir, sim_factory, "store.corrupt")
    assert event["path"] == str(workdir / "state.db")
    assert "not a database" in event["problem"]
    aside = Path(event["moved_to"])
    assert aside.name.startswith("state.db.corrupt-")
    assert aside.read_bytes() == garbage  # kept for the operator, untouched
    await _kills_at_the_sim(daemon, sim)
    assert await daemon.stop() == 0
    _only_json(daemon)

    again = DaemonProcess(daemon.config)  # the fresh store kept the latch
    await again.start()
    assert again.named("daemon.ready")[0]["state"] == "TRIPPED"
    assert again.named("store.corrupt") == []
    assert (await _status(workdir))["store"] == {"ok": True}
    assert await again.stop() == 0


async def test_foreign_schema_is_corrupt(workdir: Path, sim_factory: SimFactory) -> None:
    """A sqlite file whose kills table is not ours: store.corrupt naming it, TRIPPED; kills."""
    with contextlib.closing(sqlite3.connect(workdir / "state.db")) as db:
        db.execute("CREATE TABLE kills (id INTEGER PRIMARY KEY, note TEXT)")
        db.commit()
    daemon, sim, event = await _comes_up_tripped(workdir, sim_factory, "store.corrupt")
    assert "wrong schema: table kills lacks" in event["problem"]
    assert Path(event["moved_to"]).exists()
    await _kills_at_the_sim(daemon, sim)
    code, body = await ControlClient(workdir / "ctl.sock").request("POST", "/reset")
    assert (code, body["state"]) == (200, "ARMED")
    assert body["store"] == {"ok": True}  # the fresh store works; the reset acknowledged it
    assert await daemon.stop() == 0
    _only_json(daemon)


async def test_read_only_store_runs_without_persistence(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """A read-only state directory: store.unavailable, TRIPPED; kills; reset runs ARMED."""
    with _tmpfs(workdir / "state", "ro,size=1m") as state:
        daemon, sim, event = await _comes_up_tripped(
            workdir, sim_factory, "store.unavailable", state / "state.db"
        )
        assert event["persisting"] is False
        assert "read-only filesystem" in event["problem"]
        assert daemon.named("store.write_failed") == []  # one event for one problem
        await _kills_at_the_sim(daemon, sim)
        code, body = await ControlClient(workdir / "ctl.sock").request("POST", "/reset")
        assert (code, body["state"]) == (200, "ARMED")
        assert body["store"]["ok"] is False  # still nothing persists, and status says so
        code, metrics = await ControlClient(workdir / "ctl.sock").request(
            "GET", "/metrics", parse=bytes.decode
        )
        assert "killswitch_store_ok 0.0" in metrics
        assert 'killswitch_store_failures_total{kind="unavailable"} 1.0' in metrics
        assert await daemon.stop() == 0
        _only_json(daemon)


def _fill(directory: Path) -> Path:
    """Write until the filesystem has no block left; the filler file is returned."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
                out.flush()
        with contextlib.suppress(OSError):
            out.close()
    return filler


async def test_latch_survives_a_full_disk(workdir: Path, sim_factory: SimFactory) -> None:
    """A kill on a full disk: store.write_failed, and after a restart the switch is TRIPPED."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 4})
    with _tmpfs(workdir / "state", "size=1m") as state:
        config = write_config(workdir, url, state={"path": str(state / "state.db")})
        first = DaemonProcess(config)
        await first.start()
        filler = _fill(state)
        await _kills_at_the_sim(first, sim)
        failed = await first.wait_for("store.write_failed")
        assert failed["level"] == "critical"
        assert "full" in failed["detail"]
        status = await _status(workdir)
        assert status["store"]["ok"] is False
        assert "write failed" in status["store"]["problem"]
        assert await first.stop() == 0
        _only_json(first)
        with contextlib.closing(sqlite3.connect(state / "state.db")) as db:
            latch = db.execute("SELECT value FROM meta WHERE key = 'latch'").fetchone()
        assert latch is None or json.loads(latch[0])["tripped"] is False  # not in the db...

        # ...still a full disk.  Only the kill's intent file remembers it (v3 §9): latched,
        # and the kill whose record was lost is resumed by proof, to TRIPPED.
        second = DaemonProcess(config)
        await second.start()
        assert second.named("daemon.ready")[0]["state"] != "ARMED"
        assert (await second.wait_for("kill.resumed"))["by_proof"] is True
        await second.wait_for("kill.completed")
        assert (await _status(workdir))["state"] == "TRIPPED"
        assert await second.stop() == 0

        filler.unlink()  # space again: the record is written at last
        third = DaemonProcess(config)
        await third.start()
        assert third.named("daemon.ready")[0]["state"] != "ARMED"
        if third.named("daemon.ready")[0]["state"] == "KILLING":
            await third.wait_for("kill.completed")
        assert (await _status(workdir))["state"] == "TRIPPED"
        assert (await _status(workdir))["store"] == {"ok": True}
        assert await third.stop() == 0
        _only_json(third)


@contextlib.contextmanager
def _ext4(workdir: Path) -> Iterator[Path]:
    """A 16 MiB ext4 filesystem on a loop device (skipped where that cannot be made)."""
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        pytest.skip("no mkfs.ext4 on this machine")
    image = workdir / "ext4.img"
    with image.open("wb") as out:
        out.truncate(16 * 1024 * 1024)
    made = subprocess.run([mkfs, "-q", "-F", str(image)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.decode().strip()}")
    with _mounted(workdir / "ext4", ["-o", "loop", str(image)]) as where:
        yield where


async def test_latch_marker_is_created_on_a_full_ext4(workdir: Path) -> None:
    """On a full ext4 (root's reserved blocks used up too) the kill's commit fails, the
    latch marker is still created, and a reopened store reads the latch tripped."""
    with _ext4(workdir) as fs:
        store = StateStore(fs / "state.db")
        assert store.open() is None
        store.record_send("cancel_all", 1.0)
        await store.flush()
        _fill(fs)
        started = store.start_kill("k", "signal", "SIGUSR1", 2.0, [("EXCHANGE_2", None)])
        for i in range(300):
            store.order_status("k", f"o{i}", "CANCELLED", 3.0)
        await store.flush()
        assert isinstance(started.exception(), sqlite3.OperationalError)
        assert store.write_failures > 0
        assert store.marker.tripped()
        store.close()
        (fs / "filler").unlink()
        again = StateStore(fs / "state.db")
        assert again.open() is None
        assert again.latch() == (True, None)
        again.close()

"""The PnL trigger: parsing, edges, staleness and the directory watch."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from killswitch.triggers import pnl as pnl_module
from killswitch.triggers.pnl import (
    MAX_BYTES,
    PnlMonitor,
    PnlWatcher,
    Reading,
    parse_pnl,
    read_bounded,
)
from tests.fakes import FakeClock
from tests.harness import write_atomically


class _Fires:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    def __call__(self, why: str, value: float | None) -> None:
        self.calls.append((why, value))


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"pnl": -12.5}', -12.5),
        (b"42", 42.0),
        (b' {"pnl": 3, "extra": [1]}\n', 3.0),
        (b"-0", 0.0),
        (b'{"pnl": 1e3}', 1000.0),
    ],
)
def test_parse_accepts_object_or_bare_number(raw: bytes, value: float) -> None:
    """A JSON object with numeric pnl, or a bare number; extra fields ignored."""
    assert parse_pnl(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b'{"pnl": NaN}',
        b"Infinity",
        b"-Infinity",
        b'{"pnl": "1"}',
        b'{"pnl": true}',
        b'{"pnl": 1',
        b"garbage",
        b'{"other": 1}',
        b"\xff\xfe",
        b"[1]",
        b"1e999",
        b"null",
    ],
)
def test_parse_rejects_invalid(raw: bytes) -> None:
    """NaN, infinities, garbage, partial or empty content raise ValueError."""
    with pytest.raises(ValueError, match=r"."):
        parse_pnl(raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes_never_crashes(raw: bytes) -> None:
    """Arbitrary bytes give a finite float or ValueError, nothing else."""
    try:
        value = parse_pnl(raw)
    except ValueError:
        return
    assert math.isfinite(value)


def test_fires_on_edge_not_level() -> None:
    """Crossing below fires once; staying below does not; above then below fires again."""
    fires = _Fires()
    mon = PnlMonitor(-100.0, 0, FakeClock(), fires)
    for v in (0.0, -50.0, -100.0, -101.0, -200.0, -150.0):
        mon.observe(v)
    assert fires.calls == [("breach", -101.0)]
    mon.observe(-99.0)
    mon.observe(-300.0)
    assert fires.calls == [("breach", -101.0), ("breach", -300.0)]


def test_first_valid_reading_below_fires() -> None:
    """The first valid reading after start counts as an edge."""
    fires = _Fires()
    PnlMonitor(-100.0, 0, FakeClock(), fires).observe(-500.0)
    assert fires.calls == [("breach", -500.0)]


def test_after_reset_needs_above_then_below() -> None:
    """After rearm(), below readings do not fire until one at/above the threshold is seen."""
    fires = _Fires()
    mon = PnlMonitor(-100.0, 0, FakeClock(), fires)
    mon.observe(-500.0)
    mon.rearm()
    mon.observe(-600.0)
    assert len(fires.calls) == 1
    mon.observe(-100.0)
    mon.observe(-101.0)
    assert len(fires.calls) == 2


def test_invalid_logged_once_per_distinct_content_and_value_stands() -> None:
    """Bad content logs pnl.invalid once per distinct content; the last valid value stays."""
    mon = PnlMonitor(-100.0, 0, FakeClock(), _Fires())
    mon.observe(10.0)
    with capture_logs() as logs:
        mon.invalid("not JSON", b"garbage")
        mon.invalid("not JSON", b"garbage")
        mon.invalid("not JSON", b"other garbage")
    assert [e["event"] for e in logs] == ["pnl.invalid", "pnl.invalid"]
    assert mon.value == 10.0


async def test_stale_fires_once_after_stale_after() -> None:
    """No valid value for stale_after seconds fires with reason stale, once per episode."""
    clock = FakeClock()
    fires = _Fires()
    mon = PnlMonitor(-100.0, 30.0, clock, fires)
    mon.observe(5.0)
    await clock.advance(29.9)
    mon.check_stale()
    assert fires.calls == []
    await clock.advance(0.2)
    mon.check_stale()
    mon.check_stale()
    assert fires.calls == [("stale", 5.0)]
    mon.observe(6.0)
    await clock.advance(31)
    mon.check_stale()
    assert len(fires.calls) == 2


async def _until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("backend", ["inotify", "poll"])
async def test_watcher_sees_renames_and_survives_garbage(tmp_path: Path, backend: str) -> None:
    """Atomic renames are seen (inotify and poll); garbage logs pnl.invalid, no fire."""
    path = tmp_path / "pnl.json"
    write_atomically(path, '{"pnl": 100}')
    fires = _Fires()
    mon = PnlMonitor(-100.0, 0, FakeClock(), fires)
    watcher = PnlWatcher(path, mon, poll_interval=0.01)
    if backend == "poll":
        watcher._open_inotify = lambda: False  # type: ignore[method-assign]
    with capture_logs() as logs:
        task = asyncio.create_task(watcher.run())
        await _until(lambda: mon.value == 100)
        await _until(lambda: watcher.backend == backend)
        write_atomically(path, "garbage")
        await _until(lambda: any(e["event"] == "pnl.invalid" for e in logs))
        write_atomically(path, '{"pnl": 50}')
        await _until(lambda: mon.value == 50)
        assert fires.calls == []
        write_atomically(path, '{"pnl": -150}')
        await _until(lambda: bool(fires.calls))
        task.cancel()
    assert fires.calls == [("breach", -150.0)]
    assert mon.value == -150.0


async def test_watcher_missing_file_then_created(tmp_path: Path) -> None:
    """A file not written yet is one pnl.waiting (info), not pnl.invalid; once written, read."""
    path = tmp_path / "pnl.json"
    mon = PnlMonitor(-100.0, 0, FakeClock(), _Fires())
    with capture_logs() as logs:
        task = asyncio.create_task(PnlWatcher(path, mon, poll_interval=0.01).run())
        await _until(lambda: any(e["event"] == "pnl.waiting" for e in logs))
        await asyncio.sleep(0.05)
        write_atomically(path, "7")
        await _until(lambda: mon.value == 7)
        path.unlink()
        write_atomically(path.with_name("other"), "1")  # an unrelated change in the directory
        mon.missing(str(path))  # gone after a valid reading: that is invalid
        task.cancel()
    assert [e["log_level"] for e in logs if e["event"] == "pnl.waiting"] == ["info"]
    invalid = [e for e in logs if e["event"] == "pnl.invalid"]
    assert [e["problem"] for e in invalid] == ["missing"]


def test_read_bounded_accepts_regular_file_and_symlink_to_one(tmp_path: Path) -> None:
    """A regular file is read; a symlink to one is followed (the target is what is checked)."""
    real = tmp_path / "real.json"
    real.write_text('{"pnl": 5}')
    link = tmp_path / "pnl.json"
    link.symlink_to(real)
    for path in (real, link):
        reading = read_bounded(path)
        assert reading.problem is None
        assert reading.raw == b'{"pnl": 5}'
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert read_bounded(tmp_path / "dangling").missing


def test_read_bounded_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    """FIFO, directory, socket, symlink to a FIFO, over-size sparse file: a problem, no read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to-fifo").symlink_to(fifo)
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sock_path))
        huge = tmp_path / "huge"
        with huge.open("wb") as f:
            f.truncate(1 << 30)  # 1 GiB, sparse: nothing may read it whole
        cases = {
            fifo: "not a regular file (a FIFO)",
            tmp_path / "to-fifo": "not a regular file (a FIFO)",
            tmp_path: "not a regular file (a directory)",
            huge: f"too large ({1 << 30} bytes, at most {MAX_BYTES})",
        }
        for path, problem in cases.items():
            assert read_bounded(path).problem == problem, path
        # A UNIX socket cannot even be opened: unreadable, with the OS's reason.
        assert (read_bounded(sock_path).problem or "").startswith("unreadable: ")
    exact = tmp_path / "exact"
    exact.write_bytes(b" " * (MAX_BYTES - 1) + b"1")
    assert read_bounded(exact).raw is not None


async def test_fifo_over_the_file_never_blocks_and_the_value_stands(tmp_path: Path) -> None:
    """A FIFO renamed over the PnL file: pnl.invalid with the reason, the last value stands."""
    path = tmp_path / "pnl.json"
    write_atomically(path, "100")
    mon = PnlMonitor(-100.0, 0, FakeClock(), _Fires())
    watcher = PnlWatcher(path, mon)
    with capture_logs() as logs:
        task = asyncio.create_task(watcher.run())
        await _until(lambda: mon.value == 100)
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.replace(fifo, path)
        await _until(lambda: any(e["event"] == "pnl.invalid" for e in logs))
        write_atomically(path, "90")
        await _until(lambda: mon.value == 90)
        task.cancel()
    invalid = [e for e in logs if e["event"] == "pnl.invalid"]
    assert invalid[0]["problem"] == "not a regular file (a FIFO)"
    assert invalid[0]["last_valid"] == 100


async def test_a_hung_read_does_not_stall_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never returns (a hung mount): the loop runs on, "read timed out", retried."""
    path = tmp_path / "pnl.json"
    write_atomically(path, "100")
    release = threading.Event()
    real = pnl_module.read_bounded

    def hanging(p: Path, limit: int = MAX_BYTES) -> Reading:
        release.wait(10)
        return real(p, limit)

    mon = PnlMonitor(-100.0, 0, FakeClock(), _Fires())
    watcher = PnlWatcher(path, mon, read_timeout=0.05)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    monkeypatch.setattr(pnl_module, "read_bounded", hanging)
    with capture_logs() as logs:
        tick = asyncio.create_task(ticker())
        task = asyncio.create_task(watcher.run())
        await _until(lambda: any(e["event"] == "pnl.invalid" for e in logs))
        before = ticks
        await _until(lambda: ticks > before + 5)  # the loop is not blocked
        release.set()
        await _until(lambda: mon.value == 100)
        task.cancel()
        tick.cancel()
    assert [e["problem"] for e in logs if e["event"] == "pnl.invalid"] == [
        "read timed out: the file system does not answer"
    ]


def test_close_releases_the_inotify_descriptor_without_run(tmp_path: Path) -> None:
    """open() then close() (a start-up that failed before run()): no descriptor is left."""
    before = len(os.listdir("/proc/self/fd"))
    watcher = PnlWatcher(tmp_path / "pnl.json", PnlMonitor(-1.0, 0, FakeClock(), _Fires()))
    watcher.open()
    assert watcher.backend == "inotify"
    watcher.close()
    watcher.close()
    assert len(os.listdir("/proc/self/fd")) == before

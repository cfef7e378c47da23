"""The dead-man switch, on a fake clock."""

from __future__ import annotations

import asyncio
import time

from killswitch.clock import TIMER_SLACK, SystemClock
from killswitch.triggers.heartbeat import DeadManSwitch
from tests.fakes import FakeClock


class _Recorder:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fired: list[tuple[float, float]] = []  # (fire time, observed age)

    def __call__(self, age: float) -> None:
        self.fired.append((self.clock.monotonic(), age))


async def test_fires_exactly_at_the_deadline_and_not_before() -> None:
    """Heartbeats every 0.1 s then silence: one fire at last beat + timeout, never earlier."""
    clock = FakeClock()
    rec = _Recorder(clock)
    dms = DeadManSwitch(2.0, clock, rec)
    task = asyncio.create_task(dms.run())
    for _ in range(30):
        dms.beat()
        await clock.advance(0.1)
    last = clock.monotonic() - 0.1
    await clock.advance(1.8)
    assert rec.fired == []
    await clock.advance(0.0999)
    assert rec.fired == []
    await clock.advance(0.0002)
    assert len(rec.fired) == 1
    assert rec.fired[0][0] == last + 2.0
    await clock.advance(60)
    assert len(rec.fired) == 1, "one kill per loss of heartbeat"
    task.cancel()


async def test_not_armed_until_first_heartbeat() -> None:
    """Without arm_on_start, silence from the start never fires."""
    clock = FakeClock()
    rec = _Recorder(clock)
    task = asyncio.create_task(DeadManSwitch(1.0, clock, rec).run())
    await clock.advance(100)
    assert rec.fired == []
    task.cancel()


async def test_arm_on_start_fires_without_any_heartbeat() -> None:
    """arm_on_start = true: the timeout runs from start."""
    clock = FakeClock()
    rec = _Recorder(clock)
    start = clock.monotonic()
    task = asyncio.create_task(DeadManSwitch(1.5, clock, rec, armed=True).run())
    await clock.advance(10)
    assert [t for t, _ in rec.fired] == [start + 1.5]
    task.cancel()


async def test_rearms_on_next_heartbeat_after_firing() -> None:
    """After a fire, the next heartbeat arms it again and a new silence fires again."""
    clock = FakeClock()
    rec = _Recorder(clock)
    dms = DeadManSwitch(1.0, clock, rec)
    task = asyncio.create_task(dms.run())
    dms.beat()
    await clock.advance(5)
    dms.beat()
    await clock.advance(5)
    assert len(rec.fired) == 2
    assert dms.age() == 5
    task.cancel()


async def test_disabled_never_fires_but_tracks_age() -> None:
    """enabled = false: heartbeats are accepted and aged, never fire."""
    clock = FakeClock()
    rec = _Recorder(clock)
    dms = DeadManSwitch(1.0, clock, rec, enabled=False)
    task = asyncio.create_task(dms.run())
    dms.beat()
    await clock.advance(10)
    assert rec.fired == []
    assert dms.age() == 10
    task.cancel()


async def test_reconfigure_moves_the_armed_deadline() -> None:
    """A reload with a longer timeout moves the pending deadline, keeping the last beat."""
    clock = FakeClock()
    rec = _Recorder(clock)
    dms = DeadManSwitch(1.0, clock, rec)
    task = asyncio.create_task(dms.run())
    dms.beat()
    beat = clock.monotonic()
    await clock.advance(0.5)
    dms.reconfigure(3.0, True)
    await clock.advance(2.0)
    assert rec.fired == []
    await clock.advance(1.0)
    assert [t for t, _ in rec.fired] == [beat + 3.0]
    task.cancel()


class _SleepLog(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        await super().sleep(seconds)


async def test_only_the_last_stretch_is_slept_precisely() -> None:
    """The watcher sleeps by timer until TIMER_SLACK before the deadline and looks
    again; only the rest is slept precisely (on the real clock, loop turns)."""
    clock = _SleepLog()
    rec = _Recorder(clock)
    dms = DeadManSwitch(2.0, clock, rec)
    task = asyncio.create_task(dms.run())
    dms.beat()
    await clock.advance(2.0)
    assert [t for t, _ in rec.fired] == [1_002.0]
    assert clock.sleeps[-2:] == [round(2.0 - TIMER_SLACK, 9), round(TIMER_SLACK, 9)]
    task.cancel()


async def test_a_heartbeat_in_the_last_stretch_still_counts() -> None:
    """A heartbeat after the watcher woke TIMER_SLACK early moves the deadline: no fire."""
    clock = FakeClock()
    rec = _Recorder(clock)
    dms = DeadManSwitch(2.0, clock, rec)
    task = asyncio.create_task(dms.run())
    dms.beat()
    await clock.advance(2.0 - TIMER_SLACK / 2)
    dms.beat()
    await clock.advance(TIMER_SLACK)
    assert rec.fired == []
    await clock.advance(2.0)
    assert len(rec.fired) == 1
    task.cancel()


async def test_the_real_clock_never_wakes_before_a_precise_sleep_ends() -> None:
    """SystemClock.sleep_precisely: timer, then loop turns; never back early."""
    clock = SystemClock()
    for seconds in (0.0005, 0.001, 0.003, 0.005) * 5:
        end = time.monotonic() + seconds
        await clock.sleep_precisely(seconds)
        assert time.monotonic() >= end

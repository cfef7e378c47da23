"""The switch's state machine: coalescing, the latch, explicit vs automatic triggers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from killswitch.config.load import parse_config
from killswitch.kill.context import StuckInfo
from killswitch.kill.events import Announcer
from killswitch.kill.plan import KillPlan
from killswitch.kill.runner import KillResult
from killswitch.kill.switch import KillSwitch, ResetOutcome, State, TriggerOutcome
from killswitch.store.state import StateStore
from tests.fakes import FakeClock, settle


class FakeRunner:
    """Records plans; each kill waits until the test releases it."""

    def __init__(self) -> None:
        self.config = parse_config({"targets": [{"exchange": "EX", "symbols": ["A", "B"]}]})
        self.plans: list[KillPlan] = []
        self.release = asyncio.Event()
        self.current = None
        self.cancelled: list[str] = []
        self.resweeps = 0
        self.answered = False  # resweep(): the running kill's sweeps were all answered

    def stuck_info(self) -> StuckInfo | None:
        return StuckInfo("symbol suspended", 422, 0.0, 5.0, ())

    def progress(self) -> tuple[int, int] | None:
        return None

    def resweep(self) -> bool:
        if self.answered:
            self.resweeps += 1
        return self.answered

    async def run(
        self, plan: KillPlan, announcer: Announcer, *, background: asyncio.TaskGroup
    ) -> KillResult:
        self.plans.append(plan)
        announcer.announce(plan)  # the real runner announces after its first sends
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(plan.kill_id)
            raise
        self.release.clear()
        summary = {"source": plan.source, "cancelled": 1, "unclassified": 1}

        async def classified() -> dict[str, Any]:
            return {"kill_id": plan.kill_id, "source": plan.source, "cancelled": 2}

        return KillResult(summary, background.create_task(classified()))


@pytest.fixture
async def switch(tmp_path: Path) -> AsyncIterator[tuple[KillSwitch, FakeRunner, StateStore]]:
    store = StateStore(tmp_path / "s.db")
    store.open()
    runner = FakeRunner()
    sw = KillSwitch(runner, store, FakeClock())  # type: ignore[arg-type]
    task = asyncio.create_task(sw.run())
    yield sw, runner, store
    task.cancel()
    store.close()


async def test_trigger_plans_one_sweep_per_symbol(switch: Any) -> None:
    """A trigger moves ARMED → KILLING and plans one sweep per configured symbol."""
    sw, runner, store = switch
    assert sw.trigger("signal", "SIGUSR1") is TriggerOutcome.STARTED
    assert sw.state is State.KILLING
    await settle()
    assert runner.plans[0].sweeps == [("EX", "A"), ("EX", "B")]
    await store.flush()
    assert store.latch() == (True, runner.plans[0].kill_id)


async def test_triggers_during_a_kill_are_coalesced(switch: Any) -> None:
    """Every trigger during a kill logs trigger.fired coalesced=true; one kill runs."""
    sw, runner, _ = switch
    with capture_logs() as logs:
        sw.trigger("signal", "SIGUSR1")
        await settle()
        for source in ("signal", "manual", "heartbeat", "pnl"):
            assert sw.trigger(source, "again") is TriggerOutcome.COALESCED
        await settle()
    fired = [e for e in logs if e["event"] == "trigger.fired"]
    assert [e["coalesced"] for e in fired] == [False, True, True, True, True]
    assert len(runner.plans) == 1


async def test_latched_until_reset_explicit_triggers_sweep_again(switch: Any) -> None:
    """TRIPPED: automatic triggers change nothing; explicit ones start a new sweep."""
    sw, runner, _ = switch
    sw.trigger("pnl", "breach")
    await settle()
    runner.release.set()
    await settle()
    assert sw.state is State.TRIPPED
    assert sw.trigger("heartbeat", "timeout") is TriggerOutcome.LATCHED
    assert sw.trigger("pnl", "breach") is TriggerOutcome.LATCHED
    assert sw.state is State.TRIPPED
    assert sw.trigger("manual", "operator") is TriggerOutcome.STARTED
    await settle()
    assert len(runner.plans) == 2
    assert sw.state.value == "KILLING"


async def test_reset_refused_while_killing_then_rearms(switch: Any) -> None:
    """reset() is refused during a kill; after it, re-arms, clears the latch, calls back."""
    sw, runner, store = switch
    rearmed: list[bool] = []
    sw.on_reset(lambda: rearmed.append(True))
    assert sw.reset() is ResetOutcome.ALREADY_ARMED
    sw.trigger("manual", "x")
    await settle()
    assert sw.reset() is ResetOutcome.REFUSED
    assert sw.state is State.KILLING
    runner.release.set()
    await settle()
    assert sw.reset() is ResetOutcome.REARMED
    assert sw.state.value == "ARMED"
    assert rearmed == [True]
    await store.flush()
    assert store.latch()[0] is False


async def test_drain_waits_for_the_kill_within_grace(switch: Any) -> None:
    """drain() refuses new triggers and reports whether the kill ended within the grace."""
    sw, runner, _ = switch
    clock = sw.clock
    sw.trigger("manual", "x")
    await settle()
    draining = asyncio.create_task(sw.drain(5.0))
    await clock.advance(4.9)
    assert not draining.done()
    assert sw.trigger("manual", "late") is TriggerOutcome.COALESCED
    await clock.advance(0.2)
    assert await draining is False
    runner.release.set()
    await settle()
    assert await sw.drain(5.0) is True


async def test_trigger_while_stopping_is_recorded_at_once(switch: Any) -> None:
    """A trigger after drain() began is never lost: latched and recorded before any send."""
    sw, runner, store = switch
    assert await sw.drain(5.0) is True
    with capture_logs() as logs:
        assert sw.trigger("signal", "SIGUSR1") is TriggerOutcome.STOPPING
    assert sw.state is State.KILLING
    assert [e["outcome"] for e in logs if e["event"] == "trigger.fired"] == ["stopping"]
    await store.flush()  # before the kill ran at all: a stop now leaves it to resume
    tripped, kill_id = store.latch()
    assert tripped
    assert kill_id == sw.current_kill_id
    assert store.unfinished_kill().kill_id == kill_id
    await settle()
    assert runner.plans  # the runner announced after its "send": recorded once, not twice
    assert [e["outcome"] for e in logs if e["event"] == "trigger.fired"] == ["stopping"]


def test_restore_resumes_an_unfinished_kill(tmp_path: Path) -> None:
    """restore() with an unfinished kill plans only the unacknowledged sweeps, resumed."""
    store = StateStore(tmp_path / "s.db")
    store.open()
    store.start_kill("k1", "signal", "SIGUSR1", 1.0, [("EX", "A"), ("EX", "B")])
    store.sweep_acked("k1", "EX", "A", ["o1", "o2"], 2.0)
    store.order_status("k1", "o1", "CANCELLED", 3.0)
    sw = KillSwitch(FakeRunner(), store, FakeClock())  # type: ignore[arg-type]
    sw.restore(True, store.last_kill(), store.unfinished_kill())
    assert sw.state is State.KILLING
    plan = sw._pending
    assert plan is not None
    assert plan.resumed
    assert plan.sweeps == [("EX", "B")]
    assert plan.known_orders == {"o1": "CANCELLED", "o2": ""}
    assert plan.first_polled == {"o1": 3.0}
    store.close()


async def test_forced_reset_abandons_the_running_kill(switch: Any) -> None:
    """reset(force=True) while KILLING cancels the kill, logs kill.abandoned, closes its
    record, clears the latch and re-arms; the next trigger starts a new kill."""
    sw, runner, store = switch
    kill_id = sw.trigger("manual", "x") and sw.current_kill_id
    await settle()
    with capture_logs() as logs:
        assert sw.reset(force=True) is ResetOutcome.ABANDONED
        await settle()
    assert sw.state is State.ARMED
    assert runner.cancelled == [kill_id]
    [abandoned] = [e for e in logs if e["event"] == "kill.abandoned"]
    assert abandoned["kill_id"] == kill_id
    assert abandoned["why"] == "reset --force"
    assert abandoned["stuck"] == "symbol suspended"
    await store.flush()
    assert store.latch()[0] is False
    assert store.unfinished_kill() is None
    last = store.last_kill()
    assert last is not None
    assert last.summary is not None
    assert last.summary["abandoned"] is True
    assert sw.trigger("manual", "again") is TriggerOutcome.STARTED
    await settle()
    assert len(runner.plans) == 2
    assert sw.state.value == "KILLING"


async def test_explicit_trigger_after_the_sweeps_were_answered_resweeps(switch: Any) -> None:
    """KILLING, sweeps answered: an explicit trigger sweeps again (resweep: true); an
    automatic one, or one while the sweeps are unanswered, is only coalesced."""
    sw, runner, _store = switch
    sw.trigger("signal", "SIGUSR1")
    await settle()
    with capture_logs() as logs:
        assert sw.trigger("signal", "SIGUSR1") is TriggerOutcome.COALESCED  # unanswered yet
        runner.answered = True
        assert sw.trigger("manual", "again") is TriggerOutcome.COALESCED
        assert sw.trigger("heartbeat", "timeout") is TriggerOutcome.COALESCED
    fired = [e for e in logs if e["event"] == "trigger.fired"]
    assert [e.get("resweep", False) for e in fired] == [False, True, False]
    assert all(e["coalesced"] for e in fired)
    assert runner.resweeps == 1
    runner.release.set()

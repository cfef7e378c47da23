"""The one retry policy by error kind, and whose word "outcome unknown" is (the error's)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from killswitch.exchange.errors import (
    ConnectionFailed,
    ExchangeError,
    RateLimited,
    RejectedRequest,
    RequestTimeout,
    ServerError,
)
from killswitch.kill.plan import KillPlan, plan_sweeps
from killswitch.kill.retry import REJECT_FIRST, REJECT_MAX, Retry
from killswitch.kill.runner import KillRunner
from killswitch.store.state import StateStore
from tests.fake_venue import VenueFake
from tests.fakes import FakeClock
from tests.test_kill import START, make_config


def test_each_kind_has_its_cadence() -> None:
    """429 at once; a 4xx from REJECT_FIRST doubling to REJECT_MAX; the rest jittered backoff."""
    retry = Retry(0.2, 10.0, random.Random(1))
    assert retry.failed(RateLimited("cancel_all", None)).delay == 0.0
    rejected = [
        retry.failed(RejectedRequest("cancel_all", "HTTP 422", status=422)).delay for _ in range(10)
    ]
    assert rejected[:3] == [REJECT_FIRST, 2 * REJECT_FIRST, 4 * REJECT_FIRST]
    assert rejected[-1] == REJECT_MAX
    backoff = [retry.failed(ServerError("cancel_all", "HTTP 502")).delay for _ in range(8)]
    assert 0.1 <= backoff[0] <= 0.2  # equal jitter: never 0
    assert all(5.0 <= d <= 10.0 for d in backoff[6:])  # capped at retry_max
    assert retry.attempt == 19


def test_outcome_unknown_is_the_errors_own_flag() -> None:
    """A refused connection sent nothing (known); a lost connection, 5xx or timeout may
    have cancelled (unknown): the policy never re-derives it from the class."""
    retry = Retry(0.2, 10.0, random.Random(1))
    refused = ConnectionFailed("cancel_all", "refused", outcome_unknown=False)
    assert retry.failed(refused).outcome_unknown is False
    assert retry.failed(ConnectionFailed("cancel_all", "reset")).outcome_unknown is True
    assert retry.failed(ServerError("cancel_all", "HTTP 503")).outcome_unknown is True
    assert retry.failed(RequestTimeout("cancel_all", "5 s")).outcome_unknown is True
    assert retry.failed(refused).rejected == 0  # retried soon, not slowly as a refusal


async def _lost_flag(tmp_path: Path, error: ExchangeError) -> tuple[bool, int]:
    """(the sweep recorded lost, closed-orders calls) after one failed cancel_all; the
    outcomes take one closed page, a recovery of a lost answer one more."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    venue.seed("BTC", 5)
    venue.fail("cancel_all", error)
    store = StateStore(tmp_path / "state.db")
    store.open()
    config = make_config()
    runner = KillRunner(config, venue, store, clock, listings=venue)
    plan = KillPlan("k1", "manual", "t", plan_sweeps(config.targets), started_at=clock.time())
    store.start_kill("k1", "manual", "t", clock.time(), plan.sweeps)
    task = asyncio.create_task(runner.run(plan))
    await clock.run_until(task)
    assert task.result().classified.result()["cancelled"] == 5
    await store.flush()
    record = store.last_kill()
    store.close()
    assert record is not None
    return record.sweeps[0].lost, venue.count("closed_orders")


async def test_a_refused_connection_does_not_mark_the_sweep_lost(tmp_path: Path) -> None:
    """cancel_all refused before a byte left: retried, not lost, no recovery listing."""
    refused = ConnectionFailed("cancel_all", "refused", outcome_unknown=False)
    assert await _lost_flag(tmp_path, refused) == (False, 1)


async def test_a_5xx_marks_the_sweep_lost_and_recovers(tmp_path: Path) -> None:
    """cancel_all answered 502: the cancel may have happened: lost, and recovered by listing."""
    lost, recovered = await _lost_flag(tmp_path, ServerError("cancel_all", "HTTP 502"))
    assert lost is True
    assert recovered == 2

"""The kill engine on a virtual clock: sweeps by error kind, the flat proof, confirmation
from listings, against an in-process venue that records every call."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from killswitch.config.load import parse_config
from killswitch.config.model import Config
from killswitch.exchange.errors import (
    RateLimited,
    RejectedRequest,
    RequestTimeout,
    ServerError,
)
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.kill.events import Announcer
from killswitch.kill.plan import ANNOUNCE_WITHIN, KillPlan, plan_sweeps
from killswitch.kill.proof import RELIST_MAX
from killswitch.kill.retry import REJECT_FIRST
from killswitch.kill.runner import KillRunner
from killswitch.store.state import StateStore
from tests.fake_venue import VenueFake
from tests.fakes import FakeClock

START = 1_000.0
Logs = list[MutableMapping[str, Any]]


def make_config(symbols: list[str] | None = None, **confirm: Any) -> Config:
    return parse_config(
        {
            "targets": [{"exchange": "EX", "symbols": symbols or []}],
            "confirm": {"first_poll_delay": 0.25, **confirm},
        }
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    s.open()
    yield s
    s.close()


async def kill(
    config: Config,
    venue: VenueFake,
    store: StateStore,
    *,
    listings: bool = True,
    plan: KillPlan | None = None,
    announcer: Announcer | None = None,
) -> tuple[dict[str, Any], Logs]:
    """Run one kill to its end on the virtual clock; its summary and events."""
    runner = KillRunner(config, venue, store, venue.clock, listings=venue if listings else None)
    if plan is None:
        sweeps = plan_sweeps(config.targets)
        plan = KillPlan("k1", "manual", "test", sweeps, started_at=venue.clock.time())
        store.start_kill("k1", "manual", "test", venue.clock.time(), sweeps)
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run(plan, announcer))
        await venue.clock.run_until(task)
    return task.result().classified.result(), logs  # the final counts (kill.classified)


def named(logs: Logs, name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def assert_matches_truth(summary: dict[str, Any], venue: VenueFake) -> None:
    truth = venue.truth()
    assert summary["cancelled"] == truth.get("CANCELLED", 0)
    assert summary["filled"] == truth.get("EXECUTED", 0)
    assert summary["partially_filled"] == truth.get("PARTIALLY_EXECUTED", 0)
    assert summary["orders"] == len(venue.orders)
    assert summary["unknown"] == summary["unconfirmed"] == summary["other"] == 0
    assert not set(truth) & {"RAISED", "OPEN", "CANCELLATION_RAISED"}


async def test_flat_proof_confirms_from_listings_without_status_polls(store: StateStore) -> None:
    """200 orders over 2 symbols: kill.flat once both symbols list empty; every outcome
    comes from the listings (no status poll), partial fills counted as partially_filled."""
    venue = VenueFake(FakeClock(START))
    venue.seed("BTC", 100)
    venue.seed("ETH", 70)
    venue.seed("ETH", 30, final="PARTIALLY_EXECUTED")
    summary, logs = await kill(make_config(["BTC", "ETH"]), venue, store)

    assert_matches_truth(summary, venue)
    assert summary["partially_filled"] == 30
    assert summary["flat"] is True
    assert summary["leftover"] == 0
    assert summary["polls"] == 0
    assert summary["listed"] == 200
    [flat] = named(logs, "kill.flat")
    assert flat["duration_ms"] == summary["flat_ms"] <= summary["duration_ms"]
    assert venue.count("cancel_all") == 2
    assert venue.count("order_status") == 0
    assert venue.count("open_orders") <= 6  # one listing while cancelling, one empty, per symbol
    assert venue.count("closed_orders") <= 2 * 3
    assert named(logs, "flat.leftover") == []


async def test_per_id_polling_only_when_listings_are_off(store: StateStore) -> None:
    """confirm.use_listings = false: no listing call, every order polled, no flat proof."""
    venue = VenueFake(FakeClock(START))
    venue.seed("BTC", 10)
    summary, logs = await kill(make_config(use_listings=False), venue, store)

    assert_matches_truth(summary, venue)
    assert summary["flat"] is False
    assert summary["polls"] >= 10
    assert venue.count("open_orders") == venue.count("closed_orders") == 0
    assert named(logs, "kill.flat") == []


async def test_orders_placed_during_the_kill_are_leftovers_swept_again(
    store: StateStore,
) -> None:
    """Orders that appear after the sweep was answered are listed, logged as flat.leftover,
    swept again scoped to their symbol, and confirmed; counted in leftover."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    venue.seed("BTC", 20)
    placed: list[str] = []

    def strategy_keeps_trading() -> None:
        if not placed:
            placed.extend(venue.seed("ETH", 3))

    venue.on_cancel_all = strategy_keeps_trading
    summary, logs = await kill(make_config(), venue, store)

    assert_matches_truth(summary, venue)
    [leftover] = named(logs, "flat.leftover")
    assert (leftover["exchange"], leftover["symbol"]) == ("EX", "ETH")
    assert leftover["order_ids"] == sorted(placed)
    assert summary["leftover"] == 3
    assert summary["flat"] is True
    assert [c.detail for c in venue.calls if c.endpoint == "cancel_all"] == [None, "ETH"]
    await store.flush()
    record = store.last_kill()
    assert record is not None
    assert record.leftovers == set(placed)


async def test_a_leftover_no_answer_names_is_swept_until_one_does(store: StateStore) -> None:
    """A 200 that names nothing (the orders stay open) is no proof: the listing finds the
    orders as leftovers, and they are swept again, scoped, until an answer names them."""
    clock = FakeClock(START)
    venue = VenueFake(clock, ignore_cancels=2)  # the unscoped sweep and the first resweep
    venue.seed("BTC", 5)
    summary, logs = await kill(make_config(), venue, store)

    assert_matches_truth(summary, venue)
    assert summary["cancelled"] == 5
    assert summary["leftover"] == 5
    assert summary["flat"] is True
    assert [c.detail for c in venue.calls if c.endpoint == "cancel_all"] == [None, "BTC", "BTC"]
    assert len(named(logs, "flat.leftover")) == 2


async def test_an_order_that_never_cancels_ends_unconfirmed_not_flat(store: StateStore) -> None:
    """An order the venue keeps open whatever is sent: swept inside the budget until its
    deadline, then unconfirmed; the kill completes with flat false (never hangs)."""
    clock = FakeClock(START)
    venue = VenueFake(clock, ignore_cancels=10_000)
    venue.seed("BTC", 1)
    summary, logs = await kill(make_config(deadline=30), venue, store)

    assert summary["unconfirmed"] == 1
    assert summary["flat"] is False
    assert named(logs, "kill.flat") == []
    assert named(logs, "flat.not_proven")


@pytest.mark.parametrize("name_cancelling", [False, True])
async def test_lost_answer_is_an_unknown_outcome_the_listings_resolve(
    store: StateStore, name_cancelling: bool
) -> None:
    """A cancel_all that cancelled everything but answered 502 is retried; the orders it
    cancelled are still found (leftovers while cancelling, closed pages once cancelled)
    and counted: never "nothing was cancelled"."""
    clock = FakeClock(START)
    venue = VenueFake(clock, cancel_delay=0.01, name_cancelling=name_cancelling)
    venue.seed("BTC", 30)
    venue.fail("cancel_all", ServerError("cancel_all", "HTTP 502", status=502), lost=True)
    summary, logs = await kill(make_config(), venue, store)

    assert_matches_truth(summary, venue)
    assert summary["cancelled"] == 30
    [failed] = named(logs, "cancel_all.failed")
    assert failed["outcome_unknown"] is True
    recovered = {i for e in named(logs, "flat.recovered") for i in e["order_ids"]}
    leftovers = {i for e in named(logs, "flat.leftover") for i in e["order_ids"]}
    assert recovered | leftovers == set(venue.orders)
    await store.flush()
    record = store.last_kill()
    assert record is not None
    assert [s.lost for s in record.sweeps] == [True]


async def test_429_is_retried_at_once_and_timeouts_back_off(store: StateStore) -> None:
    """429 on cancel_all: the next attempt at once (the client deferred the limiter);
    a timeout: retried after a backoff, marked outcome unknown."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    venue.seed("BTC", 5)
    venue.fail("cancel_all", RateLimited("cancel_all", None))
    venue.fail("cancel_all", RequestTimeout("cancel_all", "no answer"))
    summary, logs = await kill(make_config(), venue, store)

    assert_matches_truth(summary, venue)
    times = [c.at for c in venue.calls if c.endpoint == "cancel_all"]
    assert times[1] == times[0]
    assert times[2] > times[1]
    failed = named(logs, "cancel_all.failed")
    assert [(e["error"], e["outcome_unknown"]) for e in failed] == [
        ("rate_limited", False),
        ("timeout", True),
    ]
    assert named(logs, "exchange.rejected") == []


async def test_rejected_sweep_is_retried_slowly_forever_and_reported_stuck(
    store: StateStore,
) -> None:
    """A 422 on one symbol: exchange.rejected with the venue's message, retried at 5 s,
    10 s, 20 s ... (never given up), the runner reports why it is stuck; the other
    symbol is proven flat meanwhile; once the venue accepts, the kill completes; the spell
    is one kill.stuck event and one kill.unstuck."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    venue.seed("BTC", 5)
    venue.seed("ETH", 5)
    error = RejectedRequest("cancel_all", "HTTP 422", status=422, message="symbol ETH is suspended")
    config = make_config(["BTC", "ETH"])
    venue.fail("cancel_all:ETH", error, count=6)
    runner = KillRunner(config, venue, store, clock, listings=venue)
    plan = KillPlan("k1", "manual", "t", plan_sweeps(config.targets), started_at=clock.time())
    store.start_kill("k1", "manual", "t", clock.time(), plan.sweeps)
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run(plan))
        await clock.advance(30.0)
        stuck = runner.stuck_info()
        await clock.run_until(task)
    summary = task.result().classified.result()

    assert stuck is not None
    assert stuck.why == "symbol ETH is suspended"
    assert stuck.http_status == 422
    assert stuck.next_retry_in > 0
    rejected = named(logs, "exchange.rejected")
    assert len(rejected) == 6
    assert {e["message"] for e in rejected} == {"symbol ETH is suspended"}
    assert [e["retry_in"] for e in rejected] == [REJECT_FIRST * 2**i for i in range(6)]
    (spell,) = named(logs, "kill.stuck")  # one event for the whole spell, not one per retry
    assert (spell["why"], spell["http_status"]) == ("symbol ETH is suspended", 422)
    assert len(named(logs, "kill.unstuck")) == 1
    eth = [c.at for c in venue.calls if c.endpoint == "cancel_all" and c.detail == "ETH"]
    gaps = [b - a for a, b in itertools.pairwise(eth)]
    assert gaps == pytest.approx([REJECT_FIRST * 2**i for i in range(6)])
    assert_matches_truth(summary, venue)
    assert runner.stuck_info() is None
    assert len(named(logs, "kill.flat")) == 1


class Gate:
    """The status limiter as the confirmer reads it: ``free`` slots now."""

    def __init__(self, free: int) -> None:
        self.free = free

    def next_free_in(self) -> float:
        return 0.0

    def available(self) -> int:
        return self.free


async def test_closed_pages_and_status_polls_share_the_work_when_pages_run_short(
    store: StateStore,
) -> None:
    """When the closed-order pages needed do not fit the closed budget now, the oldest ids
    go to status polls at the same time (what the status budget has now covers the
    rest); the pages find the newest."""
    clock = FakeClock(START)
    venue = VenueFake(clock, closed_budget_now=2, cancel_delay=1.0)
    ids = venue.seed("BTC", 110)  # the first seeded is the oldest, the last in the pages
    config = make_config()
    runner = KillRunner(config, venue, store, clock, listings=venue, status_gate=Gate(20))
    plan = KillPlan("k1", "manual", "t", plan_sweeps(config.targets), started_at=clock.time())
    store.start_kill("k1", "manual", "t", clock.time(), plan.sweeps)
    task = asyncio.create_task(runner.run(plan))
    await clock.run_until(task)
    summary = task.result().classified.result()

    assert_matches_truth(summary, venue)
    polled = {c.detail for c in venue.calls if c.endpoint == "order_status"}
    assert polled == set(ids[:12])  # 110 - 2 pages x 49 = 12 to spill; 20 polls free
    assert summary["listed"] == 98


async def test_closed_pages_alone_when_they_fit(store: StateStore) -> None:
    """When the pages fit the closed budget, no status request is spent even with status
    budget free: fewer requests."""
    clock = FakeClock(START)
    venue = VenueFake(clock, cancel_delay=1.0)
    venue.seed("BTC", 110)
    config = make_config()
    runner = KillRunner(config, venue, store, clock, listings=venue, status_gate=Gate(20))
    plan = KillPlan("k1", "manual", "t", plan_sweeps(config.targets), started_at=clock.time())
    store.start_kill("k1", "manual", "t", clock.time(), plan.sweeps)
    task = asyncio.create_task(runner.run(plan))
    await clock.run_until(task)
    summary = task.result().classified.result()

    assert_matches_truth(summary, venue)
    assert venue.count("order_status") == 0
    assert venue.count("closed_orders") == 3


async def test_listing_failures_are_retried(store: StateStore) -> None:
    """A failing open-orders listing is retried (flat.list_failed) until it answers."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    venue.seed("BTC", 5)
    venue.fail("open_orders", ServerError("open_orders", "HTTP 503", status=503), count=2)
    summary, logs = await kill(make_config(), venue, store)

    assert_matches_truth(summary, venue)
    assert len(named(logs, "flat.list_failed")) == 2
    assert summary["flat"] is True


async def test_resumed_kill_reruns_the_flat_proof(store: StateStore) -> None:
    """A kill resumed from the store (one sweep acked, one leftover sweep unacked) re-sends
    the unacked sweep, confirms the pending ids, re-runs the flat proof, and counts the
    stored leftovers."""
    clock = FakeClock(START)
    venue = VenueFake(clock)
    btc = venue.seed("BTC", 4)
    eth = venue.seed("ETH", 2)
    await venue.cancel_all("EX", "BTC")  # acked before the crash
    store.start_kill("k1", "manual", "t", clock.time(), [("EX", None)])
    store.sweep_acked("k1", "EX", None, btc, clock.time())
    store.leftover_sweep("k1", "EX", "ETH", eth, clock.time())
    await store.flush()
    record = store.unfinished_kill()
    assert record is not None
    plan = KillPlan(
        "k1",
        "manual",
        "t",
        [(s.exchange, s.symbol) for s in record.sweeps if not s.acked],
        known_orders=record.orders,
        resumed=True,
        started_at=record.started_at,
        order_units=record.order_units,
        leftovers=record.leftovers,
    )
    summary, logs = await kill(make_config(), venue, store, plan=plan)

    assert plan.sweeps == [("EX", "ETH")]
    assert named(logs, "kill.resumed")[0]["pending_orders"] == 6
    assert_matches_truth(summary, venue)
    assert summary["leftover"] == 2
    assert summary["flat"] is True
    assert [c.detail for c in venue.calls if c.endpoint == "cancel_all"] == ["BTC", "ETH"]


SCHEMA_0_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE kills (kill_id TEXT PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL,
    started_at REAL NOT NULL, completed_at REAL, summary TEXT);
CREATE TABLE sweeps (kill_id TEXT NOT NULL, exchange TEXT NOT NULL, symbol TEXT NOT NULL,
    acked_at REAL, order_count INTEGER, PRIMARY KEY (kill_id, exchange, symbol));
CREATE TABLE orders (order_id TEXT NOT NULL, kill_id TEXT NOT NULL, exchange TEXT NOT NULL,
    symbol TEXT NOT NULL, status TEXT NOT NULL, updated_at REAL NOT NULL,
    first_polled_at REAL, PRIMARY KEY (kill_id, order_id));
CREATE TABLE sends (endpoint TEXT NOT NULL, sent_at REAL NOT NULL);
INSERT INTO kills VALUES ('old', 'signal', 'SIGUSR1', 100.0, NULL, NULL);
INSERT INTO sweeps VALUES ('old', 'EX', '', 101.0, 1);
INSERT INTO orders VALUES ('o1', 'old', 'EX', '', 'CANCELLATION_RAISED', 101.0, 101.5);
"""


async def test_a_state_db_from_0_1_opens_and_resumes(tmp_path: Path) -> None:
    """A state.db written by 0.1 gains the new columns on open; its unfinished kill reads
    back as before (no leftovers, nothing lost) and takes leftover records."""
    import sqlite3

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_0_1)
    store = StateStore(path)
    store.open()
    try:
        record = store.unfinished_kill()
        assert record is not None
        assert record.orders == {"o1": "CANCELLATION_RAISED"}
        assert record.order_units == {"o1": ("EX", None)}
        assert record.leftovers == set()
        assert [(s.acked, s.leftover, s.lost) for s in record.sweeps] == [(True, False, False)]
        store.leftover_sweep("old", "EX", "BTC", ["o2"], 102.0)
        store.sweep_lost("old", "EX", None)
        await store.flush()
        again = store.unfinished_kill()
        assert again is not None
        assert again.leftovers == {"o2"}
        assert {(s.symbol, s.acked, s.leftover, s.lost) for s in again.sweeps} == {
            (None, True, False, True),
            ("BTC", False, True, False),
        }
    finally:
        store.close()
    reopened = StateStore(path)
    reopened.open()  # the migration is idempotent
    reopened.close()


async def test_relisting_spares_the_last_of_the_open_orders_budget(store: StateStore) -> None:
    """With the open-orders budget nearly spent, the flat proof waits the longest relist
    interval before listing (the orders finish cancelling instead of being listed)."""
    clock = FakeClock(START)
    venue = VenueFake(clock, open_budget_now=1)
    venue.seed("BTC", 5)
    summary, _ = await kill(make_config(), venue, store)

    listings = [c.at for c in venue.calls if c.endpoint == "open_orders"]
    assert listings[0] - START >= RELIST_MAX
    assert len(listings) == 1  # by then every order was cancelled: one empty listing
    assert summary["flat"] is True


class _HeldVenue(VenueFake):
    """A venue whose ``cancel_all`` answers only once the test lets it; it records
    what happened in order, with the kill's announcement."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.answer = asyncio.Event()
        self.answer.set()
        self.order: list[str] = []

    async def cancel_all(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> list[str]:
        self.order.append("sent")
        if on_sent is not None:
            on_sent()
        for _ in range(5):  # the round trip: a few loop turns
            await asyncio.sleep(0)
        await self.answer.wait()
        named = await super().cancel_all(exchange, symbol)
        self.order.append("answered")
        return named


class _Announcer:
    """The switch's part in a kill's announcement: recorded, and the kill's record queued."""

    def __init__(self, venue: _HeldVenue, store: StateStore) -> None:
        self.venue = venue
        self.store = store

    def announce(self, plan: KillPlan) -> None:
        self.venue.order.append("announce")
        self.store.start_kill("k1", "manual", "test", self.venue.clock.time(), plan.sweeps)


def _plan(config: Config) -> KillPlan:
    return KillPlan("k1", "manual", "test", plan_sweeps(config.targets))


async def test_the_kill_announces_after_its_first_answer(store: StateStore) -> None:
    """Nothing but the requests runs between the trigger and the first answer: the
    announcement (events, durable record) and kill.started come after it."""
    config = make_config()
    venue = _HeldVenue(FakeClock(START))
    venue.seed("S", 3)
    summary, logs = await kill(
        config, venue, store, plan=_plan(config), announcer=_Announcer(venue, store)
    )
    assert venue.order[:3] == ["sent", "answered", "announce"]
    events = [e["event"] for e in logs]
    assert events.index("kill.started") < events.index("cancel_all.accepted")
    assert summary["cancelled"] == 3
    # The kill's record went first: the acknowledgement that followed it is durable
    # (a restart must not send cancel_all again).
    await store.flush()
    record = store.last_kill()
    assert record is not None
    assert [s.acked for s in record.sweeps] == [True]


async def test_an_unanswered_kill_is_announced_all_the_same(store: StateStore) -> None:
    """A first answer that does not come holds the announcement ANNOUNCE_WITHIN (on the
    injected clock), no more: kill.started and the durable record while the request is
    still in flight."""
    config = make_config()
    venue = _HeldVenue(FakeClock(START))
    venue.seed("S", 2)
    venue.answer.clear()
    runner = KillRunner(config, venue, store, venue.clock, listings=venue)
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run(_plan(config), _Announcer(venue, store)))
        await venue.clock.advance(ANNOUNCE_WITHIN / 2)
        assert venue.order == ["sent"]
        await venue.clock.advance(ANNOUNCE_WITHIN)
        assert venue.order == ["sent", "announce"]
        assert [e["event"] for e in logs if e["event"] == "kill.started"] == ["kill.started"]
        await store.flush()
        assert store.unfinished_kill() is not None
        venue.answer.set()
        await venue.clock.run_until(task)
    assert task.result().summary["cancelled"] == 2


async def test_a_large_book_is_confirmed_by_polls_then_listed_once(store: StateStore) -> None:
    """1,000 orders, status 500/s, listings 20/60 s: status polls confirm them (a listing
    of them would wait minutes), then one cheap listing proves the target flat."""
    clock = FakeClock(START)
    venue = VenueFake(clock, cancel_delay=0.3)
    venue.seed("BTC", 1000)
    config = make_config(max_concurrency=8)  # settle() lets ~50 loop turns run, not 64 exits
    budgets = {
        "open_orders": SlidingWindowLimiter("open_orders", 20, 60.0, clock),
        "order_status": SlidingWindowLimiter("order_status", 500, 1.0, clock),
    }
    runner = KillRunner(config, venue, store, clock, listings=venue, budgets=budgets)
    plan = KillPlan("k1", "manual", "t", plan_sweeps(config.targets), started_at=clock.time())
    store.start_kill("k1", "manual", "t", clock.time(), plan.sweeps)
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run(plan))
        await clock.run_until(task)
    result = task.result()

    assert_matches_truth(result.classified.result(), venue)
    done = result.summary
    assert done["cancelled"] + done["unclassified"] == 1000
    assert done["unclassified"] < 2 * 49  # listed once a page or two covered what was left
    assert done["flat"] is True
    assert venue.count("order_status") > 500  # most of them by status polls
    assert venue.count("open_orders") == 1  # listed once, when it was cheap: empty
    assert len(named(logs, "kill.flat")) == 1


async def test_a_burst_of_explicit_triggers_in_one_loop_turn_is_one_resweep(
    store: StateStore,
) -> None:
    """Once the sweeps were answered, the first explicit trigger resweeps and the ones
    handled in the same loop turn join it (the resweep is registered before resweep()
    returns): one more cancel_all, not one per trigger."""
    clock = FakeClock(START)
    venue = VenueFake(clock, cancel_delay=5.0)  # the kill stays unproven for a while
    venue.seed("BTC", 5)
    config = make_config()
    runner = KillRunner(config, venue, store, clock, listings=venue)
    plan = KillPlan("k1", "manual", "t", plan_sweeps(config.targets), started_at=clock.time())
    store.start_kill("k1", "manual", "t", clock.time(), plan.sweeps)
    task = asyncio.create_task(runner.run(plan))
    await clock.advance(1.0)  # the sweep was answered; the orders are still cancelling

    burst = [runner.resweep() for _ in range(5)]
    await clock.run_until(task)

    assert burst == [True, False, False, False, False]
    assert task.result().summary["resweeps"] == 1
    assert len([c for c in venue.calls if c.endpoint == "cancel_all"]) == 2

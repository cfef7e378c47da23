"""The sliding-window limiter keeps contract §3 on a virtual clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.exchange.ratelimit import SlidingWindowLimiter
from tests.fakes import FakeClock, settle

START = 1_000.0


def assert_window(
    times: Sequence[float], requests: int, per_seconds: float, *, prior: Sequence[float] = ()
) -> None:
    """Independent check: no ``requests + 1`` sends fit inside ``per_seconds``.

    With ``prior`` (sends from before a restart), only windows that end on one of
    ``times`` are checked: the limiter cannot undo what was sent before it started.
    """
    ordered = sorted([(t, False) for t in prior] + [(t, True) for t in times])
    for end in range(requests, len(ordered)):
        at, new = ordered[end]
        if not new:
            continue
        span = at - ordered[end - requests][0]
        assert span >= per_seconds, (
            f"{requests + 1} sends within {span!r} s < {per_seconds} s: "
            f"{[t for t, _ in ordered[end - requests : end + 1]]}"
        )


def ideal_grants(
    arrivals: Sequence[float], requests: int, window: float, history: Iterable[float] = ()
) -> list[float]:
    """What a tight first-come-first-served sliding-window limiter grants, from first principles."""
    sent = sorted(history)
    grants: list[float] = []
    for arrival in arrivals:
        at = arrival if not grants else max(arrival, grants[-1])  # nobody overtakes
        if len(sent) >= requests:
            at = max(at, sent[-requests] + window)
        grants.append(at)
        sent.append(at)
    return grants


async def _gather(aws: Iterable[Awaitable[object]]) -> object:
    return await asyncio.gather(*aws)


async def drive(clock: FakeClock, aws: Iterable[Awaitable[object]], limit: float = 1e7) -> None:
    """Run ``aws`` to completion on the virtual clock."""
    task = asyncio.create_task(_gather(aws))
    await clock.run_until(task, limit=limit)
    task.result()


# --------------------------------------------------------------------------- bursts and waits


async def test_full_burst_goes_at_once() -> None:
    """A full burst of ``requests`` leaves at once, without a wait."""
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 5, 60.0, clock)

    times = [await limiter.acquire() for _ in range(5)]

    assert times == [START] * 5
    assert limiter.waits == 0
    assert limiter.available() == 0


async def test_next_request_waits_for_oldest_plus_window_plus_margin() -> None:
    """Request N+1 leaves at the N-th latest send + per_seconds + margin, not a moment sooner."""
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 3, 60.0, clock, margin=0.5)
    await limiter.acquire()
    await clock.advance(10.0)
    await limiter.acquire()
    await limiter.acquire()

    assert limiter.next_free_in() == pytest.approx(50.5)
    fourth = asyncio.create_task(limiter.acquire())
    await clock.advance(50.4)
    assert not fourth.done()
    await clock.run_until(fourth)
    fifth = asyncio.create_task(limiter.acquire())
    await clock.run_until(fifth)

    assert fourth.result() == pytest.approx(START + 60.5)
    assert fifth.result() == pytest.approx(START + 70.5)  # held by the sends at START + 10
    assert clock.monotonic() == pytest.approx(START + 70.5)


async def test_concurrent_waiters_are_served_first_come_first_served() -> None:
    """Acquirers that arrive while others wait are served strictly in arrival order."""
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 2, 10.0, clock, margin=0.0)
    arrived: list[int] = []
    served: list[int] = []

    async def one(index: int, delay: float) -> None:
        await clock.sleep(delay)
        arrived.append(index)
        await limiter.acquire()
        served.append(index)

    rng = random.Random(7)
    delays = [rng.uniform(0.0, 30.0) for _ in range(30)]
    await drive(clock, (one(i, d) for i, d in enumerate(delays)))

    assert served == arrived
    assert sorted(arrived) == list(range(30))


async def test_long_random_run_never_exceeds_the_window() -> None:
    """1,000 sends from 50 tasks, random gaps, over hours: never N+1 in a window, no slot idle."""
    rng = random.Random(20_251_126)
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 10, 60.0, clock, margin=0.5)
    arrivals: list[float] = []
    grants: list[float] = []

    async def trader() -> None:
        for _ in range(20):
            # Mostly short gaps (saturating the limit), sometimes a long quiet spell.
            gap = rng.expovariate(1 / 900) if rng.random() < 0.1 else rng.expovariate(1 / 20)
            await clock.sleep(gap)
            arrivals.append(clock.monotonic())
            grants.append(await limiter.acquire())

    await drive(clock, (trader() for _ in range(50)))

    assert len(grants) == 1_000
    assert clock.monotonic() - START > 2 * 3600  # hours of simulated time
    assert_window(grants, 10, 60.0)
    assert_window(grants, 10, 60.5 - 1e-9)  # the margin is kept too
    assert grants == pytest.approx(ideal_grants(arrivals, 10, 60.5), abs=1e-6)
    assert limiter.waits > 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    requests=st.integers(1, 6),
    per_seconds=st.floats(0.5, 120.0),
    margin=st.sampled_from([0.0, 0.5]),
    gaps=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40),
    ages=st.lists(st.floats(0.0, 200.0), max_size=8),
)
def test_any_schedule_keeps_the_window_and_wastes_no_slot(
    requests: int, per_seconds: float, margin: float, gaps: list[float], ages: list[float]
) -> None:
    """Random arrivals and restart history: sends keep the window and leave as early as allowed."""
    window = per_seconds + margin

    async def scenario() -> tuple[list[float], list[float], list[float]]:
        clock = FakeClock(START)
        history = [START - age for age in ages]
        limiter = SlidingWindowLimiter(
            "t", requests, per_seconds, clock, margin=margin, history=history
        )
        arrivals: list[float] = []
        grants: list[float] = []

        async def one(offset: float) -> None:
            await clock.sleep(offset)
            arrivals.append(clock.monotonic())
            grants.append(await limiter.acquire())

        offsets = [sum(gaps[: i + 1]) for i in range(len(gaps))]
        await drive(clock, (one(o) for o in offsets))
        return history, arrivals, grants

    history, arrivals, grants = asyncio.run(scenario())

    assert_window(grants, requests, window - 1e-9, prior=history)
    if margin > 0:
        assert_window(grants, requests, per_seconds, prior=history)
    assert grants == pytest.approx(ideal_grants(arrivals, requests, window, history), abs=1e-6)


# --------------------------------------------------------------------------- restart history


async def test_history_from_before_a_restart_is_respected() -> None:
    """Send times restored after a restart count against the window; expired ones do not."""
    clock = FakeClock(START)
    history = [START - 100.0, START - 50.0, START - 20.0]  # the first is outside 60.5 s
    limiter = SlidingWindowLimiter("t", 3, 60.0, clock, margin=0.5, history=history)

    assert limiter.available() == 1
    first = await limiter.acquire()
    second = asyncio.create_task(limiter.acquire())
    third = asyncio.create_task(limiter.acquire())
    await clock.run_until(third)

    assert first == START
    assert second.result() == pytest.approx(START + 10.5)  # START - 50 + 60.5
    assert third.result() == pytest.approx(START + 40.5)  # START - 20 + 60.5


async def test_long_history_keeps_only_the_newest_sends() -> None:
    """A history longer than the limit is cut to its newest ``requests`` sends, in any order."""
    clock = FakeClock(START)
    history = [START - 1.0, START - 30.0, START - 2.0, START - 59.0, START - 3.0]
    limiter = SlidingWindowLimiter("t", 3, 60.0, clock, margin=0.0, history=history)

    task = asyncio.create_task(limiter.acquire())
    await clock.run_until(task)

    assert sorted(limiter.history())[:2] == [START - 2.0, START - 1.0]
    assert task.result() == pytest.approx(START - 3.0 + 60.0)


async def test_history_in_the_future_counts_as_now() -> None:
    """A restored send time later than now (another boot's clock) holds one window, not forever."""
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 1, 60.0, clock, margin=0.5, history=[START + 86_400.0])

    task = asyncio.create_task(limiter.acquire())
    await clock.run_until(task)

    assert task.result() == pytest.approx(START + 60.5)


# --------------------------------------------------------------------------- Retry-After


async def test_defer_until_holds_back_even_a_free_burst() -> None:
    """After ``defer_until`` nothing leaves before that time, then the free burst goes at once."""
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 5, 60.0, clock)
    limiter.defer_until(START + 30.0)

    assert limiter.available() == 0
    assert limiter.next_free_in() == pytest.approx(30.0)
    first = asyncio.create_task(limiter.acquire())
    await clock.advance(29.9)
    assert not first.done()
    await clock.run_until(first)

    assert first.result() == pytest.approx(START + 30.0)
    assert limiter.available() == 4


async def test_defer_until_pushes_a_sleeping_waiter_later() -> None:
    """A Retry-After later than the window's own wait holds a waiter that is already asleep."""
    clock = FakeClock(START)
    waits: list[float] = []
    limiter = SlidingWindowLimiter("t", 1, 10.0, clock, margin=0.0, on_wait=waits.append)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await clock.advance(2.0)

    limiter.defer_until(START + 25.0)
    await clock.advance(22.9)
    assert not waiter.done()
    await clock.run_until(waiter)

    assert waiter.result() == pytest.approx(START + 25.0)
    assert waits == pytest.approx([10.0, 23.0])  # the longer wait is reported when it is known


async def test_defer_until_never_brings_a_send_earlier() -> None:
    """An earlier Retry-After neither shortens a wait nor wakes the waiter for nothing."""
    clock = FakeClock(START)
    waits: list[float] = []
    limiter = SlidingWindowLimiter("t", 1, 10.0, clock, margin=0.0, on_wait=waits.append)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await settle()

    limiter.defer_until(START + 5.0)  # inside the window's own wait: changes nothing
    await clock.run_until(waiter)
    limiter.defer_until(START + 40.0)
    limiter.defer_until(START + 35.0)  # earlier than the standing deferral: ignored
    late = asyncio.create_task(limiter.acquire())
    await clock.run_until(late)

    assert waiter.result() == pytest.approx(START + 10.0)
    assert late.result() == pytest.approx(START + 40.0)
    assert waits == pytest.approx([10.0, 30.0])
    assert limiter.waits == 2


# --------------------------------------------------------------------------- callbacks, cancel


async def test_on_send_and_on_wait_report_every_send_and_wait() -> None:
    """``on_send`` is called at each admitted send, ``on_wait`` with each wait before it."""
    clock = FakeClock(START)
    sends: list[float] = []
    waits: list[float] = []
    limiter = SlidingWindowLimiter(
        "t",
        2,
        10.0,
        clock,
        margin=0.5,
        on_send=lambda: sends.append(clock.monotonic()),
        on_wait=waits.append,
    )

    await drive(clock, (limiter.acquire() for _ in range(5)))

    assert sends == pytest.approx([START, START, START + 10.5, START + 10.5, START + 21.0])
    assert waits == pytest.approx([10.5, 10.5])
    assert limiter.waits == 2


async def test_cancelled_waiter_leaks_no_slot_and_blocks_nobody() -> None:
    """Cancelling waiting acquirers (at the head or queued) uses no slot and delays no one else."""
    clock = FakeClock(START)
    limiter = SlidingWindowLimiter("t", 1, 10.0, clock, margin=0.0)
    await limiter.acquire()
    head = asyncio.create_task(limiter.acquire())
    queued = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    third = asyncio.create_task(limiter.acquire())
    await clock.advance(5.0)

    head.cancel()
    queued.cancel()
    await clock.run_until(second)
    await clock.run_until(third)

    assert head.cancelled()
    assert queued.cancelled()
    assert second.result() == pytest.approx(START + 10.0)
    assert third.result() == pytest.approx(START + 20.0)
    assert limiter.history() == pytest.approx([START + 20.0])
    assert clock.sleepers == 0


async def test_rejects_nonsense_limits() -> None:
    """A limit of zero requests, a zero window or a negative margin is refused."""
    clock = FakeClock(START)
    for requests, per_seconds, margin in ((0, 60.0, 0.5), (10, 0.0, 0.5), (10, 60.0, -1.0)):
        with pytest.raises(ValueError, match="requests >= 1"):
            SlidingWindowLimiter("t", requests, per_seconds, clock, margin=margin)


# --------------------------------------------------------------------------- 429 backoff


async def test_429_without_retry_after_waits_for_own_slot_plus_doubling_backoff() -> None:
    """Consecutive 429s hold the next send 1, 2, 4 ... s past the next free slot, capped."""
    clock = FakeClock(start=START)
    limiter = SlidingWindowLimiter("open_orders", 20, 8.0, clock, margin=0.0)
    waits = []
    for _ in range(5):
        sent = await limiter.acquire()
        waits.append(limiter.rate_limited(sent_at=sent))
        await clock.advance(limiter.next_free_in())
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]  # capped at per_seconds


async def test_429_waits_for_the_later_of_retry_after_and_the_window() -> None:
    """The wait is max(Retry-After, own next free slot) plus the backoff."""
    clock = FakeClock(start=START)
    limiter = SlidingWindowLimiter("cancel_all", 2, 60.0, clock, margin=0.5)
    await limiter.acquire()
    sent = await limiter.acquire()  # the window is now full until START + 60.5
    assert limiter.rate_limited(5.0, sent_at=sent) == pytest.approx(61.5)
    await clock.advance(61.5)
    sent = await limiter.acquire()
    assert limiter.rate_limited(30.0, sent_at=sent) == pytest.approx(32.0)  # Retry-After wins


async def test_any_other_answer_resets_the_backoff() -> None:
    """After a non-429 answer the next 429 backs off 1 s again."""
    clock = FakeClock(start=START)
    limiter = SlidingWindowLimiter("order_status", 20, 60.0, clock)
    for expected in (1.0, 2.0):
        sent = await limiter.acquire()
        assert limiter.rate_limited(sent_at=sent) == expected
        await clock.advance(expected)
    limiter.answered(sent_at=await limiter.acquire())
    sent = await limiter.acquire()
    assert limiter.rate_limited(sent_at=sent) == 1.0


async def test_a_burst_already_in_flight_counts_as_one_429() -> None:
    """Requests sent before the first 429 was seen do not double the backoff again."""
    clock = FakeClock(start=START)
    limiter = SlidingWindowLimiter("order_status", 20, 60.0, clock)
    sent = [await limiter.acquire() for _ in range(3)]
    await clock.advance(0.1)
    waits = [limiter.rate_limited(sent_at=t) for t in sent]
    assert waits == pytest.approx([1.0, 1.0, 1.0])
    limiter.answered(sent_at=sent[0])  # an old answer says nothing new
    assert limiter.consecutive_429 == 1


async def test_429_holds_a_waiting_acquire() -> None:
    """A request already waiting for its turn is held until the backoff has passed."""
    clock = FakeClock(start=START)
    limiter = SlidingWindowLimiter("closed_orders", 20, 60.0, clock)
    sent = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await settle()
    assert waiter.done()  # a slot was free
    limiter.rate_limited(sent_at=sent)
    nxt = asyncio.create_task(limiter.acquire())
    await clock.advance(0.9)
    assert not nxt.done()
    await clock.advance(0.2)
    assert nxt.done()
    assert nxt.result() == pytest.approx(START + 1.0)

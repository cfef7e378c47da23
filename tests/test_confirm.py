"""The confirmer polls every order id to a terminal status, on a virtual clock."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from killswitch.config.model import ConfirmConfig
from killswitch.exchange.errors import (
    BadResponse,
    ConnectionFailed,
    ExchangeError,
    OrderNotFound,
    RateLimited,
    RejectedRequest,
    RequestTimeout,
    ServerError,
)
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.kill.confirm import Confirmer, ConfirmResult, Outcome
from tests.fakes import FakeClock, settle

START = 1_000.0
EP = "order_status"
Answer = str | ExchangeError


@dataclass(frozen=True)
class Call:
    at: float
    order_id: str


class RecordingSource:
    """A status source that records every call with the clock time and tracks requests in flight.

    With a ``limiter`` it pays each request through it first, as the exchange
    client does; ``latency`` is the time the exchange takes to answer.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        latency: float = 0.0,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        self.clock = clock
        self.latency = latency
        self.limiter = limiter
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def order_status(self, order_id: str) -> str:
        self.calls.append(Call(self.clock.monotonic(), order_id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.limiter is not None:
                await self.limiter.acquire()
            answer = self.received(order_id)
            if self.latency:
                await self.clock.sleep(self.latency)
        finally:
            self.in_flight -= 1
        if isinstance(answer, ExchangeError):
            raise answer
        return answer

    def received(self, order_id: str) -> Answer:
        raise NotImplementedError

    def times(self, order_id: str) -> list[float]:
        return [c.at for c in self.calls if c.order_id == order_id]

    def polls_per_order(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call.order_id] = counts.get(call.order_id, 0) + 1
        return counts


class ScriptedSource(RecordingSource):
    """Answers each id from its script, one answer per call; the last answer repeats."""

    def __init__(
        self,
        clock: FakeClock,
        scripts: Mapping[str, Sequence[Answer]] | None = None,
        *,
        default: Sequence[Answer] = ("CANCELLED",),
        latency: float = 0.0,
    ) -> None:
        super().__init__(clock, latency=latency)
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.default = default

    def received(self, order_id: str) -> Answer:
        script = self.scripts.setdefault(order_id, list(self.default))
        return script.pop(0) if len(script) > 1 else script[0]


class ThrottledVenue(RecordingSource):
    """An exchange that strictly allows 20 requests per 60 s and answers 429 beyond.

    Each order shows ``CANCELLATION_RAISED`` until its ``cancelled_at`` time, then
    ``CANCELLED``.  The client side pays a real :class:`SlidingWindowLimiter`.
    """

    REQUESTS = 20
    PER_SECONDS = 60.0

    def __init__(self, clock: FakeClock, limiter: SlidingWindowLimiter) -> None:
        super().__init__(clock, latency=0.05, limiter=limiter)
        self.cancelled_at: dict[str, float] = {}
        self.arrived: list[float] = []
        self.rejected = 0

    def received(self, order_id: str) -> Answer:
        now = self.clock.monotonic()
        recent = [t for t in self.arrived if t > now - self.PER_SECONDS]
        self.arrived.append(now)
        if len(recent) >= self.REQUESTS:
            self.rejected += 1
            return RateLimited(EP, None)
        return "CANCELLED" if now >= self.cancelled_at[order_id] else "CANCELLATION_RAISED"


def config(**changes: Any) -> ConfirmConfig:
    """The defaults, but first polls go at once unless a test says otherwise."""
    return replace(ConfirmConfig(first_poll_delay=0.0), **changes)


async def finish(clock: FakeClock, confirmer: Confirmer, limit: float = 100_000.0) -> ConfirmResult:
    """Run ``confirmer`` to its end on the virtual clock (it must already be closed)."""
    task: asyncio.Task[Any] = asyncio.create_task(confirmer.run())
    await clock.run_until(task, limit=limit)
    result = task.result()
    assert isinstance(result, ConfirmResult)
    return result


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --------------------------------------------------------------------------- outcomes


async def test_counts_each_outcome_in_its_category() -> None:
    """CANCELLED → cancelled, EXECUTED → filled, PARTIALLY_EXECUTED (terminal on futures) →
    partially_filled, other terminal statuses → other."""
    clock = FakeClock(START)
    scripts: dict[str, Sequence[Answer]] = {
        "c1": ["OPEN", "CANCELLED"],
        "c2": ["CANCELLED"],
        "f1": ["OPEN", "EXECUTED"],
        "p1": ["CANCELLATION_RAISED", "PARTIALLY_EXECUTED"],
        "p2": ["PARTIALLY_EXECUTED", "CANCELLED"],  # never polled again: terminal at once
        "o1": ["EXPIRED"],
        "o2": ["REJECTED"],
        "o3": ["CANCELLATION_RAISED", "DISCARDED"],
        "o4": ["FAILED"],
        "gone": [OrderNotFound(EP, "404")],
        "stuck": ["OPEN"],
    }
    source = ScriptedSource(clock, scripts)
    confirmer = Confirmer(source, config(deadline=10.0), clock)

    confirmer.add(scripts)
    confirmer.close()
    result = await finish(clock, confirmer)

    assert (result.cancelled, result.filled, result.other) == (2, 1, 4)
    assert result.partially_filled == 2
    assert len(source.times("p2")) == 1
    assert (result.unknown, result.unconfirmed) == (1, 1)
    assert result.resolved == len(scripts)
    assert result.pending == ()
    assert result.outcomes["gone"] is Outcome.UNKNOWN
    assert result.outcomes["stuck"] is Outcome.UNCONFIRMED
    assert result.statuses == {
        "c1": "CANCELLED",
        "c2": "CANCELLED",
        "f1": "EXECUTED",
        "p1": "PARTIALLY_EXECUTED",
        "p2": "PARTIALLY_EXECUTED",
        "o1": "EXPIRED",
        "o2": "REJECTED",
        "o3": "DISCARDED",
        "o4": "FAILED",
        "gone": "",
        "stuck": "OPEN",
    }
    assert result.polls == len(source.calls)
    assert set(result.first_polled_at) == set(scripts)


async def test_terminal_statuses_come_from_config() -> None:
    """A venue's own terminal status named in config counts as other, not as an unknown value."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["OPEN", "DONE"], "b": ["EXPIRED", "CANCELLED"]})
    terminal = frozenset({"CANCELLED", "EXECUTED", "DONE"})
    confirmer = Confirmer(source, config(terminal_statuses=terminal), clock)

    with capture_logs() as logs:
        confirmer.add(["a", "b"])
        confirmer.close()
        result = await finish(clock, confirmer)

    assert result.outcomes == {"a": Outcome.OTHER, "b": Outcome.CANCELLED}
    assert len(source.times("b")) == 2  # EXPIRED is not terminal here
    assert events(logs, "order.status_unknown_value") == []


async def test_on_status_and_event_on_each_change_only() -> None:
    """``on_status`` and ``order.status`` (debug: kill.progress summarises) fire once per
    change of status, not once per poll."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["OPEN", "OPEN", "CANCELLATION_RAISED", "CANCELLED"]})
    seen: list[tuple[str, str]] = []
    confirmer = Confirmer(source, config(), clock, on_status=lambda i, s: seen.append((i, s)))

    with capture_logs() as logs:
        confirmer.add(["a"])
        confirmer.close()
        await finish(clock, confirmer)

    assert seen == [("a", "OPEN"), ("a", "CANCELLATION_RAISED"), ("a", "CANCELLED")]
    changes = events(logs, "order.status")
    assert [(e["order_id"], e["status"], e["log_level"]) for e in changes] == [
        ("a", "OPEN", "debug"),
        ("a", "CANCELLATION_RAISED", "debug"),
        ("a", "CANCELLED", "debug"),
    ]
    assert [e["log_level"] for e in events(logs, "order.status_unchanged")] == ["debug"]


# --------------------------------------------------------------------------- scheduling


async def test_every_id_is_polled_once_before_any_repoll() -> None:
    """The first polls of all ids, in the order added, come before any id's second poll."""
    clock = FakeClock(START)
    ids = [f"o{i}" for i in range(10)]
    source = ScriptedSource(clock, default=["OPEN", "OPEN", "CANCELLED"], latency=0.5)
    confirmer = Confirmer(source, config(max_concurrency=3), clock)

    confirmer.add(ids)
    confirmer.close()
    result = await finish(clock, confirmer)

    first = [c.order_id for c in source.calls[: len(ids)]]
    assert first == ids
    # Re-polls were due long before the last first poll went out (0.75 s vs ~1.5 s).
    assert source.calls[len(ids) - 1].at - START >= 1.5
    assert result.cancelled == len(ids)
    assert len(source.calls) == 3 * len(ids)


async def test_repoll_delays_back_off_to_the_cap_then_stop_at_the_deadline() -> None:
    """Re-polls come poll_interval, x2, x4 ... apart, capped; the last at the deadline."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["OPEN"]})
    cfg = config(poll_interval=0.25, max_poll_interval=2.0, deadline=20.0)
    confirmer = Confirmer(source, cfg, clock)

    confirmer.add(["a"])
    confirmer.close()
    result = await finish(clock, confirmer)

    expected = [START]
    delay = 0.25
    while expected[-1] < START + 20.0:
        expected.append(min(expected[-1] + delay, START + 20.0))
        delay = min(delay * 2, 2.0)
    assert gaps(expected)[:5] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert source.times("a") == pytest.approx(expected)
    assert result.unconfirmed == 1


async def test_max_concurrency_is_never_exceeded() -> None:
    """Never more than ``max_concurrency`` status requests in flight, and that many are used."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, default=["OPEN", "CANCELLED"], latency=1.0)
    confirmer = Confirmer(source, config(max_concurrency=5), clock)

    confirmer.add(f"o{i}" for i in range(50))
    confirmer.close()
    result = await finish(clock, confirmer)

    assert source.max_in_flight == 5
    assert result.cancelled == 50
    assert clock.monotonic() - START == pytest.approx(20.0)  # 100 polls, 5 at a time, 1 s each


async def test_ids_added_while_running_are_polled_at_once() -> None:
    """Ids from a later ``cancel_all`` ack are polled as soon as added; run ends after close."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["OPEN", "CANCELLED"]})
    confirmer = Confirmer(source, config(), clock)
    confirmer.add(["a", "b"])
    task = asyncio.create_task(confirmer.run())

    await clock.advance(10.0)
    assert confirmer.progress() == (2, 2)
    assert not task.done()  # not closed: more ids may come
    confirmer.add(["c", "b"])
    await settle()
    assert confirmer.progress() == (3, 3)
    confirmer.close()
    await settle(200)  # each idle worker takes its turn to see that all is done

    assert task.done()
    assert task.result().cancelled == 3
    assert source.times("c") == [START + 10.0]
    assert len(source.times("b")) == 1


async def test_duplicate_ids_are_polled_once() -> None:
    """An id returned twice (by one ack or by two) is one order, polled once."""
    clock = FakeClock(START)
    source = ScriptedSource(clock)
    confirmer = Confirmer(source, config(), clock)

    confirmer.add(["a", "a", "b"])
    confirmer.add(["b", "c"])
    confirmer.close()
    result = await finish(clock, confirmer)

    assert [c.order_id for c in source.calls] == ["a", "b", "c"]
    assert result.cancelled == 3
    assert confirmer.progress() == (3, 3)


async def test_jitter_is_bounded_and_reproducible_under_a_seed() -> None:
    """With jitter, re-poll delays stay within the fraction and repeat exactly for the same seed."""

    async def poll_times(seed: int) -> list[float]:
        clock = FakeClock(START)
        source = ScriptedSource(clock, {"a": ["OPEN"] * 6 + ["CANCELLED"]})
        cfg = config(poll_interval=1.0, max_poll_interval=4.0)
        confirmer = Confirmer(source, cfg, clock, jitter=0.2, rng=random.Random(seed))
        confirmer.add(["a"])
        confirmer.close()
        await finish(clock, confirmer)
        return source.times("a")

    first, again, other = await poll_times(7), await poll_times(7), await poll_times(8)

    assert first == again
    assert first != other
    for gap, nominal in zip(gaps(first), [1.0, 2.0, 4.0, 4.0, 4.0, 4.0], strict=True):
        assert 0.8 * nominal <= gap <= 1.2 * nominal


# --------------------------------------------------------------------------- failures


async def test_not_found_repeatedly_resolves_as_unknown() -> None:
    """``unknown_after`` 404s in a row make an order unknown; an answer in between resets it."""
    clock = FakeClock(START)
    nf = OrderNotFound(EP, "404", status=404)
    source = ScriptedSource(clock, {"gone": [nf], "late": [nf, nf, "OPEN", nf, nf, "CANCELLED"]})
    confirmer = Confirmer(source, config(unknown_after=3), clock)

    with capture_logs() as logs:
        confirmer.add(["gone", "late"])
        confirmer.close()
        result = await finish(clock, confirmer)

    assert result.outcomes == {"gone": Outcome.UNKNOWN, "late": Outcome.CANCELLED}
    assert len(source.times("gone")) == 3
    assert gaps(source.times("gone")) == pytest.approx([0.25, 0.5])  # retried with backoff
    [not_found] = events(logs, "order.not_found")
    assert (not_found["order_id"], not_found["attempts"]) == ("gone", 3)
    assert not_found["log_level"] == "warning"


async def test_deadline_resolves_unconfirmed_with_last_status() -> None:
    """Not terminal ``deadline`` s after its first poll: unconfirmed, logged with last status."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["OPEN", "CANCELLATION_RAISED"]})
    confirmer = Confirmer(source, config(deadline=5.0), clock)

    with capture_logs() as logs:
        confirmer.add(["a"])
        confirmer.close()
        result = await finish(clock, confirmer)

    assert result.outcomes == {"a": Outcome.UNCONFIRMED}
    assert result.statuses == {"a": "CANCELLATION_RAISED"}
    assert source.times("a")[-1] == pytest.approx(START + 5.0)
    assert clock.monotonic() == pytest.approx(START + 5.0)
    [event] = events(logs, "order.unconfirmed")
    assert event == {
        "event": "order.unconfirmed",
        "order_id": "a",
        "last_status": "CANCELLATION_RAISED",
        "log_level": "warning",
    }


async def test_unknown_status_value_is_logged_and_polled_again() -> None:
    """A status string the venue is not known to send is logged as a warning and polled again."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["OPEN", "WEIRD", "x" * 500, "CANCELLED"]})
    seen: list[tuple[str, str]] = []
    confirmer = Confirmer(source, config(), clock, on_status=lambda i, s: seen.append((i, s)))

    with capture_logs() as logs:
        confirmer.add(["a"])
        confirmer.close()
        result = await finish(clock, confirmer)

    assert result.outcomes == {"a": Outcome.CANCELLED}
    assert len(source.times("a")) == 4
    assert seen == [("a", "OPEN"), ("a", "CANCELLED")]  # garbage is never persisted
    unknown = events(logs, "order.status_unknown_value")
    assert [(e["value"], e["last_status"], e["log_level"]) for e in unknown] == [
        ("WEIRD", "OPEN", "warning"),
        ("x" * 64, "OPEN", "warning"),
    ]


async def test_exchange_errors_are_logged_and_retried_with_backoff() -> None:
    """Timeouts, 5xx, bad bodies, refusals, 429s are retried, never fatal; 429 adds no backoff."""
    clock = FakeClock(START)
    failures: list[Answer] = [
        RequestTimeout(EP, "timeout"),
        ServerError(EP, "HTTP 503", status=503),
        BadResponse(EP, "no status"),
        ConnectionFailed(EP, "reset"),
        RejectedRequest(EP, "HTTP 401", status=401),
        RateLimited(EP, 2.0),
    ]
    source = ScriptedSource(clock, {"a": [*failures, "CANCELLED"]})
    confirmer = Confirmer(source, config(poll_interval=0.25, max_poll_interval=5.0), clock)

    with capture_logs() as logs:
        confirmer.add(["a"])
        confirmer.close()
        result = await finish(clock, confirmer)

    assert result.outcomes == {"a": Outcome.CANCELLED}
    assert gaps(source.times("a")) == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 0.25])
    failed = events(logs, "order.poll_failed")
    assert [(e["error"], e["http_status"]) for e in failed] == [
        ("timeout", None),
        ("server_error", 503),
        ("bad_response", None),
        ("connection", None),
        ("rejected", 401),
        ("rate_limited", 429),
    ]
    assert {e["log_level"] for e in failed} == {"warning"}


class Broken(ScriptedSource):
    """Fails like a bug (not an ExchangeError) for the ids in ``broken``."""

    def __init__(self, clock: FakeClock, broken: set[str]) -> None:
        super().__init__(clock, default=["OPEN"])
        self.broken = broken

    def received(self, order_id: str) -> Answer:
        if order_id in self.broken:
            raise ZeroDivisionError(order_id)
        return super().received(order_id)


async def test_unexpected_exception_propagates_out_of_run() -> None:
    """A bug (an exception that is not an ExchangeError) ends ``run`` with that very exception."""
    clock = FakeClock(START)
    confirmer = Confirmer(Broken(clock, {"b"}), config(max_concurrency=4), clock)
    confirmer.add(["a", "b", "c"])
    confirmer.close()

    with pytest.raises(ZeroDivisionError, match="b"):
        await finish(clock, confirmer)
    assert clock.sleepers == 0


async def test_simultaneous_unexpected_exceptions_are_all_raised() -> None:
    """When several workers fail at once, none of the exceptions is dropped."""
    clock = FakeClock(START)
    confirmer = Confirmer(Broken(clock, {"a", "b"}), config(max_concurrency=4), clock)
    confirmer.add(["a", "b"])
    confirmer.close()

    with pytest.RaisesGroup(ZeroDivisionError, ZeroDivisionError):
        await finish(clock, confirmer)


async def test_on_status_failure_propagates_out_of_run() -> None:
    """If persisting a status fails, ``run`` fails too rather than confirming unrecorded orders."""
    clock = FakeClock(START)

    def persist(order_id: str, status: str) -> None:
        raise OSError("disk full")

    confirmer = Confirmer(ScriptedSource(clock), config(), clock, on_status=persist)
    confirmer.add(["a"])
    confirmer.close()

    with pytest.raises(OSError, match="disk full"):
        await finish(clock, confirmer)


# --------------------------------------------------------------------------- lifecycle


async def test_cancelling_run_stops_workers_and_keeps_progress() -> None:
    """Cancelling ``run`` stops every worker; the snapshot shows what is done and pending."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["CANCELLED"], "b": ["EXECUTED"]}, latency=10.0)
    confirmer = Confirmer(source, config(max_concurrency=2), clock)
    confirmer.add(["a", "b", "c", "d", "e"])
    confirmer.close()
    task = asyncio.create_task(confirmer.run())

    await clock.advance(15.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    snapshot = confirmer.snapshot()
    assert (snapshot.cancelled, snapshot.filled) == (1, 1)
    assert snapshot.pending == ("c", "d", "e")
    assert snapshot.polls == 4  # c and d were in flight when cancelled
    assert set(snapshot.first_polled_at) == {"a", "b", "c", "d"}
    assert confirmer.progress() == (2, 5)
    assert source.in_flight == 0
    assert clock.sleepers == 0


async def test_resume_counts_known_terminal_orders_without_a_request() -> None:
    """After a restart, orders whose last status was terminal are counted without polling."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"open": ["CANCELLED"], "new": ["CANCELLED"]})
    seen: list[tuple[str, str]] = []
    confirmer = Confirmer(source, config(), clock, on_status=lambda i, s: seen.append((i, s)))

    confirmer.add_known("done", "CANCELLED")
    confirmer.add_known("filled", "EXECUTED")
    confirmer.add_known("open", "OPEN")
    confirmer.add(["new", "done"])
    confirmer.close()
    result = await finish(clock, confirmer)

    assert sorted(c.order_id for c in source.calls) == ["new", "open"]
    assert (result.cancelled, result.filled) == (3, 1)
    assert seen == [("open", "CANCELLED"), ("new", "CANCELLED")]


async def test_resumed_order_keeps_its_deadline_but_gets_one_more_poll() -> None:
    """A resumed order keeps the deadline of its first poll before the restart, yet is polled."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"old": ["OPEN"], "recent": ["OPEN", "CANCELLED"]})
    confirmer = Confirmer(source, config(deadline=120.0), clock)
    earlier = clock.time() - 200.0

    confirmer.add_known("old", "OPEN", first_polled_at=earlier)
    confirmer.add_known("recent", "OPEN", first_polled_at=clock.time() - 10.0)
    confirmer.close()
    result = await finish(clock, confirmer)

    assert source.times("old") == [START]
    assert result.outcomes == {"old": Outcome.UNCONFIRMED, "recent": Outcome.CANCELLED}
    assert result.first_polled_at["old"] == earlier


async def test_closed_confirmer_with_no_ids_returns_at_once() -> None:
    """A kill whose ``cancel_all`` returned no ids confirms nothing and ends without polling."""
    clock = FakeClock(START)
    source = ScriptedSource(clock)
    confirmer = Confirmer(source, config(), clock)
    confirmer.close()

    result = await confirmer.run()

    assert result == ConfirmResult(0, 0, 0, 0, 0, 0, statuses={}, polls=0)
    assert source.calls == []


async def test_misuse_is_refused() -> None:
    """Adding ids after ``close``, running twice or a jitter of 1 or more is a programming error."""
    clock = FakeClock(START)
    confirmer = Confirmer(ScriptedSource(clock), config(), clock)
    confirmer.close()
    await confirmer.run()

    with pytest.raises(RuntimeError, match="closed"):
        confirmer.add(["a"])
    with pytest.raises(RuntimeError, match="closed"):
        confirmer.add_known("a", "OPEN")
    with pytest.raises(RuntimeError, match="once"):
        await confirmer.run()
    with pytest.raises(ValueError, match="jitter"):
        Confirmer(ScriptedSource(clock), config(), clock, jitter=1.0)


# --------------------------------------------------------------------------- the rate limit


def status_limiter(clock: FakeClock) -> SlidingWindowLimiter:
    return SlidingWindowLimiter("order_status", 20, 60.0, clock, margin=0.5)


async def test_forty_orders_confirm_inside_20_per_60s_with_few_polls() -> None:
    """Under a 20/60 s limit, 40 orders confirm in three windows, at most two polls each, no 429.

    Each order shows CANCELLED 1 s after the kill.  Window 1 (t=0): 20 first
    polls, all too early.  Window 2 (t=60.5): the 20 never-polled ids go before
    any re-poll, and are final.  Window 3 (t=121): one re-poll each for the first
    20.  So 60 polls, none parked in the limiter, none answered 429.
    """
    clock = FakeClock(START)
    limiter = status_limiter(clock)
    venue = ThrottledVenue(clock, limiter)
    ids = [f"o{i:02}" for i in range(40)]
    venue.cancelled_at = dict.fromkeys(ids, START + 1.0)
    confirmer = Confirmer(venue, config(), clock, gate=limiter)

    confirmer.add(ids)
    confirmer.close()
    result = await finish(clock, confirmer)

    assert result.cancelled == 40
    assert venue.rejected == 0
    assert limiter.waits == 0  # every request left the moment it was committed
    assert max(venue.polls_per_order().values()) == 2
    assert result.polls == len(venue.calls) == 60
    assert [c.order_id for c in venue.calls[:40]] == ids
    assert clock.monotonic() - START == pytest.approx(121.0 + 0.05)


async def test_ids_added_under_a_saturated_limit_go_before_repolls() -> None:
    """Ids from a later ack get the next free slots ahead of re-polls already due."""
    clock = FakeClock(START)
    limiter = status_limiter(clock)
    venue = ThrottledVenue(clock, limiter)
    early = [f"e{i:02}" for i in range(20)]
    late = [f"l{i:02}" for i in range(20)]
    venue.cancelled_at = {**dict.fromkeys(early, START + 1.0), **dict.fromkeys(late, START + 4.0)}
    confirmer = Confirmer(venue, config(), clock, gate=limiter)
    confirmer.add(early)
    task = asyncio.create_task(confirmer.run())

    await clock.advance(3.0)  # the first window is spent; every early id is due again
    confirmer.add(late)
    confirmer.close()
    await clock.run_until(task, limit=1_000.0)

    assert [c.order_id for c in venue.calls[:40]] == early + late
    assert [c.at for c in venue.calls[20:40]] == pytest.approx([START + 60.5] * 20)
    assert task.result().cancelled == 40
    assert venue.rejected == 0
    assert limiter.waits == 0


async def test_without_a_gate_the_limit_still_holds() -> None:
    """Without the gate, requests park in the client's limiter (waits) but the limit still holds."""
    clock = FakeClock(START)
    limiter = status_limiter(clock)
    venue = ThrottledVenue(clock, limiter)
    ids = [f"o{i:02}" for i in range(40)]
    venue.cancelled_at = dict.fromkeys(ids, START + 1.0)
    confirmer = Confirmer(venue, config(), clock)

    confirmer.add(ids)
    confirmer.close()
    result = await finish(clock, confirmer)

    assert result.cancelled == 40
    assert venue.rejected == 0
    assert limiter.waits > 0


async def test_first_poll_waits_for_the_transition_so_no_poll_is_wasted() -> None:
    """With first_poll_delay, orders that settle within it are confirmed with one poll each.

    Each order shows CANCELLED 0.2 s after the kill; first polls wait 0.25 s.
    Window 1: 20 polls at t=0.25, all final.  Window 2: the other 20.  40 polls.
    """
    clock = FakeClock(START)
    limiter = status_limiter(clock)
    venue = ThrottledVenue(clock, limiter)
    ids = [f"o{i:02}" for i in range(40)]
    venue.cancelled_at = dict.fromkeys(ids, START + 0.2)
    confirmer = Confirmer(venue, ConfirmConfig(first_poll_delay=0.25), clock, gate=limiter)

    confirmer.add(ids)
    confirmer.close()
    result = await finish(clock, confirmer)

    assert result.cancelled == 40
    assert result.polls == 40
    assert venue.rejected == 0
    assert venue.calls[0].at == pytest.approx(START + 0.25)
    assert clock.monotonic() - START == pytest.approx(60.75 + 0.05)


async def test_a_due_repoll_goes_before_a_first_poll_that_is_not_ready() -> None:
    """A re-poll that is due is not held back by newer ids still inside first_poll_delay."""
    clock = FakeClock(START)
    source = ScriptedSource(clock, {"a": ["CANCELLATION_RAISED", "CANCELLED"]})
    cfg = config(first_poll_delay=1.0, poll_interval=0.25)
    confirmer = Confirmer(source, cfg, clock)
    confirmer.add(["a"])
    task = asyncio.create_task(confirmer.run())
    await clock.advance(1.0)  # a: first poll
    confirmer.add(["b"])  # b may not be polled before t+2.0
    confirmer.close()
    await clock.run_until(task)
    calls = [(c.order_id, round(c.at - START, 3)) for c in source.calls]
    assert calls[:2] == [("a", 1.0), ("a", 1.25)]
    assert calls[2] == ("b", 2.0)

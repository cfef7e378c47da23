"""One kill's shared state, handed to each part that works on it (:mod:`killswitch.kill`).

A :class:`KillContext` is made by :class:`~killswitch.kill.runner.KillRunner` for
one run of a :class:`~killswitch.kill.plan.KillPlan` and handed to the sweeps,
the flat proof and the classification: the plan, the confirmer, the listed
units, what the answers and listings said, the tasks the kill owns, and why it
is stuck, if it is.  Nothing outlives the kill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from killswitch.kill.confirm import Confirmer
from killswitch.kill.events import Announcer
from killswitch.kill.plan import KillPlan, SweepKey, Unit

__all__ = ["KillContext", "StuckInfo", "StuckSweep"]

T = TypeVar("T")


@dataclass
class StuckSweep:
    """A ``cancel_all`` the venue keeps refusing (4xx): the kill cannot complete."""

    exchange: str
    symbol: str | None
    why: str
    http_status: int | None
    since: float  # wall clock of the first refusal
    attempts: int
    next_retry_at: float  # monotonic


@dataclass(frozen=True)
class StuckInfo:
    """Why a running kill cannot finish (``GET /status`` ``stuck``, systemd's STATUS=)."""

    why: str
    http_status: int | None
    since: float
    next_retry_in: float
    sweeps: tuple[dict[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "why": self.why,
            "http_status": self.http_status,
            "since": self.since,
            "next_retry_in": self.next_retry_in,
            "sweeps": list(self.sweeps),
        }


@dataclass(eq=False)
class KillContext:
    plan: KillPlan
    confirmer: Confirmer
    started: float  # monotonic
    listing: bool  # the flat proof runs (confirm.use_listings, and listings exist)
    units: dict[SweepKey, Unit] = field(default_factory=dict)
    leftovers: set[str] = field(default_factory=set)  # ids a listing found that no answer named
    created: dict[str, int] = field(default_factory=dict)  # created_at (venue ms) as listed
    answered: set[str] = field(default_factory=set)  # ids some cancel_all answer named
    gone: set[str] = field(default_factory=set)  # named ids a complete listing no longer shows
    stuck: dict[SweepKey, StuckSweep] = field(default_factory=dict)
    announced: asyncio.Event = field(default_factory=asyncio.Event)
    flat_ms: float | None = None
    proven: bool = False  # kill.completed: no resweep joins it any more
    resweeps: int = 0
    work: set[asyncio.Task[Any]] = field(default_factory=set)  # sweeps and proofs to await
    more_work: asyncio.Event = field(default_factory=asyncio.Event)
    tg: asyncio.TaskGroup | None = None  # the kill's own tasks (while it runs)
    announcer: Announcer | None = None
    first_sent: int = 0  # first requests of the plan's sweeps written so far
    all_sent: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def kill_id(self) -> str:
        return self.plan.kill_id

    def unit_for(self, key: SweepKey) -> Unit:
        """The listed unit a sweep key belongs to (a symbol of an unscoped target: the target)."""
        unit = self.units.get(key) or self.units.get((key[0], None))
        if unit is None:
            unit = self.units[key] = Unit(*key)
        return unit

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """A sweep or proof the kill waits for before it can be proven."""
        assert self.tg is not None
        task = self.tg.create_task(coro, name=name)
        self.work.add(task)
        self.more_work.set()
        return task

    def sweeps_answered(self) -> bool:
        """Every sweep sent so far was answered (acknowledged or its answer lost)."""
        return all(t.done() for u in self.units.values() for t in u.sweeps)

    def stuck_info(self, now: float) -> StuckInfo | None:
        if not self.stuck:
            return None
        stuck = [s for _, s in sorted(self.stuck.items(), key=lambda kv: str(kv[0]))]
        retry_in = [round(max(0.0, s.next_retry_at - now), 3) for s in stuck]
        sweeps = tuple(
            {
                "exchange": s.exchange,
                "symbol": s.symbol,
                "why": s.why,
                "http_status": s.http_status,
                "since": s.since,
                "attempts": s.attempts,
                "next_retry_in": r,
            }
            for s, r in zip(stuck, retry_in, strict=True)
        )
        return StuckInfo(
            why=stuck[0].why,
            http_status=stuck[0].http_status,
            since=min(s.since for s in stuck),
            next_retry_in=min(retry_in),
            sweeps=sweeps,
        )

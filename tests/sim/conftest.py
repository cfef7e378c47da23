"""Fixtures for the simulated exchange's tests: the fake clock, started sims, a session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from killswitch.sim import SimConfig, SimExchange
from tests.fakes import FakeClock
from tests.sim.client import SimFactory, Started


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[SimFactory]:
    """Start simulated exchanges on 127.0.0.1:0 on the fake clock; stop them after."""
    started: list[SimExchange] = []

    async def make(**overrides: Any) -> Started:
        config = SimConfig(**({"seed": 7} | overrides))
        sim = SimExchange(config, clock=clock.monotonic, wall=clock.time, sleep=clock.sleep)
        url = await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim, url

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s

"""The client against the simulated exchange (a real aiohttp server on loopback).

The sim is the venue's strict referee: it checks signatures, the epoch against
its own clock (401 beyond 60 s), Content-Type, the listing rules and every
rate limit in windows of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog

from killswitch.clock import SystemClock
from killswitch.config.model import ExchangeConfig, Target
from killswitch.exchange.client import ENDPOINTS, ExchangeClient
from killswitch.exchange.credentials import Credentials, Secret
from killswitch.exchange.errors import ExchangeError
from killswitch.exchange.listing import find_closed, list_open
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.signing import make_signer
from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET, SimExchange

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def client_for(url: str, api_key: str = DEMO_API_KEY) -> ExchangeClient:
    """A client with the venue's limits on the real clock."""
    config = ExchangeConfig(base_url=url, request_timeout=2.0)
    credentials = Credentials(api_key=Secret(api_key), api_secret=Secret(DEMO_API_SECRET))
    clock = SystemClock()
    limits = {"cancel_all": 10}
    limiters = {
        e: SlidingWindowLimiter(e, limits.get(e, 20), 60.0, clock, margin=0.5) for e in ENDPOINTS
    }
    return ExchangeClient(config, make_signer(config, credentials), limiters=limiters, clock=clock)


def no_violations(stats: dict[str, Any]) -> None:
    assert all(v == 0 for v in stats["violations"].values()), stats["violations"]


async def test_a_clock_90_s_off_is_measured_and_a_later_jump_cured_by_one_resync(
    sim_factory: SimFactory,
) -> None:
    """Offset measured at start (no 401); after the venue's clock jumps, one 401, re-sync, ok."""
    sim, url = await sim_factory(clock_offset_ms=90_000)
    sim.seed({"BTCUSDT": 3})
    async with client_for(url) as client:
        assert abs(client.health()["offset_ms"] - 90_000) < 1_000
        assert len(await client.cancel_all("EXCHANGE_2")) == 3
        sim.set_clock_offset(-120_000)
        with structlog.testing.capture_logs() as events:
            page = await client.open_orders("EXCHANGE_2")
        health = client.health()

    assert all(o.status != "RAISED" for o in page.orders)  # the cancel_all was performed
    assert abs(health["offset_ms"] + 120_000) < 1_000
    stats = sim.stats()
    assert stats["answers"]["open_orders"] == {"401": 1, "200": 1}
    assert stats["answers"]["cancel_all"] == {"200": 1}
    assert [e["event"] for e in events].count("clock.synced") == 1
    no_violations(stats)


async def test_deep_listing_finds_orders_10_and_20_days_old_as_the_sim_holds_them(
    sim_factory: SimFactory,
) -> None:
    """list_open(deep) returns exactly the sim's working orders, old ones included."""
    sim, url = await sim_factory()
    ids = set(sim.seed({"BTCUSDT": 120, "ETHUSDT": 5}))
    ids |= set(sim.seed({"BTCUSDT": 2}, age_days=10))
    ids |= set(sim.seed({"ETHUSDT": 3}, age_days=20))
    async with client_for(url) as client:
        deep = await list_open(client, "EXCHANGE_2", None, lookback_days=30)
        shallow = await list_open(client, "EXCHANGE_2", None, lookback_days=30, deep=False)
        scoped = await list_open(client, "EXCHANGE_2", "ETHUSDT", lookback_days=30)

    assert set(deep.orders) == ids == set(sim.stats()["open"])
    assert len(shallow.orders) == 125  # the default window only
    assert {o.symbol for o in scoped.orders.values()} == {"ETHUSDT"}
    assert len(scoped.orders) == 8
    no_violations(sim.stats())


async def test_find_closed_reads_the_outcomes_of_cancelled_orders(
    sim_factory: SimFactory,
) -> None:
    """After a cancel_all, the closed listing gives each named order's final status."""
    sim, url = await sim_factory(cancel_delay=(0.0, 0.0), fill_ratio=0.0)
    sim.seed({"BTCUSDT": 60})
    async with client_for(url) as client:
        named = set(await client.cancel_all("EXCHANGE_2"))
        found: dict[str, Any] = {}
        for _ in range(20):
            found = await find_closed(client, "EXCHANGE_2", None, named, since_ms=None, max_pages=5)
            if set(found) == named:
                break
        status = await client.order_status(next(iter(named)))

    assert set(found) == named
    assert {o.status for o in found.values()} == {"CANCELLED"}
    assert status.status == "CANCELLED"
    no_violations(sim.stats())


async def test_self_test_against_the_sim_passes_and_fails_with_a_wrong_key(
    sim_factory: SimFactory,
) -> None:
    """The right key passes; a wrong one is Unauthorized after one re-sync and retry."""
    sim, url = await sim_factory()
    async with client_for(url) as client:
        good = await client.self_test([Target("EXCHANGE_2")])
    async with client_for(url, api_key="not-the-key") as client:
        bad = await client.self_test([Target("EXCHANGE_2")])

    assert good.ok
    assert not bad.ok
    (check,) = bad.checks
    assert (check.http_status, check.error) == (401, "unauthorized")
    assert check.message
    assert sim.stats()["answers"]["open_orders"] == {"200": 1, "401": 2}


@pytest.mark.parametrize("kind", ["lost_ack_502", "lost_ack_timeout"])
async def test_a_lost_acknowledgement_is_an_unknown_outcome(
    sim_factory: SimFactory, kind: str
) -> None:
    """The sim performs the cancel but the answer is lost: outcome_unknown, never 'none'."""
    sim, url = await sim_factory(cancel_delay=(0.0, 0.0), slow_seconds=3.0)
    sim.seed({"BTCUSDT": 4})
    sim.inject("cancel_all", kind, 1)
    async with client_for(url) as client:
        with pytest.raises(ExchangeError) as caught:
            await client.cancel_all("EXCHANGE_2")
        listing = await list_open(client, "EXCHANGE_2", None, lookback_days=7)

    assert caught.value.outcome_unknown
    assert all(o.status != "RAISED" for o in listing.orders.values())

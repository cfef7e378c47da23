"""The simulated exchange's record, stats, admin API, `killswitch sim` and run_sim."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest

from killswitch.sim import SimConfig, run_sim
from tests.fakes import FakeClock
from tests.sim.client import (
    DAY_MS,
    STATUS,
    SimFactory,
    admin,
    cancel_all,
    status_of,
)


async def test_stats_tell_the_books_own_truth(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """open lists the ids still working; cancelled/executed/partially_executed count outcomes."""
    sim, url = await make_sim(fill_ratio=0.25, partial_fill_ratio=0.25, seed=3)
    ids = sim.seed({"BTCUSDT": 40})
    untouched = sim.seed({"ETHUSDT": 5})

    await cancel_all(session, sim, url, symbol="BTCUSDT")
    during = sim.stats()
    await clock.advance(0.3)
    after = sim.stats()
    by_status = after["orders"]

    assert sorted(during["open"]) == sorted(ids + untouched)
    assert sorted(after["open"]) == sorted(untouched)
    assert (during["flat"], after["flat"]) == (False, False)
    assert after["cancelled"] == by_status["CANCELLED"]
    assert after["executed"] == by_status["EXECUTED"]
    assert after["partially_executed"] == by_status["PARTIALLY_EXECUTED"]
    assert after["cancelled"] + after["executed"] + after["partially_executed"] == 40
    assert min(after["cancelled"], after["executed"], after["partially_executed"]) > 0


async def test_record_keeps_each_request_with_its_answer_and_arrival_times(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Every request is recorded: endpoint, method, raw path, answer and arrival times."""
    sim, url = await make_sim()
    unknown = uuid.UUID(int=9)
    await status_of(session, sim, url, str(unknown))
    await clock.advance(2)
    await cancel_all(session, sim, url)

    first, second = sim.requests
    stats = sim.stats()

    assert (first.endpoint, first.method, first.path, first.status) == (
        "order_status",
        "GET",
        f"{STATUS}?order_id={unknown}",
        404,
    )
    assert (second.endpoint, second.monotonic - first.monotonic) == ("cancel_all", 2)
    assert second.wall - first.wall == 2
    assert stats["cancel_all_arrivals"] == [{"wall": second.wall, "monotonic": second.monotonic}]


async def test_admin_endpoints_seed_fault_clear_forget_and_report(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """The /_sim/ endpoints seed (status, age), inject, clear, forget and report, uncounted."""
    sim, url = await make_sim()

    seeded = await admin(session, url, "seed", {"orders": {"BTCUSDT": 2}})
    old = await admin(
        session, url, "seed", {"orders": {"ETHUSDT": 1}, "status": "OPEN", "age_days": 10}
    )
    pending = (
        await admin(
            session, url, "faults", {"endpoint": "closed_orders", "kind": "422", "message": "x: y"}
        )
    )["faults_pending"]
    cleared = (await admin(session, url, "clear"))["faults_pending"]
    forgotten = await admin(session, url, "forget", {"order_ids": old["order_ids"]})
    status, _, _ = await cancel_all(session, sim, url)
    async with session.get(url + "/_sim/stats") as r:
        stats = await r.json()
    async with session.get(url + "/_sim/requests") as r:
        record = (await r.json())["requests"]
    bad = [
        (await admin(session, url, route, body))[0]
        for route, body in (
            ("faults", {"endpoint": "x", "kind": "500"}),
            ("seed", {"orders": {"BTCUSDT": 1}, "status": "CANCELLED"}),
            ("seed", {"orders": {"BTCUSDT": 1}, "age_days": "old"}),
            ("seed", {"orders": {"BTCUSDT": 1}, "same_ms": "yes"}),
            ("clock", {"offset_ms": 1.5}),
            ("forget", {"order_ids": "all"}),
        )
    ]

    assert len(seeded["order_ids"]) == 2
    assert pending["closed_orders"] == [
        {"kind": "422", "remaining": 1, "delay": None, "message": "x: y"}
    ]
    assert set(cleared) == {
        "cancel_all", "order_status", "open_orders", "closed_orders", "positions", "place_order",
        "time",
    }  # fmt: skip
    assert not any(cleared.values())
    assert forgotten == {"forgotten": 1}
    assert status == 200
    assert stats["requests"]["cancel_all"] == 1
    assert sum(stats["requests"].values()) == 1
    assert stats["orders"] == {"CANCELLATION_RAISED": 2}
    assert [(r["endpoint"], r["status"]) for r in record] == [("cancel_all", 200)]
    assert bad == [400] * 6


async def test_seed_over_http_takes_status_and_age(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """POST /_sim/seed with status OPEN and age_days makes orders that old, in that status."""
    sim, url = await make_sim()
    now = sim.clock.now_ms()

    ids = (
        await admin(
            session, url, "seed", {"orders": {"BTCUSDT": 2}, "status": "OPEN", "age_days": 20}
        )
    )["order_ids"]
    orders = [sim.book.orders[i] for i in ids]

    assert {o.status for o in orders} == {"OPEN"}
    assert all(now - 20 * DAY_MS - 2 < o.created_at <= now - 20 * DAY_MS for o in orders)


def test_sim_subcommand_builds_its_config_from_every_option() -> None:
    """Every `killswitch sim` option reaches SimConfig (limits, ratios, delay, offset, ...)."""
    from killswitch.cli import build_parser
    from killswitch.sim_commands import _sim_config

    args = build_parser().parse_args(
        [
            "sim", "--port", "0", "--cancel-all-limit", "5/30", "--status-limit", "7/60",
            "--open-orders-limit", "8/60", "--closed-orders-limit", "9/60", "--fill-ratio", "0.1",
            "--partial-fill-ratio", "0.3", "--expire-ratio", "0.2", "--cancel-delay", "0.05-0.5",
            "--clock-offset-ms", "-90000", "--no-require-content-type", "--no-retry-after",
            "--seed", "4",
        ]
    )  # fmt: skip
    config = _sim_config(args)

    assert config.cancel_all_limit == (5, 30.0)
    assert (config.status_limit, config.open_orders_limit) == ((7, 60.0), (8, 60.0))
    assert config.closed_orders_limit == (9, 60.0)
    assert (config.fill_ratio, config.partial_fill_ratio, config.expire_ratio) == (0.1, 0.3, 0.2)
    assert config.cancel_delay == (0.05, 0.5)
    assert config.clock_offset_ms == -90_000
    assert config.require_content_type is False
    assert config.retry_after_on_violation is False
    assert config.seed == 4


def test_sim_subcommand_defaults_are_the_venue_limits() -> None:
    """Without options `killswitch sim` runs at 10/60 and 20/60 x3, requiring Content-Type."""
    from killswitch.cli import build_parser
    from killswitch.sim_commands import _sim_config

    config = _sim_config(build_parser().parse_args(["sim", "--port", "0"]))

    assert config == SimConfig(api_key=config.api_key, api_secret=config.api_secret)


async def test_run_sim_announces_its_url_and_serves_until_cancelled(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    """run_sim prints one sim.ready JSON line with the bound URL and serves until cancelled."""
    task = asyncio.create_task(run_sim(SimConfig(), "127.0.0.1", 0))
    out = ""
    for _ in range(100):
        out = capsys.readouterr().out
        if out:
            break
        await asyncio.sleep(0.01)
    ready = json.loads(out)
    async with session.get(ready["base_url"] + "/_sim/stats") as r:
        served = r.status

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert ready["event"] == "sim.ready"
    assert ready["base_url"].startswith("http://127.0.0.1:")
    assert served == 200

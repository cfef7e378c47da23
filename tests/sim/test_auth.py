"""The simulated exchange's referee of requests: signing, Content-Type, its clock."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from killswitch.sim import DEMO_API_KEY, SimConfig, sign_headers
from tests.fakes import FakeClock
from tests.sim.client import (
    CANCEL_ALL,
    OPEN,
    STATUS,
    TIME,
    SimFactory,
    admin,
    call,
    listing,
    status_of,
)


@pytest.mark.parametrize("signing", ["ed25519", "hmac-sha256"])
async def test_signed_request_is_accepted(
    make_sim: SimFactory, session: aiohttp.ClientSession, signing: str
) -> None:
    """A request signed per contract §2 is accepted under both schemes."""
    sim, url = await make_sim(signing=signing)
    [order_id] = sim.seed({"BTCUSDT": 1})

    status, body, _ = await status_of(session, sim, url, order_id)

    assert status == 200
    assert body["data"]["order"]["order_id"] == order_id


@pytest.mark.parametrize("signing", ["ed25519", "hmac-sha256"])
async def test_wrongly_signed_request_is_refused_and_counted(
    make_sim: SimFactory, session: aiohttp.ClientSession, signing: str
) -> None:
    """A signature over another path or with another secret gets 401 and still counts."""
    sim, url = await make_sim(signing=signing)
    [order_id] = sim.seed({"BTCUSDT": 1})
    other_secret = replace(sim.config, api_secret="ab" * 32)
    path = f"{STATUS}?order_id={order_id}"
    epoch = sim.clock.now_ms()

    wrong_path, _, _ = await call(
        session,
        url,
        sim,
        "GET",
        path,
        headers=sign_headers(sim.config, "GET", STATUS, epoch_ms=epoch),
    )
    wrong_key, body, _ = await call(
        session,
        url,
        sim,
        "GET",
        path,
        headers=sign_headers(other_secret, "GET", path, epoch_ms=epoch),
    )

    assert (wrong_path, wrong_key) == (401, 401)
    assert body["error"] == "unauthorized"
    assert body["message"] == "bad signature"
    assert sim.stats()["requests"]["order_status"] == 2
    assert sim.windows["order_status"].peak == 2


async def test_missing_headers_and_unknown_key_are_refused(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """No auth headers or a foreign API key get 401 with a message."""
    sim, url = await make_sim()
    foreign = sign_headers(
        replace(sim.config, api_key="someone-else"), "GET", STATUS, epoch_ms=sim.clock.now_ms()
    )

    answers = [(await call(session, url, sim, "GET", STATUS, headers=h))[:2] for h in ({}, foreign)]

    assert [status for status, _ in answers] == [401, 401]
    assert [body["message"] for _, body in answers] == ["missing auth headers", "unknown api key"]


def test_sign_headers_uses_the_configured_header_names() -> None:
    """sign_headers emits the configured key, signature and epoch headers."""
    config = SimConfig(api_key_header="K", signature_header="S", epoch_header="E")

    headers = sign_headers(config, "POST", CANCEL_ALL, epoch_ms=1_700_000_000_000)

    assert headers["K"] == DEMO_API_KEY
    assert headers["E"] == "1700000000000"
    assert len(headers["S"]) == 128  # 64-byte Ed25519 signature, hex


def test_config_rejects_impossible_settings() -> None:
    """A bad Ed25519 secret, limit, ratio or shared path is refused naming the field."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"api_secret": "not-hex"}, "api_secret"),
        ({"open_orders_limit": (0, 60.0)}, "open_orders_limit"),
        ({"fill_ratio": 0.7, "partial_fill_ratio": 0.4}, "partial_fill_ratio"),
        ({"cancel_delay": (0.5, 0.1)}, "cancel_delay"),
        ({"time_path": STATUS}, "paths"),
    ]
    for fields, name in cases:
        with pytest.raises(ValueError, match=name):
            SimConfig(**fields)


def test_config_defaults_are_the_venue_limits_and_lists_become_tuples() -> None:
    """Defaults are 10/60, 20/60 x3 and a 60 s skew; JSON lists are stored as tuples."""
    config = SimConfig(closed_orders_limit=[5, 30], cancel_delay=[0.05, 0.5])  # type: ignore[arg-type]
    limits = [config.limit(e) for e in ("cancel_all", "order_status", "open_orders")]

    assert limits == [(10, 60.0), (20, 60.0), (20, 60.0)]
    assert config.limit("closed_orders") == (5, 30.0)
    assert config.cancel_delay == (0.05, 0.5)
    assert config.max_epoch_skew == 60.0
    assert config.require_content_type is True


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", f"{STATUS}?order_id={uuid.UUID(int=1)}", None), ("POST", OPEN, {})],
)
async def test_signed_request_without_json_content_type_is_400_and_counted(
    make_sim: SimFactory,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    """A signed GET or POST without Content-Type: application/json is 400 naming it, and counts."""
    sim, url = await make_sim()
    body = None if body is None else {"exchange": sim.config.exchange}

    missing = await call(session, url, sim, method, path, body, content_type=None)
    text = await call(session, url, sim, method, path, body, content_type="text/plain")

    assert (missing[0], text[0]) == (400, 400)
    assert "Content-Type" in missing[1]["message"]
    assert sum(sim.stats()["requests"].values()) == 2
    assert sum(w.peak for w in sim.windows.values()) == 2


async def test_content_type_rule_can_be_switched_off(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """With require_content_type=False a signed GET without Content-Type is served."""
    sim, url = await make_sim(require_content_type=False)
    [order_id] = sim.seed({"BTCUSDT": 1})

    status, _, _ = await call(
        session, url, sim, "GET", f"{STATUS}?order_id={order_id}", content_type=None
    )

    assert status == 200


async def test_cancel_all_with_a_wrong_content_type_cancels_nothing(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A cancel_all sent as text/plain is refused before it touches the book."""
    sim, url = await make_sim()
    sim.seed({"BTCUSDT": 2})

    status, _, _ = await call(
        session, url, sim, "POST", CANCEL_ALL, {"exchange": "EXCHANGE_2"}, content_type="text/plain"
    )

    assert status == 400
    assert sim.stats()["orders"] == {"RAISED": 2}


async def test_server_time_is_unsigned_uncounted_and_on_the_venue_clock(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """GET time answers serverTime (wall + offset) without auth, outside every window."""
    sim, url = await make_sim(clock_offset_ms=-2_500)

    answers = []
    for _ in range(30):
        async with session.get(url + TIME) as resp:
            answers.append((resp.status, await resp.json()))
    stats = sim.stats()

    assert {status for status, _ in answers} == {200}
    assert answers[0][1] == {"serverTime": int(clock.time() * 1000) - 2_500}
    assert stats["requests"]["time"] == 30
    assert sum(stats["violations"].values()) == 0
    assert sum(stats["peak_in_window"].values()) == 0


async def test_clock_offset_moves_server_time_and_the_epoch_check(
    make_sim: SimFactory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """After a 90 s offset, the wall-clock epoch gets 401 'epoch is off'; server time passes."""
    sim, url = await make_sim()
    [order_id] = sim.seed({"BTCUSDT": 1})
    path = f"{STATUS}?order_id={order_id}"
    wall_ms = int(clock.time() * 1000)

    moved = await admin(session, url, "clock", {"offset_ms": 90_000})
    async with session.get(url + TIME) as resp:
        server = (await resp.json())["serverTime"]
    drifted, body, _ = await call(session, url, sim, "GET", path, epoch_ms=wall_ms)
    corrected, _, _ = await call(session, url, sim, "GET", path, epoch_ms=server)

    assert moved == {"offset_ms": 90_000, "server_time": wall_ms + 90_000}
    assert server == wall_ms + 90_000
    assert drifted == 401
    assert body["message"].startswith("epoch is off the server clock by -90000 ms")
    assert corrected == 200
    assert sim.stats()["clock"]["offset_ms"] == 90_000


async def test_moving_the_clock_keeps_every_orders_age(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """Set back 90 s after seeding, the venue still lists its fresh orders at their age."""
    sim, url = await make_sim()
    ids = sim.seed({"BTCUSDT": 2})
    ages = [sim.clock.now_ms() - sim.book.orders[i].created_at for i in ids]

    await admin(session, url, "clock", {"offset_ms": -90_000})
    listed = (await listing(session, sim, url))[1]["data"]["orders"]

    assert sorted(o["order_id"] for o in listed) == sorted(ids)
    assert [sim.clock.now_ms() - sim.book.orders[i].created_at for i in ids] == ages


@pytest.mark.parametrize(("off_ms", "expected"), [(60_000, 200), (-60_000, 200), (60_001, 401)])
async def test_epoch_skew_allowed_is_sixty_seconds_either_way(
    make_sim: SimFactory, session: aiohttp.ClientSession, off_ms: int, expected: int
) -> None:
    """An epoch up to 60 s off the venue's clock passes; a millisecond more is 401."""
    sim, url = await make_sim()

    epoch = sim.clock.now_ms() + off_ms
    status, _, _ = await call(
        session, url, sim, "POST", OPEN, {"exchange": "EXCHANGE_2"}, epoch_ms=epoch
    )

    assert status == expected

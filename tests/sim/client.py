"""Talking to the simulated exchange in its tests: signed calls and admin calls."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from killswitch.sim import SimExchange, sign_headers

CANCEL_ALL = "/trade/api/v2/futures/cancel_all"
STATUS = "/trade/api/v2/futures/order"
OPEN = "/trade/api/v2/futures/orders/open"
POSITIONS = "/trade/api/v2/futures/positions"
CLOSED = "/trade/api/v2/futures/orders/closed"
TIME = "/trade/api/v2/time"
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS

Started = tuple[SimExchange, str]
SimFactory = Callable[..., Awaitable[Started]]
Answer = tuple[int, Any, aiohttp.ClientResponse]

# One valid request per limited endpoint: method, path, body.
REQUEST: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "cancel_all": ("POST", CANCEL_ALL, {"exchange": "EXCHANGE_2"}),
    "order_status": ("GET", f"{STATUS}?order_id={uuid.UUID(int=5)}", None),
    "open_orders": ("POST", OPEN, {"exchange": "EXCHANGE_2"}),
    "closed_orders": ("POST", CLOSED, {"exchange": "EXCHANGE_2"}),
    "positions": ("GET", f"{POSITIONS}?exchange=EXCHANGE_2&symbol=BTCUSDT", None),
    "place_order": (
        "POST",
        STATUS,
        {"exchange": "EXCHANGE_2", "symbol": "BTCUSDT", "side": "BUY", "order_type": "LIMIT"},
    ),
}


async def call(
    session: aiohttp.ClientSession,
    url: str,
    sim: SimExchange,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    content_type: str | None = "application/json",
    epoch_ms: int | None = None,
) -> Answer:
    """Send one request, signed on the venue's clock unless ``headers`` are given.

    Returns the status, the parsed JSON (or raw text) and the response.
    """
    if headers is None:
        epoch = sim.clock.now_ms() if epoch_ms is None else epoch_ms
        headers = sign_headers(sim.config, method, path, epoch_ms=epoch)
    if content_type is not None:
        headers = {"Content-Type": content_type, **headers}
    data = None if body is None else json.dumps(body)
    async with session.request(method, url + path, data=data, headers=headers) as resp:
        text = await resp.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, parsed, resp


async def cancel_all(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, symbol: str | None = None
) -> Answer:
    body = {"exchange": sim.config.exchange} | ({"symbol": symbol} if symbol else {})
    return await call(session, url, sim, "POST", CANCEL_ALL, body)


async def status_of(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, order_id: str
) -> Answer:
    return await call(session, url, sim, "GET", f"{STATUS}?order_id={order_id}")


async def listing(
    session: aiohttp.ClientSession, sim: SimExchange, url: str, path: str = OPEN, **body: Any
) -> Answer:
    return await call(session, url, sim, "POST", path, {"exchange": sim.config.exchange} | body)


async def admin(session: aiohttp.ClientSession, url: str, route: str, body: Any = None) -> Any:
    async with session.post(f"{url}/_sim/{route}", json=body) as resp:
        answer = await resp.json()
        return answer if resp.status == 200 else (resp.status, answer)


def ids_of(body: Any) -> list[str]:
    return [o["order_id"] for o in body["data"]["orders"]]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` every 10 ms (a held request has no event to await); fail after 10 s."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")

"""Admin endpoints under ``/_sim/``: no auth, not rate limited, not recorded.

- ``POST /_sim/seed`` ``{"orders": {"BTCUSDT": 100}, "exchange"?: str, "status"?: str}``
  → ``{"order_ids": [...]}``
- ``GET /_sim/stats`` → :meth:`SimExchange.stats`
- ``POST /_sim/faults`` ``{"endpoint", "kind", "count"?: 1, "delay"?: seconds}``
  → ``{"faults_pending": {...}}``
- ``POST /_sim/clear`` drops every pending fault → ``{"faults_pending": {...}}``
- ``POST /_sim/forget`` ``{"order_ids": [...]}`` drops those orders (status answers 404)
  → ``{"forgotten": n}``
- ``GET /_sim/requests`` → ``{"requests": [ReceivedRequest, ...]}``
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from killswitch.sim.server import SimExchange

__all__ = ["admin_routes"]


class _BadRequest(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest("body is not JSON") from exc
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


def _bad(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def admin_routes(sim: SimExchange) -> list[web.RouteDef]:
    """The ``/_sim/`` routes bound to ``sim``."""

    async def seed(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
        except _BadRequest as exc:
            return _bad(str(exc))
        orders, exchange = body.get("orders"), body.get("exchange")
        status = body.get("status", "OPEN")
        if not isinstance(orders, dict) or not all(
            isinstance(k, str) and _is_int(v) and v >= 0 for k, v in orders.items()
        ):
            return _bad('orders: expected {"SYMBOL": count, ...}')
        if exchange is not None and not isinstance(exchange, str):
            return _bad("exchange: expected a string")
        if not isinstance(status, str):
            return _bad("status: expected a string")
        try:
            ids = sim.seed(orders, exchange, status)
        except ValueError as exc:
            return _bad(str(exc))
        return web.json_response({"order_ids": ids})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats())

    async def faults(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
        except _BadRequest as exc:
            return _bad(str(exc))
        endpoint, kind = body.get("endpoint"), body.get("kind")
        count, delay = body.get("count", 1), body.get("delay")
        if not isinstance(endpoint, str) or not isinstance(kind, str):
            return _bad("endpoint and kind: expected strings")
        if not _is_int(count):
            return _bad("count: expected an integer")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
            return _bad("delay: expected seconds")
        try:
            sim.inject(endpoint, kind, count, None if delay is None else float(delay))
        except ValueError as exc:
            return _bad(str(exc))
        return web.json_response({"faults_pending": sim.faults.pending()})

    async def clear(request: web.Request) -> web.Response:
        sim.clear_faults()
        return web.json_response({"faults_pending": sim.faults.pending()})

    async def forget(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
        except _BadRequest as exc:
            return _bad(str(exc))
        ids = body.get("order_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _bad("order_ids: expected a list of strings")
        return web.json_response({"forgotten": sim.forget(ids)})

    async def received(request: web.Request) -> web.Response:
        return web.json_response({"requests": [r.to_json() for r in sim.requests]})

    return [
        web.post("/_sim/seed", seed),
        web.get("/_sim/stats", stats, allow_head=False),
        web.post("/_sim/faults", faults),
        web.post("/_sim/clear", clear),
        web.post("/_sim/forget", forget),
        web.get("/_sim/requests", received, allow_head=False),
    ]

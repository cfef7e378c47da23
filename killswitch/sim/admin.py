"""Admin endpoints under ``/_sim/``: no auth, not rate limited, not recorded.

Errors answer 400 ``{"error": "bad_request", "message": ...}`` naming the field.

- ``POST /_sim/seed`` ``{"orders": {"BTCUSDT": 100}, "exchange"?: str,
  "status"?: "RAISED" (default) | "OPEN", "age_days"?: float, "same_ms"?: bool}``
  → ``{"order_ids": [...]}`` (each order its own ``created_at`` ms unless ``same_ms``)
- ``GET /_sim/stats`` → :func:`killswitch.sim.stats.stats_of`
- ``POST /_sim/faults`` ``{"endpoint", "kind", "count"?: 1, "delay"?: seconds,
  "message"?: str}`` → ``{"faults_pending": {...}}``; endpoints ``cancel_all``,
  ``order_status``, ``open_orders``, ``closed_orders``, ``time``; kinds in
  :mod:`killswitch.sim.faults`.
- ``POST /_sim/clear`` drops every pending fault → ``{"faults_pending": {...}}``
- ``POST /_sim/forget`` ``{"order_ids": [...]}`` drops those orders (status answers 404)
  → ``{"forgotten": n}``
- ``GET /_sim/requests`` → ``{"requests": [ReceivedRequest, ...]}``
- ``POST /_sim/clock`` ``{"offset_ms": int}`` → ``{"offset_ms", "server_time"}``: the
  venue's clock is the real one plus the offset (orders on the book keep their age)
- ``POST /_sim/behaviour`` ``{"fill_ratio"?, "partial_fill_ratio"?, "expire_ratio"?,
  "cancel_delay"?: [lo, hi]}`` → the behaviour now (for cancels that arrive after it)
- ``POST /_sim/reject`` ``{"symbol", "status": 4xx | null, "message"?, "unscoped"?:
  "refuse" | "spare"}`` → ``{"rejected": {...}}``
- ``POST /_sim/trader`` ``{"orders": {"SYM": n}, "interval"?: s (1), "exchange"?,
  "on_cancel_all"?: bool}`` or ``{"stop": true}`` → the trader's state
  (:mod:`killswitch.sim.trader`): one order per symbol now (or right after the
  next ``cancel_all``) and one more every ``interval`` s, ``n`` per symbol
- ``POST /_sim/positions`` ``{"positions": {"SYM": {"side": "LONG"|"SHORT", "size": "0.5",
  "entry_price": "60000", "mark_price"?: str, "stops"?: n, "take_profits"?: n}},
  "exchange"?}`` → ``{"positions": [...], "stop_ids": [...]}``: open positions, each
  with ``stops`` STOP_MARKET and ``take_profits`` TAKE_PROFIT_MARKET orders resting
  (``cancel_all`` cancels them)
- ``POST /_sim/late_fill`` ``{"symbol", "side": "BUY"|"SELL", "quantity": str, "after":
  "cancel_all"|"positions"|"place_order", "exchange"?}``: a fill that lands right after
  the next request to ``after`` is served (between the cancel and the read)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from aiohttp import web

from killswitch.sim.venue import LateFill

if TYPE_CHECKING:
    from killswitch.sim.server import SimExchange

__all__ = ["admin_routes"]

Handler = Callable[[web.Request], Awaitable[web.Response]]


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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _is_int(v) and v >= 0 for k, v in value.items()
    ):
        raise _BadRequest('orders: expected {"SYMBOL": count, ...}')
    return value


def _optional(body: dict[str, Any], field: str, kind: type, what: str) -> Any:
    value = body.get(field)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise _BadRequest(f"{field}: expected {what}")
    return value


def _json_route(handle: Callable[[dict[str, Any]], Awaitable[Any] | Any]) -> Handler:
    """A POST handler: parse the body, answer 400 on ``_BadRequest``/``ValueError``."""

    async def route(request: web.Request) -> web.Response:
        try:
            answer = handle(await _body(request))
            if isinstance(answer, Awaitable):
                answer = await answer
        except (_BadRequest, ValueError) as exc:
            return web.json_response({"error": "bad_request", "message": str(exc)}, status=400)
        return web.json_response(answer)

    return route


def admin_routes(sim: SimExchange) -> list[web.RouteDef]:
    """The ``/_sim/`` routes bound to ``sim``."""

    def seed(body: dict[str, Any]) -> dict[str, Any]:
        orders = _counts(body.get("orders"))
        exchange = _optional(body, "exchange", str, "a string")
        status = body.get("status", "RAISED")
        if not isinstance(status, str):
            raise _BadRequest("status: expected a string")
        age = body.get("age_days", 0.0)
        if not _is_number(age):
            raise _BadRequest("age_days: expected a number of days")
        same_ms = body.get("same_ms", False)
        if not isinstance(same_ms, bool):
            raise _BadRequest("same_ms: expected true or false")
        ids = sim.seed(orders, exchange, status, age_days=float(age), same_ms=same_ms)
        return {"order_ids": ids}

    def faults(body: dict[str, Any]) -> dict[str, Any]:
        endpoint, kind = body.get("endpoint"), body.get("kind")
        count, delay = body.get("count", 1), body.get("delay")
        if not isinstance(endpoint, str) or not isinstance(kind, str):
            raise _BadRequest("endpoint and kind: expected strings")
        if not _is_int(count):
            raise _BadRequest("count: expected an integer")
        if delay is not None and not _is_number(delay):
            raise _BadRequest("delay: expected seconds")
        message = _optional(body, "message", str, "a string")
        sim.inject(endpoint, kind, count, None if delay is None else float(delay), message)
        return {"faults_pending": sim.faults.pending()}

    def clear(body: dict[str, Any]) -> dict[str, Any]:
        sim.clear_faults()
        return {"faults_pending": sim.faults.pending()}

    def forget(body: dict[str, Any]) -> dict[str, Any]:
        ids = body.get("order_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _BadRequest("order_ids: expected a list of strings")
        return {"forgotten": sim.forget(ids)}

    def clock(body: dict[str, Any]) -> dict[str, Any]:
        offset = body.get("offset_ms")
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise _BadRequest("offset_ms: expected an integer of milliseconds")
        sim.set_clock_offset(offset)
        return {"offset_ms": sim.clock.offset_ms, "server_time": sim.clock.now_ms()}

    def behaviour(body: dict[str, Any]) -> dict[str, Any]:
        for name in ("fill_ratio", "partial_fill_ratio", "expire_ratio"):
            value = body.get(name)
            if value is not None and not _is_number(value):
                raise _BadRequest(f"{name}: expected a share between 0 and 1")
        delay = body.get("cancel_delay")
        if delay is not None and not (
            isinstance(delay, list) and len(delay) == 2 and all(map(_is_number, delay))
        ):
            raise _BadRequest("cancel_delay: expected [low, high] in seconds")
        sim.behaviour.update(**body)
        return sim.behaviour.to_json()

    def reject(body: dict[str, Any]) -> dict[str, Any]:
        symbol, status = body.get("symbol"), body.get("status")
        if not isinstance(symbol, str):
            raise _BadRequest("symbol: expected a string")
        if status is not None and not _is_int(status):
            raise _BadRequest("status: expected a 4xx other than 429, or null")
        message = _optional(body, "message", str, "a string")
        unscoped = _optional(body, "unscoped", str, '"refuse" or "spare"') or "refuse"
        sim.reject(symbol, status, message, unscoped=unscoped)
        return {"rejected": {s: r.to_json() for s, r in sim.venue.rejections.items()}}

    async def trader(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("stop") is True:
            await sim.stop_trader()
            return sim.trader.to_json()
        orders = _counts(body.get("orders"))
        interval = body.get("interval", 1.0)
        if not _is_number(interval):
            raise _BadRequest("interval: expected seconds")
        exchange = _optional(body, "exchange", str, "a string")
        on_cancel_all = body.get("on_cancel_all", False)
        if not isinstance(on_cancel_all, bool):
            raise _BadRequest("on_cancel_all: expected true or false")
        await sim.start_trader(
            orders, float(interval), exchange=exchange, on_cancel_all=on_cancel_all
        )
        return sim.trader.to_json()

    def positions(body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("positions")
        exchange = _optional(body, "exchange", str, "a string")
        if not isinstance(wanted, dict):
            raise _BadRequest('positions: expected {"SYMBOL": {"side", "size", ...}}')
        return sim.open_positions(wanted, exchange)

    def late_fill(body: dict[str, Any]) -> dict[str, Any]:
        symbol, side, after = body.get("symbol"), body.get("side"), body.get("after")
        if not isinstance(symbol, str) or side not in ("BUY", "SELL"):
            raise _BadRequest("symbol, side: expected a symbol and BUY or SELL")
        if after not in ("cancel_all", "positions", "place_order"):
            raise _BadRequest('after: expected "cancel_all", "positions" or "place_order"')
        try:
            quantity = Decimal(str(body.get("quantity")))
        except InvalidOperation:
            raise _BadRequest("quantity: expected a number string") from None
        exchange = _optional(body, "exchange", str, "a string") or sim.config.exchange
        sim.venue.late_fills.append(LateFill(exchange, symbol, side, quantity, after))
        return {"late_fills": [f.to_json() for f in sim.venue.late_fills]}

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats())

    async def received(request: web.Request) -> web.Response:
        return web.json_response({"requests": [r.to_json() for r in sim.requests]})

    posts: dict[str, Callable[[dict[str, Any]], Any]] = {
        "seed": seed,
        "faults": faults,
        "clear": clear,
        "forget": forget,
        "clock": clock,
        "behaviour": behaviour,
        "reject": reject,
        "trader": trader,
        "positions": positions,
        "late_fill": late_fill,
    }
    return [
        *(web.post(f"/_sim/{name}", _json_route(fn)) for name, fn in posts.items()),
        web.get("/_sim/stats", stats, allow_head=False),
        web.get("/_sim/requests", received, allow_head=False),
    ]

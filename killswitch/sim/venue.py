"""The venue's endpoints once a request has passed the referee (window, faults, auth).

``cancel_all``, order status, the two listings and the server time, with the
venue's answers (``VENUE.md``) and its error bodies ``{"message": ...}``
(plus an ``error`` code).  A symbol can be made to refuse ``cancel_all``
(:class:`Rejection`), as a suspended market would.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from killswitch.sim.book import OrderBook
from killswitch.sim.clock import VenueClock
from killswitch.sim.listing import ListingError, page, parse_query
from killswitch.sim.trader import Trader

__all__ = ["Rejection", "Venue", "error"]


def error(status: int, code: str, message: str) -> web.Response:
    """The venue's error body: ``{"message": ...}``, with a machine-readable ``error``."""
    return web.json_response({"error": code, "message": message}, status=status)


@dataclass(frozen=True, slots=True)
class Rejection:
    """``cancel_all`` for a symbol is refused with ``status`` and ``message``.

    ``unscoped``: what a ``cancel_all`` without a symbol does meanwhile —
    ``refuse`` (the same answer) or ``spare`` (cancel the rest, leave this
    symbol's orders working).
    """

    status: int
    message: str
    unscoped: Literal["refuse", "spare"] = "refuse"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "unscoped": self.unscoped}


class _BadBody(Exception):
    pass


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadBody("body is not JSON") from exc
    if not isinstance(body, dict):
        raise _BadBody("body must be a JSON object")
    return body


class Venue:
    def __init__(self, book: OrderBook, clock: VenueClock, trader: Trader) -> None:
        self.book = book
        self.clock = clock
        self.trader = trader
        self.rejections: dict[str, Rejection] = {}

    def server_time(self) -> web.Response:
        return web.json_response({"serverTime": self.clock.now_ms()})

    async def cancel_all(self, request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
        except _BadBody as exc:
            return error(400, "bad_request", str(exc))
        exchange, symbol = body.get("exchange"), body.get("symbol")
        if not isinstance(exchange, str) or not exchange:
            return error(422, "invalid_field", "exchange: required, a string")
        if exchange not in self.book.exchanges:
            return error(422, "invalid_field", f"exchange: unknown exchange {exchange!r}")
        if symbol is not None and not isinstance(symbol, str):
            return error(422, "invalid_field", "symbol: expected a string")
        spare: set[str] = set()
        for rejected, rejection in self.rejections.items():
            if symbol == rejected or (symbol is None and rejection.unscoped == "refuse"):
                return error(rejection.status, "rejected", rejection.message)
            if symbol is None:
                spare.add(rejected)
        ids = self.book.cancel_all(exchange, symbol, frozenset(spare))
        self.trader.cancel_all_served()
        return web.json_response({"data": {"orders_ids": ids}})

    def order_status(self, request: web.Request, now: float) -> web.Response:
        order_id = request.query.get("order_id")
        if not order_id:
            return error(400, "bad_request", "order_id: required")
        try:
            uuid.UUID(order_id)
        except ValueError:
            return error(400, "bad_request", "order_id: malformed")
        order = self.book.get(order_id)
        if order is None:
            return error(404, "not_found", "order not found")
        return web.json_response({"data": {"order": order.to_json(now)}})

    async def listing(self, request: web.Request, now: float, *, closed: bool) -> web.Response:
        try:
            body = await _json_body(request)
            query = parse_query(
                body, closed=closed, now_ms=self.clock.now_ms(), exchanges=self.book.exchanges
            )
        except _BadBody as exc:
            return error(400, "bad_request", str(exc))
        except ListingError as exc:
            return error(422, "invalid_field", str(exc))
        return web.json_response({"data": page(query, self.book.with_status(now), now)})

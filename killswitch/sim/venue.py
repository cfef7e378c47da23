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
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from aiohttp import web

from killswitch.sim.book import STOPS, OrderBook
from killswitch.sim.clock import VenueClock
from killswitch.sim.listing import ListingError, page, parse_query
from killswitch.sim.trader import Trader

__all__ = ["LateFill", "Rejection", "Venue", "error"]


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


@dataclass(frozen=True, slots=True)
class LateFill:
    """A fill that lands right after the next request to ``after`` is served (a cancel
    that raced a fill, a trading process's order filling between the cancel and the read)."""

    exchange: str
    symbol: str
    side: str
    quantity: Decimal
    after: str

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "side": self.side, "quantity": str(self.quantity),
                "after": self.after}  # fmt: skip


class _BadBody(Exception):
    pass


def _quantity(value: Any) -> Decimal | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


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
        self.late_fills: list[LateFill] = []
        self.placed: list[dict[str, Any]] = []  # every accepted place-order body

    def land_late_fills(self, after: str) -> None:
        """Apply the fills armed to land after a request to ``after``."""
        due = [f for f in self.late_fills if f.after == after]
        self.late_fills = [f for f in self.late_fills if f.after != after]
        for f in due:
            book = self.book
            mark = book.positions.mark(f.symbol)
            book.positions.fill(f.exchange, f.symbol, f.side, f.quantity, mark, self.clock.now_ms())

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
        self.land_late_fills("cancel_all")
        return web.json_response({"data": {"orders_ids": ids}})

    def positions(self, request: web.Request) -> web.Response:
        """``GET positions?exchange=&symbol=`` (both mandatory): ``{"data": [...]}``."""
        exchange, symbol = request.query.get("exchange"), request.query.get("symbol")
        if not exchange:
            return error(422, "invalid_field", "exchange: required")
        if exchange not in self.book.exchanges:
            return error(422, "invalid_field", f"exchange: unknown exchange {exchange!r}")
        if not symbol:
            return error(422, "invalid_field", "symbol: required")
        self.book.settle()
        answer = [p.to_json() for p in self.book.positions.of(exchange, symbol)]
        self.land_late_fills("positions")
        return web.json_response({"data": answer})

    async def place_order(self, request: web.Request) -> web.Response:
        """``POST order``: MARKET (filled at once at the mark) or a TP/SL order."""
        try:
            body = await _json_body(request)
        except _BadBody as exc:
            return error(400, "bad_request", str(exc))
        exchange, symbol = body.get("exchange"), body.get("symbol")
        side, order_type = body.get("side"), body.get("order_type")
        reduce_only, client_id = body.get("reduce_only", False), body.get("client_order_id")
        if not isinstance(exchange, str) or exchange not in self.book.exchanges:
            return error(422, "invalid_field", "exchange: required, a known exchange")
        if not isinstance(symbol, str) or not symbol:
            return error(422, "invalid_field", "symbol: required, a string")
        if side not in ("BUY", "SELL"):
            return error(422, "invalid_field", "side: expected BUY or SELL")
        if not isinstance(reduce_only, bool):
            return error(422, "invalid_field", "reduce_only: expected true or false")
        if client_id is not None and not isinstance(client_id, str):
            return error(422, "invalid_field", "client_order_id: expected a string")
        if order_type in STOPS:
            trigger = body.get("trigger_price")
            if reduce_only is not True or _quantity(trigger) is None:
                return error(422, "invalid_field", "trigger_price, reduce_only: required")
            order_id = self.book.place_stop(exchange, symbol, order_type, side, str(trigger))
            return web.json_response({"data": {"order_id": order_id, "status": "RAISED"}})
        if order_type != "MARKET":
            return error(422, "invalid_field", "order_type: the sim takes MARKET, TP/SL")
        quantity = _quantity(body.get("quantity"))
        if quantity is None or quantity <= 0:
            return error(422, "invalid_field", "quantity: expected a positive number string")
        if self.book.working(exchange, symbol):
            self.book.positions.orders_while_open += 1
        order = self.book.place_market(
            exchange, symbol, side, quantity, reduce_only=reduce_only, client_order_id=client_id
        )
        self.placed.append(body)
        self.land_late_fills("place_order")
        return web.json_response({"data": order.to_json(self.book.now())})

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

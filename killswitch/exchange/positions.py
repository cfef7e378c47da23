"""The venue's positions and its place-order endpoint (contract §12, VENUE.md's last section).

Both are signed and rate limited like the rest, each on its own sliding window
(:data:`POSITIONS`, :data:`PLACE_ORDER` in the client's ``limiters``):

- ``GET positions_path?exchange=E&symbol=S`` (both mandatory: one symbol a call)
  answers ``{"data": [<position>...]}``; a symbol without a position answers an
  empty list.  Anything that is not a list of readable positions is a bad answer
  (:class:`~killswitch.exchange.errors.BadResponse`): unknown, never "no position".
- ``POST place_order_path`` places the one order the switch ever places: a
  reduce-only ``MARKET`` order that closes a position.  It is never retried here
  (not even on a stale connection): after a lost answer the caller reads the
  position first (:mod:`killswitch.kill.flatten`).

Numbers are JSON strings read as :class:`~decimal.Decimal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal
from urllib.parse import quote

from killswitch.exchange.client import ExchangeClient

__all__ = [
    "PLACE_ORDER",
    "POSITIONS",
    "PlacedOrder",
    "Position",
    "PositionsApi",
    "parse_placed",
    "parse_positions",
]

POSITIONS: Final = "positions"
PLACE_ORDER: Final = "place_order"

Side = Literal["LONG", "SHORT"]


@dataclass(frozen=True)
class Position:
    """One open position as the venue answered it (``size`` unsigned, base asset)."""

    symbol: str
    side: Side
    size: Decimal
    notional: Decimal | None  # position_value, USDT
    entry_price: Decimal | None
    mark_price: Decimal | None
    unrealised_pnl: Decimal | None
    liquidation_price: Decimal | None

    @property
    def close_side(self) -> str:
        """The order side that reduces this position."""
        return "SELL" if self.side == "LONG" else "BUY"

    def value(self) -> Decimal | None:
        """The notional in USDT: ``position_value``, else size x mark price."""
        if self.notional is not None:
            return abs(self.notional)
        if self.mark_price is not None:
            return abs(self.size * self.mark_price)
        return None


@dataclass(frozen=True)
class PlacedOrder:
    """What the venue answered a placed order: its id and the fields it echoed."""

    order_id: str
    raw: Mapping[str, Any]


def _number(value: Any, name: str, *, required: bool = False) -> Decimal | None:
    if value is None or value == "":
        if required:
            raise ValueError(f"a position has no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"a position's {name} is not a number")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"a position's {name} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"a position's {name} is not finite")
    return number


def parse_positions(document: Mapping[str, Any], symbol: str) -> tuple[Position, ...]:
    """The open positions of ``symbol`` in a positions answer; ``ValueError`` if unreadable.

    ``data`` must be a list (VENUE.md: anything else is unreadable, never "no
    position"); each entry needs ``symbol``, ``position_side`` LONG/SHORT and a
    ``position_size``.  A size of 0 is no position (closed).
    """
    data = document.get("data")
    if not isinstance(data, list):
        raise ValueError("data is not a list of positions")
    positions: list[Position] = []
    for entry in data:
        if not isinstance(entry, dict):
            raise ValueError("a position is not an object")
        if entry.get("symbol") != symbol:
            raise ValueError("a position is about another symbol")
        side = entry.get("position_side")
        if side not in ("LONG", "SHORT"):
            raise ValueError("a position's position_side is not LONG or SHORT")
        size = _number(entry.get("position_size"), "position_size", required=True)
        assert size is not None
        if size < 0:
            raise ValueError("a position's position_size is negative")
        if size == 0:
            continue
        positions.append(
            Position(
                symbol=symbol,
                side=side,
                size=size,
                notional=_number(entry.get("position_value"), "position_value"),
                entry_price=_number(entry.get("avg_entry_price"), "avg_entry_price"),
                mark_price=_number(entry.get("mark_price"), "mark_price"),
                unrealised_pnl=_number(entry.get("unrealised_pnl"), "unrealised_pnl"),
                liquidation_price=_number(entry.get("liquidation_price"), "liquidation_price"),
            )
        )
    return tuple(positions)


def parse_placed(document: Mapping[str, Any]) -> PlacedOrder:
    """The placed order's id from ``{"data": {"order_id": ...}}``; ``ValueError`` if absent."""
    data = document.get("data")
    if not isinstance(data, dict):
        raise ValueError("data is not an object")
    order_id = data.get("order_id")
    if isinstance(order_id, int) and not isinstance(order_id, bool):
        order_id = str(order_id)
    if not isinstance(order_id, str) or not order_id:
        raise ValueError("data has no order_id")
    return PlacedOrder(order_id, data)


class PositionsApi:
    """The two endpoints over the exchange client (its signing, pools and limiters)."""

    def __init__(self, client: ExchangeClient, positions_path: str, place_order_path: str) -> None:
        for endpoint in (POSITIONS, PLACE_ORDER):
            if endpoint not in client.limiters:
                raise ValueError(f"no limiter for {endpoint}")
        self.client = client
        self._positions_path = positions_path
        self._place_order_path = place_order_path

    @property
    def dry_run(self) -> bool:
        return bool(self.client.health()["dry_run"])

    async def positions(self, exchange: str, symbol: str) -> tuple[Position, ...] | None:
        """The open positions of one symbol (None in dry run: nothing was read).

        Raises :class:`~killswitch.exchange.errors.ExchangeError` when the call fails or
        the answer cannot be read."""
        query = f"?exchange={quote(exchange, safe='')}&symbol={quote(symbol, safe='')}"
        return await self.client.signed_call(
            POSITIONS,
            "GET",
            self._positions_path + query,
            lambda document: parse_positions(document, symbol),
        )

    async def place_close(
        self, exchange: str, symbol: str, side: str, quantity: Decimal, client_order_id: str
    ) -> PlacedOrder | None:
        """One reduce-only MARKET order (None in dry run: nothing was sent).  Never retried."""
        body = {
            "exchange": exchange,
            "symbol": symbol,
            "side": side,
            "order_type": "MARKET",
            "quantity": str(quantity),
            "reduce_only": True,
            "client_order_id": client_order_id,
        }
        return await self.client.signed_call(
            PLACE_ORDER,
            "POST",
            self._place_order_path,
            parse_placed,
            body=body,
            retry_stale=False,
        )

"""The simulated venue's positions: what fills do to them, and the referee's counts.

VENUE.md: a fill on the position's side grows it (weighted entry price); a
smaller opposite fill shrinks it, an equal one closes it, a larger one
**flips** it; ``reduce_only`` on the opposite side never flips (it is clipped
to the size).  A closed position disappears.  The referee counts what a kill
switch must never do: ``flips`` (a position that changed side), ``overcloses``
(a reduce-only order larger than the position it met, or meeting none: a
double close) and ``orders_while_open`` (an order placed while the symbol
still had working orders; counted by the venue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Fill", "PositionBook", "SimPosition"]

Side = Literal["LONG", "SHORT"]
LEVERAGE = Decimal(10)


@dataclass(slots=True)
class SimPosition:
    exchange: str
    symbol: str
    side: Side
    size: Decimal
    entry_price: Decimal
    mark_price: Decimal
    created_at: int
    updated_at: int
    position_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The venue's position object; numbers are strings."""
        sign = 1 if self.side == "LONG" else -1
        value = self.size * self.mark_price
        pnl = (self.mark_price - self.entry_price) * self.size * sign
        liquidation = self.entry_price * (1 - sign / LEVERAGE)
        return {
            "exchange": self.exchange,
            "position_id": self.position_id,
            "symbol": self.symbol,
            "position_side": self.side,
            "leverage": str(LEVERAGE),
            "position_size": str(self.size),
            "position_value": str(value),
            "position_margin": str(value / LEVERAGE),
            "maint_margin": str(value / LEVERAGE / 2),
            "avg_entry_price": str(self.entry_price),
            "mark_price": str(self.mark_price),
            "last_price": str(self.mark_price),
            "unrealised_pnl": str(pnl),
            "liquidation_price": str(liquidation),
            "margin_type": "ISOLATED",
            "status": "OPEN",
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill as it moved a position (the referee's record)."""

    exchange: str
    symbol: str
    side: str  # BUY / SELL
    quantity: Decimal
    price: Decimal
    reduce_only: bool
    before: str  # e.g. "LONG 0.5" or "none"
    after: str


@dataclass
class PositionBook:
    """Open positions by (exchange, symbol), moved by fills."""

    positions: dict[tuple[str, str], SimPosition] = field(default_factory=dict)
    marks: dict[str, Decimal] = field(default_factory=dict)  # mark price by symbol
    fills: list[Fill] = field(default_factory=list)
    flips: int = 0
    overcloses: int = 0
    orders_while_open: int = 0
    _next_id: int = 0

    def mark(self, symbol: str, default: Decimal = Decimal(100)) -> Decimal:
        return self.marks.get(symbol, default)

    def open(
        self,
        exchange: str,
        symbol: str,
        side: Side,
        size: Decimal,
        entry_price: Decimal,
        now_ms: int,
        mark_price: Decimal | None = None,
    ) -> SimPosition:
        """Seed a position (replacing any on that symbol)."""
        if size <= 0:
            raise ValueError("size: expected a positive quantity")
        self.marks[symbol] = mark_price if mark_price is not None else entry_price
        self._next_id += 1
        position = SimPosition(
            exchange, symbol, side, size, entry_price, self.marks[symbol], now_ms, now_ms,
            position_id=f"pos-{self._next_id}",
        )  # fmt: skip
        self.positions[(exchange, symbol)] = position
        return position

    def of(self, exchange: str, symbol: str) -> list[SimPosition]:
        position = self.positions.get((exchange, symbol))
        return [] if position is None else [position]

    def fill(
        self,
        exchange: str,
        symbol: str,
        side: str,
        quantity: Decimal,
        price: Decimal,
        now_ms: int,
        *,
        reduce_only: bool = False,
    ) -> Decimal:
        """Apply a fill; the quantity that filled (reduce-only is clipped to the size)."""
        key = (exchange, symbol)
        position = self.positions.get(key)
        before = "none" if position is None else f"{position.side} {position.size}"
        direction: Side = "LONG" if side == "BUY" else "SHORT"
        if reduce_only:
            if position is None or position.side == direction:
                self.overcloses += 1
                return Decimal(0)
            if quantity > position.size:
                self.overcloses += 1
                quantity = position.size
        if quantity <= 0:
            return Decimal(0)
        if position is None:
            self._next_id += 1
            position = SimPosition(
                exchange, symbol, direction, quantity, price, self.mark(symbol, price), now_ms,
                now_ms, position_id=f"pos-{self._next_id}",
            )  # fmt: skip
            self.positions[key] = position
        elif position.side == direction:
            total = position.size + quantity
            position.entry_price = (position.entry_price * position.size + price * quantity) / total
            position.size = total
            position.updated_at = now_ms
        elif quantity < position.size:
            position.size -= quantity
            position.updated_at = now_ms
        elif quantity == position.size:
            del self.positions[key]
        else:
            self.flips += 1
            position.side = direction
            position.size = quantity - position.size
            position.entry_price = price
            position.updated_at = now_ms
        after = self.positions.get(key)
        self.fills.append(
            Fill(
                exchange, symbol, side, quantity, price, reduce_only, before,
                "none" if after is None else f"{after.side} {after.size}",
            )
        )  # fmt: skip
        return quantity

    def truth(self) -> dict[str, Any]:
        return {
            "positions": [p.to_json() for p in self.positions.values()],
            "flips": self.flips,
            "overcloses": self.overcloses,
            "orders_while_open": self.orders_while_open,
            "fills": [
                {
                    "symbol": f.symbol,
                    "side": f.side,
                    "quantity": str(f.quantity),
                    "reduce_only": f.reduce_only,
                    "before": f.before,
                    "after": f.after,
                }
                for f in self.fills
            ],
        }

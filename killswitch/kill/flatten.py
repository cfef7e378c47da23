"""Flatten: close the positions a kill left, one reduce-only MARKET order at a time (§12).

Opt-in (``[flatten] enabled`` for every kill, or ``killswitch flatten`` by an
operator who has read the report), and only for a symbol proven flat of
orders.  Per position:

- ``max_notional`` (USDT, 0: no limit): a larger position is ``flatten.refused``
  (critical) and left for a human;
- one reduce-only ``MARKET`` order on the opposite side for the whole size the
  last read showed, never more (``flatten.sent``).  Its record is durable in
  the state store *before* it leaves, so a restart knows it may have been sent;
- then the position is read again until it is gone (``flatten.done``).  While
  it is not, nothing else is sent until the first order's outcome is known:
  its status (by ``order_id``), or — after a lost answer (5xx, timeout), or a
  restart — the symbol's own listings searched for its ``client_order_id``.
  An order found terminal with a position still left (a fill that landed
  after the read) gets one more close for what is left; an order found
  nowhere, twice, with the position unchanged, was never placed;
- a 4xx other than 429 is ``flatten.rejected`` (critical, the venue's
  ``message``): final, never retried as is and never without ``reduce_only``;
- a bounded number of orders and reads ends in ``flatten.failed`` (critical).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.errors import ExchangeError, OrderNotFound, RateLimited
from killswitch.exchange.positions import PlacedOrder, Position
from killswitch.kill.exposure import Exposure, PositionReader, SymbolExposure, read_positions
from killswitch.kill.plan import error_message, outcome_unknown
from killswitch.log import get_logger
from killswitch.store.state import FlattenRecord, StateStore

__all__ = ["MAX_CHECKS", "MAX_ORDERS", "Flattener", "Outcome"]

MAX_ORDERS: Final = 3
"""Close orders per symbol and flatten, at most (a residual after a late fill, a retry
of an order proven never placed)."""
MAX_CHECKS: Final = 12
"""Reads (with their order look-ups) per close order before ``flatten.failed``."""
CHECK_FIRST: Final = 0.1
CHECK_MAX: Final = 2.0
MAX_429: Final = 5

Outcome = Literal["closed", "refused", "rejected", "failed", "skipped"]
Fate = Literal["gone", "terminal", "not_placed", "failed"]


class CloseVenue(PositionReader, Protocol):
    async def place_close(
        self, exchange: str, symbol: str, side: str, quantity: Decimal, client_order_id: str
    ) -> PlacedOrder | None: ...


class OrderLookup(Protocol):
    """The exchange client's order status and listings (``VenueOrder``, ``OrderPage``)."""

    async def order_status(self, order_id: str) -> Any: ...

    async def open_orders(self, exchange: str, symbol: str | None = None) -> Any: ...

    async def closed_orders(self, exchange: str, symbol: str | None = None) -> Any: ...


@dataclass
class _Close:
    record: FlattenRecord
    before: Position | None  # the read the order was sized from (None: after a restart)


class Flattener:
    """Closes positions; one per symbol at a time, symbols concurrently."""

    def __init__(
        self,
        config: Callable[[], Config],
        venue: CloseVenue,
        lookup: OrderLookup,
        store: StateStore,
        clock: Clock,
        *,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self._config = config
        self._venue = venue
        self._lookup = lookup
        self._store = store
        self._clock = clock
        self._log = log or get_logger(component="flatten")
        self.running = False

    # ------------------------------------------------------------------ entry points

    async def flatten(self, exposure: Exposure, *, only: str | None = None) -> None:
        """Close every open position of ``exposure`` (or of symbol ``only``) that may be closed;
        each symbol's outcome goes into ``exposure`` (``flatten``, ``flattened``)."""
        self.running = True
        try:
            pending = await self._pending()
            chosen = [s for s in exposure.symbols if only is None or s.symbol == only]
            outcomes = await asyncio.gather(
                *(self._symbol(exposure.kill_id, s, pending) for s in chosen)
            )
            exposure.flattened = sum(n for n in outcomes)
        finally:
            self.running = False

    async def _pending(self) -> Mapping[tuple[str, str], list[FlattenRecord]]:
        """Close orders of earlier runs whose outcome is not known yet (a crash)."""
        try:
            records = await asyncio.wrap_future(self._store.flatten_open())
        except Exception as exc:  # a store that cannot be read: no record to resume
            self._log.warning("flatten.store_unreadable", problem=str(exc))
            records = []
        by_symbol: dict[tuple[str, str], list[FlattenRecord]] = {}
        for record in records:
            by_symbol.setdefault((record.exchange, record.symbol), []).append(record)
        return by_symbol

    # ------------------------------------------------------------------ one symbol

    async def _symbol(
        self,
        kill_id: str,
        sym: SymbolExposure,
        pending: Mapping[tuple[str, str], list[FlattenRecord]],
    ) -> int:
        """Flatten one symbol; the number of positions closed."""
        key = (sym.exchange, sym.symbol)
        earlier = pending.get(key, [])
        if sym.positions == () and not earlier:
            return 0  # read, and no position (None would be unknown: read again below)
        if not sym.flat_of_orders:
            self._finish(sym, "skipped", why="not proven flat of orders")
            self._log.warning("flatten.skipped", symbol=sym.symbol, why="not proven flat of orders")
            return 0
        positions = sym.positions
        for record in earlier:  # read the venue first: what became of that order?
            self._log.warning(
                "flatten.resuming",
                symbol=sym.symbol,
                client_order_id=record.client_order_id,
                quantity=record.quantity,
            )
            fate, positions = await self._resolve(_Close(record, None))
            if fate == "failed":
                return self._failed(sym, "the outcome of an earlier close is still unknown")
        if positions is None:
            positions, why = await read_positions(
                self._venue, sym.exchange, sym.symbol, self._clock, self._log
            )
            if positions is None:
                return self._failed(sym, f"positions unreadable ({why})")
        latest: tuple[Position, ...] = positions
        handled: set[str] = set()
        closed = 0
        while True:  # one position per side (hedge mode has two), each from the latest read
            todo = [p for p in latest if p.side not in handled]
            if not todo:
                break
            handled.add(todo[0].side)
            outcome, latest = await self._close(kill_id, sym, todo[0], latest)
            sym.positions = latest
            if outcome != "closed":
                if sym.flatten is None:
                    self._finish(sym, outcome)
                return closed
            closed += 1
        self._finish(sym, "closed", closed=closed)
        return closed

    async def _close(
        self,
        kill_id: str,
        sym: SymbolExposure,
        position: Position,
        latest: tuple[Position, ...],
    ) -> tuple[Outcome, tuple[Position, ...]]:
        """Close one position: order, read, until gone; the outcome and the last read."""
        limit = self._config().flatten.max_notional
        current: Position | None = position
        orders = limited = 0
        filled = Decimal(0)
        while current is not None:
            value = current.value()
            if limit > 0 and (value is None or value > Decimal(str(limit))):
                self._log.critical(
                    "flatten.refused",
                    symbol=sym.symbol,
                    side=current.side,
                    size=str(current.size),
                    notional=None if value is None else str(value),
                    max_notional=limit,
                    why="notional over flatten.max_notional: left for a human",
                )
                return "refused", latest
            if orders >= MAX_ORDERS:
                self._failed(sym, f"still open after {orders} close orders")
                return "failed", latest
            close = await self._send(kill_id, sym, current)
            orders += 1
            if isinstance(close, ExchangeError):
                if isinstance(close, RateLimited):
                    limited += 1
                    orders -= 1  # a 429 placed nothing: the limiter waits, then again
                    if limited <= MAX_429:
                        continue
                    self._failed(sym, f"place order answered 429 {limited} times")
                    return "failed", latest
                self._log.critical(
                    "flatten.rejected",
                    symbol=sym.symbol,
                    side=current.close_side,
                    quantity=str(current.size),
                    http_status=close.status,
                    message=error_message(close),
                    error=close.kind,
                )
                return "rejected", latest
            fate, latest = close
            if fate == "failed":
                self._failed(sym, "the close order's outcome is still unknown")
                return "failed", latest
            now = next((p for p in latest if p.side == current.side), None)
            if fate in ("gone", "terminal"):
                filled += max(Decimal(0), current.size - (now.size if now else Decimal(0)))
            current = now
        self._log.info("flatten.done", symbol=sym.symbol, side=position.side,
                       filled_quantity=str(filled))  # fmt: skip
        return "closed", latest

    async def _send(
        self, kill_id: str, sym: SymbolExposure, position: Position
    ) -> ExchangeError | tuple[Fate, tuple[Position, ...]]:
        """Record, send, and (unless refused) learn the order's fate before anything else."""
        record = FlattenRecord(
            client_order_id=str(uuid.uuid4()),
            kill_id=kill_id,
            exchange=sym.exchange,
            symbol=sym.symbol,
            side=position.close_side,
            quantity=str(position.size),
            sent_at=self._clock.time(),
            state="sending",
            order_id=None,
        )
        try:
            await asyncio.wrap_future(self._store.flatten_sending(record))
        except Exception as exc:  # the store failing must not keep a position open
            self._log.error("flatten.store_write_failed", problem=str(exc))
        self._log.info(
            "flatten.sent",
            symbol=sym.symbol,
            side=record.side,
            quantity=record.quantity,
            client_order_id=record.client_order_id,
            reduce_only=True,
        )
        try:
            placed = await self._venue.place_close(
                sym.exchange, sym.symbol, record.side, position.size, record.client_order_id
            )
        except ExchangeError as exc:
            if isinstance(exc, RateLimited) or not outcome_unknown(exc):
                state = "not_placed" if isinstance(exc, RateLimited) else "rejected"
                self._update(record, state, detail=error_message(exc) or exc.kind)
                return exc
            self._log.error(
                "flatten.unknown",
                symbol=sym.symbol,
                client_order_id=record.client_order_id,
                error=exc.kind,
                http_status=exc.status,
                note="outcome unknown: the position is read before anything else is sent",
            )
            self._update(record, "unknown", detail=exc.kind)
            return await self._resolve(_Close(record, position))
        if placed is None:  # dry run: nothing was sent
            self._update(record, "not_placed", detail="dry run")
            return "failed", (position,)
        record = dataclasses.replace(record, order_id=placed.order_id)
        self._update(record, "accepted", order_id=placed.order_id)
        return await self._resolve(_Close(record, position))

    # ------------------------------------------------------------------ the order's fate

    async def _resolve(self, close: _Close) -> tuple[Fate, tuple[Position, ...]]:
        """Read the position until it is gone, or the order's outcome is known."""
        record = close.record
        delay = 0.0
        absent = 0
        last: tuple[Position, ...] = () if close.before is None else (close.before,)
        for _ in range(MAX_CHECKS):
            if delay:
                await self._clock.sleep(delay)
            delay = min(max(delay * 2, CHECK_FIRST), CHECK_MAX)
            positions, _why = await read_positions(
                self._venue, record.exchange, record.symbol, self._clock, self._log
            )
            if positions is None:
                continue
            last = positions
            if not positions:
                self._update(record, "done")
                return "gone", ()
            state = await self._order_state(record)
            if state == "terminal":
                self._update(record, "done")
                return "terminal", positions
            if state == "absent":
                before = close.before
                same = (
                    None
                    if before is None
                    else next((p for p in positions if p.side == before.side), None)
                )
                # The size, not the prices: a mark price moves every second.
                unchanged = before is None or (same is not None and same.size == before.size)
                absent = absent + 1 if unchanged else 0
                if absent >= 2:
                    self._update(record, "not_placed", detail="found nowhere, position unchanged")
                    return "not_placed", positions
        self._update(record, "unknown", detail="outcome still unknown")
        return "failed", last

    async def _order_state(self, record: FlattenRecord) -> str:
        """``terminal``, ``working``, ``absent`` or ``unknown`` (a look-up failed)."""
        terminal = self._config().confirm.terminal_statuses
        try:
            if record.order_id is not None:
                order = await self._lookup.order_status(record.order_id)
                return "terminal" if order.status in terminal else "working"
            for listing in (self._lookup.closed_orders, self._lookup.open_orders):
                page = await listing(record.exchange, record.symbol)
                for order in page.orders:
                    if order.raw.get("client_order_id") == record.client_order_id:
                        return "terminal" if order.status in terminal else "working"
            return "absent"
        except OrderNotFound:
            # An order the venue acknowledged with an id exists: "not found" is the venue
            # not knowing it *yet*, never proof that it was not placed.
            return "unknown"
        except ExchangeError:
            return "unknown"

    # ------------------------------------------------------------------ bookkeeping

    def _update(self, record: FlattenRecord, state: str, **detail: str | None) -> None:
        self._store.flatten_update(record.client_order_id, state, self._clock.time(), **detail)

    def _finish(self, sym: SymbolExposure, outcome: Outcome, **detail: Any) -> None:
        sym.flatten = {"outcome": outcome, **detail}

    def _failed(self, sym: SymbolExposure, why: str) -> int:
        self._log.critical("flatten.failed", symbol=sym.symbol, why=why)
        self._finish(sym, "failed", why=why)
        return 0

"""Exposure after every kill: the positions it leaves, read inside their own limit (§12).

A kill that proved the book flat has not made the account safe: positions stay
open, and ``cancel_all`` cancelled their take-profit and stop-loss orders.
:class:`AfterFlat` is the step that runs once the kill is flat (or has given up
on being flat), at the one call site marked in :mod:`killswitch.kill.runner`:

- the symbols in scope (:func:`plan_scope`): every target's symbols, every
  symbol the kill's orders were on (:class:`OrderFacts` learns them from the
  listings and status answers the kill already paid for), ``positions.symbols``;
- one positions call per symbol, all at once through the positions limiter
  (a full window lets 20 leave together; the rest follow as slots free), each
  retried a few times; a symbol whose answer cannot be read is *unknown*,
  never "no position" (``exposure_read: false``);
- ``kill.exposure`` with each position and ``stops_cancelled`` (the
  ``STOP_MARKET`` / ``TAKE_PROFIT_MARKET`` orders on that symbol this kill
  cancelled, as far as it learned their types);
- with ``[flatten] enabled``, the closes (:mod:`killswitch.kill.flatten`), for
  symbols proven flat of orders only;
- the record in the state store, and the fields ``kill.completed`` gains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.errors import ExchangeError, RateLimited
from killswitch.exchange.positions import Position
from killswitch.kill.order_facts import OrderFacts, SymbolKey
from killswitch.log import get_logger

__all__ = [
    "AfterFlat",
    "Exposure",
    "KillFacts",
    "PositionReader",
    "PositionsStep",
    "SymbolExposure",
    "plan_scope",
    "read_positions",
]

READ_ATTEMPTS: Final = 3
"""Positions calls per symbol before its answer is unknown (429s do not count)."""
READ_RETRY: Final = 0.25
"""Seconds before the second call of a failed read; doubled for the third."""
MAX_429: Final = 5


class PositionsStep(Protocol):
    """What the kill runner calls once, after the flat proof (:class:`AfterFlat`)."""

    async def run(self, facts: KillFacts) -> dict[str, Any]: ...


class PositionReader(Protocol):
    async def positions(self, exchange: str, symbol: str) -> tuple[Position, ...] | None: ...


@dataclass(frozen=True)
class KillFacts:
    """What the runner hands the step: which orders were the kill's, which units proved flat."""

    kill_id: str
    statuses: Mapping[str, str]  # order id -> last status (every order of the kill)
    flat: Mapping[tuple[str, str | None], bool | None]  # unit (exchange, symbol|None) -> flat


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class SymbolExposure:
    exchange: str
    symbol: str
    positions: tuple[Position, ...] | None  # None: unknown (the answer could not be read)
    error: str | None = None
    stops_cancelled: int = 0
    flat_of_orders: bool = False
    flatten: dict[str, Any] | None = None  # what the flatten did (kill/flatten.py)

    def position_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "exchange": self.exchange,
                "symbol": self.symbol,
                "side": p.side,
                "size": str(p.size),
                "notional": _text(p.value()),
                "entry_price": _text(p.entry_price),
                "mark_price": _text(p.mark_price),
                "unrealised_pnl": _text(p.unrealised_pnl),
                "liquidation_price": _text(p.liquidation_price),
                "stops_cancelled": self.stops_cancelled,
            }
            for p in self.positions or ()
        ]


@dataclass
class Exposure:
    kill_id: str
    symbols: list[SymbolExposure]
    read_at: float
    flattened: int | None = None  # positions closed (None: flatten off)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def read(self) -> bool:
        return all(s.positions is not None for s in self.symbols)

    @property
    def positions_open(self) -> int:
        return sum(len(s.positions or ()) for s in self.symbols)

    def unreadable(self) -> list[str]:
        return [s.symbol for s in self.symbols if s.positions is None]

    def positions(self) -> list[dict[str, Any]]:
        return [p for s in self.symbols for p in s.position_dicts()]

    def as_dict(self) -> dict[str, Any]:
        """For ``GET /status`` ``positions`` and the state store."""
        return {
            "kill_id": self.kill_id,
            "read_at": round(self.read_at, 3),
            "exposure_read": self.read,
            "positions_open": self.positions_open,
            "positions": self.positions(),
            "unreadable": self.unreadable(),
            "symbols": [s.symbol for s in self.symbols],
            "flattened": self.flattened,
            "flatten": {s.symbol: s.flatten for s in self.symbols if s.flatten is not None},
            **self.extra,
        }


def plan_scope(config: Config, order_symbols: Iterable[SymbolKey]) -> list[SymbolKey]:
    """Every symbol to read, once: the targets' symbols, the orders', ``positions.symbols``
    (on every target's exchange)."""
    keys: dict[SymbolKey, None] = {}
    for target in config.targets:
        keys.update(((target.exchange, s), None) for s in target.symbols)
    keys.update(dict.fromkeys(order_symbols))
    exchanges = dict.fromkeys(t.exchange for t in config.targets)
    for symbol in config.positions.symbols:
        keys.update(((exchange, symbol), None) for exchange in exchanges)
    return list(keys)


async def read_positions(
    reader: PositionReader,
    exchange: str,
    symbol: str,
    clock: Clock,
    log: FilteringBoundLogger,
) -> tuple[tuple[Position, ...] | None, str | None]:
    """One symbol's positions, retried a few times: (positions, None) or (None, why)."""
    failures = limited = 0
    while True:
        try:
            return await reader.positions(exchange, symbol), None
        except ExchangeError as exc:
            if isinstance(exc, RateLimited) and limited < MAX_429:
                limited += 1  # the limiter was deferred: the next call waits there
                continue
            failures += 1
            why = exc.kind if exc.message is None else f"{exc.kind}: {exc.message}"
            log.warning(
                "positions.read_failed",
                exchange=exchange,
                symbol=symbol,
                attempt=failures,
                error=exc.kind,
                http_status=exc.status,
                message=exc.message,
            )
            if failures >= READ_ATTEMPTS:
                return None, why
            await clock.sleep(READ_RETRY * 2 ** (failures - 1))


Flatten = Callable[[Exposure], Awaitable[None]]


class AfterFlat:
    """The step after the flat proof: read the exposure, flatten if asked, record it."""

    def __init__(
        self,
        config: Callable[[], Config],
        reader: PositionReader,
        facts: OrderFacts,
        clock: Clock,
        *,
        on_exposure: Callable[[Exposure], None],
        flatten: Flatten | None = None,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self._config = config
        self._reader = reader
        self.facts = facts
        self._clock = clock
        self._on_exposure = on_exposure  # persist it, show it in /status
        self._flatten = flatten
        self._log = log or get_logger(component="positions")
        self.last: Exposure | None = None

    async def read(
        self, kill_id: str, facts: KillFacts | None = None, *, extra: Iterable[SymbolKey] = ()
    ) -> Exposure:
        """Read every symbol in scope now (a kill's facts add its orders' symbols;
        ``extra``: more, such as those an earlier read found open)."""
        config = self._config()
        default = config.targets[0].exchange
        statuses = {} if facts is None else facts.statuses
        order_symbols = [*self.facts.symbols(statuses, default), *extra]
        scope = plan_scope(config, order_symbols)
        stops = self.facts.stops_cancelled(statuses, default)
        flat = {} if facts is None else facts.flat
        answers = await asyncio.gather(
            *(read_positions(self._reader, ex, sym, self._clock, self._log) for ex, sym in scope)
        )
        symbols = [
            SymbolExposure(
                ex,
                sym,
                positions,
                error=why,
                stops_cancelled=stops.get((ex, sym), 0),
                flat_of_orders=bool(flat.get((ex, sym)) or flat.get((ex, None))),
            )
            for (ex, sym), (positions, why) in zip(scope, answers, strict=True)
        ]
        return Exposure(kill_id, symbols, self._clock.time())

    async def run(self, facts: KillFacts) -> dict[str, Any]:
        """Exposure (and flatten) for the kill; the fields ``kill.completed`` gains.

        Never raises: a bug here must not keep a proven kill from completing."""
        try:
            return await self._run(facts)
        except Exception as exc:
            self._log.exception("kill.exposure_failed", error=type(exc).__name__)
            return {"positions_open": None, "exposure_read": False}

    async def _run(self, facts: KillFacts) -> dict[str, Any]:
        exposure = await self.read(facts.kill_id, facts)
        self._log.info(
            "kill.exposure",
            positions=exposure.positions(),
            exposure_read=exposure.read,
            unreadable=exposure.unreadable(),
            symbols=len(exposure.symbols),
        )
        self.publish(exposure)
        config = self._config()
        if self._flatten is not None and config.flatten.enabled and not config.exchange.dry_run:
            await self._flatten(exposure)
            self.publish(exposure)
        self.facts.clear()
        fields: dict[str, Any] = {
            "positions_open": exposure.positions_open,
            "exposure_read": exposure.read,
        }
        if exposure.flattened is not None:
            fields["flattened"] = exposure.flattened
        return fields

    def publish(self, exposure: Exposure) -> None:
        self.last = exposure
        self._on_exposure(exposure)

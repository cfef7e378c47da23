"""The daemon's positions (contract §12): the step after every kill, flatten on request.

:class:`PositionsService` builds the positions endpoints over the exchange client,
the :class:`~killswitch.kill.exposure.AfterFlat` step the kill runner calls after
its flat proof, and the :class:`~killswitch.kill.flatten.Flattener`; it keeps the
last exposure (``GET /status`` ``positions``, and the state store) and answers
``POST /flatten``: a fresh read of what the last kill left, each symbol listed
again (proven flat of orders now, not at the kill), then the closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from killswitch.clock import Clock
from killswitch.config.model import Config
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import ExchangeError
from killswitch.exchange.positions import PositionsApi
from killswitch.kill.exposure import AfterFlat, Exposure
from killswitch.kill.flat import VenueListings
from killswitch.kill.flatten import Flattener
from killswitch.kill.order_facts import OrderFacts
from killswitch.log import get_logger
from killswitch.store.state import StateStore

__all__ = ["PositionsService"]


class PositionsService:
    def __init__(
        self,
        config: Callable[[], Config],
        client: ExchangeClient,
        store: StateStore,
        clock: Clock,
        listings: VenueListings | None,
    ) -> None:
        exchange = config().exchange
        self._config = config
        self._store = store
        self._listings = listings
        self._log = get_logger(component="positions")
        self.api = PositionsApi(client, exchange.positions_path, exchange.place_order_path)
        self.facts = OrderFacts()
        self.flattener = Flattener(config, self.api, client, store, clock)
        self.after_flat = AfterFlat(
            config,
            self.api,
            self.facts,
            clock,
            on_exposure=self._changed,
            flatten=self.flattener.flatten,
        )
        self.exposure: dict[str, Any] | None = store.last_exposure() if store.persisting else None

    def _changed(self, exposure: Exposure) -> None:
        self.exposure = exposure.as_dict()
        self._store.exposure(exposure.kill_id, exposure.read_at, self.exposure)

    async def flatten(self, kill_id: str, symbol: str | None) -> tuple[int, dict[str, Any]]:
        """Close the positions now (the caller checked the switch is TRIPPED)."""
        if self.flattener.running:
            return 409, {"error": "a flatten is already running"}
        shown = (self.exposure or {}).get("positions", [])
        known = [(p["exchange"], p["symbol"]) for p in shown]
        if symbol is not None:
            exchanges = {ex for ex, sym in known if sym == symbol}
            known += [(ex, symbol) for ex in exchanges or {self._config().targets[0].exchange}]
        self.flattener.running = True  # one at a time, from the first read on
        try:
            exposure = await self.after_flat.read(kill_id, extra=known)
            for sym in exposure.symbols:
                sym.flat_of_orders = await self._no_open_orders(sym.exchange, sym.symbol)
            self._log.info(
                "kill.exposure",
                positions=exposure.positions(),
                exposure_read=exposure.read,
                unreadable=exposure.unreadable(),
                manual=True,
            )
            self.flattener.running = False
            await self.flattener.flatten(exposure, only=symbol)
        finally:
            self.flattener.running = False
        self.after_flat.publish(exposure)
        named = [s for s in exposure.symbols if symbol is None or s.symbol == symbol]
        closed = all(s.positions == () for s in named)
        return 200, {"closed": closed, "positions": exposure.as_dict()}

    async def _no_open_orders(self, exchange: str, symbol: str) -> bool:
        """One listing of the symbol's open orders: empty proves it flat of orders now."""
        if self._listings is None:
            return False
        try:
            return not await self._listings.list_open(exchange, symbol, deep=False)
        except ExchangeError as exc:
            self._log.warning("flatten.list_failed", symbol=symbol, error=exc.kind)
            return False

"""Each venue endpoint's call: its request body, its answer checked (contract §2, §3).

:class:`EndpointCalls` builds the body of ``cancel_all``, ``order_status`` and
the two listings (and of any further signed call, :mod:`killswitch.exchange.positions`),
sends it through :class:`~killswitch.exchange.signed.SignedRequests` (its
limiter, the 401 re-sync, the 429 deferral) and checks what the venue answered:
an answer of an unknown shape is a :class:`~killswitch.exchange.errors.BadResponse`,
counted in the :class:`~killswitch.exchange.signed.CallLog`.  In dry run nothing
is sent (``exchange.dry_run`` is logged).  The pools, the venue's clock and
the self-test are :class:`~killswitch.exchange.client.ExchangeClient`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import quote

from structlog.typing import FilteringBoundLogger

from killswitch.config.model import ExchangeConfig
from killswitch.exchange.endpoints import CANCEL_ALL, CLOSED_ORDERS, OPEN_ORDERS, ORDER_STATUS
from killswitch.exchange.errors import BadResponse
from killswitch.exchange.orders import (
    LISTING_LIMIT,
    OrderPage,
    VenueOrder,
    parse_order,
    parse_page,
)
from killswitch.exchange.signed import CallLog, SignedRequests
from killswitch.exchange.transport import CANCEL_POOL, STATUS_POOL

__all__ = ["DRY_RUN_STATUS", "EndpointCalls"]

DRY_RUN_STATUS: Final = "DRY_RUN"
"""What :meth:`ExchangeClient.order_status` answers in dry run (never a real status)."""

T = TypeVar("T")


class EndpointCalls:
    """The venue's endpoints, one call each, over the signed requests they are handed."""

    def __init__(
        self,
        config: ExchangeConfig,
        prefix: str,
        requests: SignedRequests,
        calls: CallLog,
        log: FilteringBoundLogger,
    ) -> None:
        self._config = config
        self._prefix = prefix
        self._requests = requests
        self._calls = calls
        self._log = log

    async def cancel_all(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> list[str]:
        """Cancel every open order on ``exchange`` (or one ``symbol``); the ids sent for
        cancellation.  A 200 with an empty or missing ``orders_ids`` means none was open.
        ``on_sent()`` is called once each attempt's request was written."""
        body: dict[str, str] = {"exchange": exchange}
        if symbol is not None:
            body["symbol"] = symbol
        path = self._prefix + self._config.cancel_all_path
        if self._dry_run("POST", path, body):
            return []
        answer = await self._requests.send(
            CANCEL_ALL, "POST", path, CANCEL_POOL, data=json.dumps(body).encode(), on_sent=on_sent
        )
        document = self._calls.document(CANCEL_ALL, answer)
        data = document.get("data")
        if data is None:
            data = {k: v for k, v in document.items() if k != "data"}
        if not isinstance(data, dict):
            raise self._calls.fail(CANCEL_ALL, BadResponse(CANCEL_ALL, "data is not an object"))
        ids = data.get("orders_ids")
        if ids is None:
            # Empty or missing orders_ids is "nothing was open" (VENUE.md) -- but only in
            # an answer that says nothing else: {"data": {"ids": [...]}} is a shape we do
            # not know, an unknown outcome for the listing to resolve, never "none".
            if any(k != "orders_ids" for k in data):
                raise self._calls.fail(
                    CANCEL_ALL, BadResponse(CANCEL_ALL, "data has no orders_ids")
                )
            ids = []
        if not isinstance(ids, list) or not all(
            (isinstance(i, str) and i) or (isinstance(i, int) and not isinstance(i, bool))
            for i in ids
        ):
            raise self._calls.fail(
                CANCEL_ALL, BadResponse(CANCEL_ALL, "data.orders_ids is not a list of ids")
            )
        self._calls.succeeded(CANCEL_ALL, answer)
        return [str(i) for i in ids]

    async def order_status(self, order_id: str) -> VenueOrder:
        """The order as the venue knows it; 404, 400 or 422 is :class:`OrderNotFound`."""
        if not order_id:
            raise ValueError("order_id must not be empty")
        path = f"{self._prefix}{self._config.order_status_path}?order_id={quote(order_id, safe='')}"
        if self._dry_run("GET", path, None):
            return VenueOrder(order_id, "", "", DRY_RUN_STATUS, 0, None, None, None, {})
        answer = await self._requests.send(ORDER_STATUS, "GET", path, STATUS_POOL)
        data = self._calls.data(ORDER_STATUS, answer)
        order = data.get("order", data)
        if isinstance(order, dict) and "order_id" not in order:
            order = {**order, "order_id": order_id}  # the answer is about the id asked for
        try:
            parsed = parse_order(order, need_created_at=False)
        except ValueError as exc:
            raise self._calls.fail(ORDER_STATUS, BadResponse(ORDER_STATUS, str(exc))) from None
        if parsed.order_id != order_id:
            raise self._calls.fail(
                ORDER_STATUS, BadResponse(ORDER_STATUS, "answer is about another order_id")
            )
        self._calls.succeeded(ORDER_STATUS, answer)
        return parsed

    async def open_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = LISTING_LIMIT,
        from_time: int | None = None,
        to_time: int | None = None,
    ) -> OrderPage:
        """One page of the open-orders listing, newest first (venue clock, ms, inclusive)."""
        body = self._listing_body(exchange, symbol, limit, from_time, to_time, None)
        return await self._listing(OPEN_ORDERS, self._config.open_orders_path, body)

    async def closed_orders(
        self,
        exchange: str,
        symbol: str | None = None,
        *,
        limit: int = LISTING_LIMIT,
        from_time: int | None = None,
        to_time: int | None = None,
        status: str | None = None,
    ) -> OrderPage:
        """One page of the closed-orders listing (EXECUTED, PARTIALLY_EXECUTED, CANCELLED)."""
        body = self._listing_body(exchange, symbol, limit, from_time, to_time, status)
        return await self._listing(CLOSED_ORDERS, self._config.closed_orders_path, body)

    @staticmethod
    def _listing_body(
        exchange: str,
        symbol: str | None,
        limit: int,
        from_time: int | None,
        to_time: int | None,
        status: str | None,
    ) -> dict[str, Any]:
        if not 1 <= limit <= LISTING_LIMIT:
            raise ValueError(f"limit must be 1 to {LISTING_LIMIT}, got {limit}")
        if from_time is not None and to_time is not None and from_time > to_time:
            raise ValueError("from_time is after to_time")
        body: dict[str, Any] = {"exchange": exchange}
        optional = {"symbol": symbol, "from_time": from_time, "to_time": to_time, "status": status}
        body.update({k: v for k, v in optional.items() if v is not None})
        body["limit"] = limit
        return body

    async def _listing(self, endpoint: str, config_path: str, body: dict[str, Any]) -> OrderPage:
        path = self._prefix + config_path
        if self._dry_run("POST", path, body):
            return OrderPage((), None)
        answer = await self._requests.send(
            endpoint, "POST", path, STATUS_POOL, data=json.dumps(body).encode()
        )
        data = self._calls.data(endpoint, answer)
        try:
            page = parse_page(data)
        except ValueError as exc:
            raise self._calls.fail(endpoint, BadResponse(endpoint, str(exc))) from None
        self._calls.succeeded(endpoint, answer)
        return page

    async def signed_call(
        self,
        endpoint: str,
        method: str,
        path: str,
        parse: Callable[[dict[str, Any]], T],
        *,
        body: Mapping[str, Any] | None = None,
        retry_stale: bool = True,
    ) -> T | None:
        """One signed call of another endpoint (:mod:`killswitch.exchange.positions`): its
        limiter (``limiters[endpoint]``), the 401 re-sync, errors mapped and counted as for
        the rest; ``parse(document)`` of the JSON answer (a ``ValueError`` it raises is
        :class:`BadResponse`).  ``path`` is relative to the base URL and may carry a query.
        None in dry run (logged, nothing sent).  ``retry_stale=False``: a stale pooled
        connection is an error, never a second request (an order is not re-sent on a guess).
        """
        full = self._prefix + path
        if self._dry_run(method, full, body):
            return None
        data = None if body is None else json.dumps(body).encode()
        answer = await self._requests.send(
            endpoint, method, full, STATUS_POOL, data=data, retry_stale=retry_stale
        )
        document = self._calls.document(endpoint, answer)
        try:
            value = parse(document)
        except ValueError as exc:
            raise self._calls.fail(endpoint, BadResponse(endpoint, str(exc))) from None
        self._calls.succeeded(endpoint, answer)
        return value

    # ------------------------------------------------------------------ plumbing

    def _dry_run(self, method: str, path: str, body: Any) -> bool:
        if self._config.dry_run:
            self._log.info("exchange.dry_run", method=method, path=path, body=body)
        return self._config.dry_run

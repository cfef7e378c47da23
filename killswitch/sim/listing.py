"""The open- and closed-order listings, with the venue's rules (``VENUE.md``).

- ``limit`` is 1 to 50 (default 50); more is a 422 naming ``limit``.
- ``from_time`` ("at or after") and ``to_time`` ("at or before") are integer
  ms on the venue clock, both inclusive, at most 7 days apart (else 422).
  Missing ``to_time`` is now; missing ``from_time`` is ``to_time`` - 7 days:
  with neither, the latest orders of the last 7 days.
- Newest first by ``created_at``; ``cursor`` is the ``created_at`` of the
  oldest order returned, ``null`` on an empty page.  Passing it back as
  ``to_time`` repeats that order (the bound is inclusive): that is the venue.
- The open listing shows working orders (``CANCELLATION_RAISED`` included);
  the closed listing only ``EXECUTED``, ``PARTIALLY_EXECUTED`` and
  ``CANCELLED``, optionally one of them (``status``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from killswitch.sim.book import CLOSED_LISTED, DAY_MS, WORKING, Order

__all__ = ["MAX_LIMIT", "MAX_SPAN_MS", "ListingError", "ListingQuery", "page", "parse_query"]

MAX_LIMIT = 50
MAX_SPAN_MS = 7 * DAY_MS


class ListingError(ValueError):
    """A request the venue refuses with 422; the message names the field."""


@dataclass(frozen=True, slots=True)
class ListingQuery:
    exchange: str
    symbol: str | None
    limit: int
    from_time: int
    to_time: int
    statuses: frozenset[str]


def _int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ListingError(f"{field}: expected an integer")
    return value


def parse_query(
    body: Mapping[str, Any], *, closed: bool, now_ms: int, exchanges: Iterable[str]
) -> ListingQuery:
    """The query a listing body asks for, or :class:`ListingError`."""
    exchange, symbol = body.get("exchange"), body.get("symbol")
    if not isinstance(exchange, str) or not exchange:
        raise ListingError("exchange: required, a string")
    if exchange not in exchanges:
        raise ListingError(f"exchange: unknown exchange {exchange!r}")
    if symbol is not None and not isinstance(symbol, str):
        raise ListingError("symbol: expected a string")
    limit = _int(body, "limit")
    if limit is None:
        limit = MAX_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ListingError(f"limit: must be between 1 and {MAX_LIMIT}, got {limit}")
    to_time = _int(body, "to_time")
    from_time = _int(body, "from_time")
    to_time = now_ms if to_time is None else to_time
    from_time = to_time - MAX_SPAN_MS if from_time is None else from_time
    if from_time > to_time:
        raise ListingError("from_time: must not be after to_time")
    if to_time - from_time > MAX_SPAN_MS:
        raise ListingError("from_time/to_time: the window spans more than 7 days")
    statuses = CLOSED_LISTED if closed else WORKING
    status = body.get("status")
    if status is not None:
        if not closed:
            raise ListingError("status: only the closed listing takes a status")
        if status not in CLOSED_LISTED:
            raise ListingError(f"status: expected one of {sorted(CLOSED_LISTED)}")
        statuses = frozenset({status})
    return ListingQuery(exchange, symbol, limit, from_time, to_time, statuses)


def page(query: ListingQuery, orders: Iterable[tuple[Order, str]], now: float) -> dict[str, Any]:
    """The answer's ``data``: matching orders newest first, and the cursor.

    ``orders`` pairs each order with its status now; ``now`` is the monotonic
    time the order objects are rendered at.
    """
    matching = [
        order
        for order, status in orders
        if status in query.statuses
        and order.exchange == query.exchange
        and (query.symbol is None or order.symbol == query.symbol)
        and query.from_time <= order.created_at <= query.to_time
    ]
    matching.sort(key=lambda o: o.created_at, reverse=True)
    shown = matching[: query.limit]
    return {
        "orders": [order.to_json(now) for order in shown],
        "cursor": shown[-1].created_at if shown else None,
    }

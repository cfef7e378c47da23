"""The venue's orders as typed values, read from its JSON (contract §2, VENUE.md).

Futures numbers are JSON strings (``"quantity": "160"``): they are read as
:class:`~decimal.Decimal`, never as floats.  A malformed order raises
:class:`ValueError` with a short reason; the client turns it into
:class:`~killswitch.exchange.errors.BadResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "DECIMAL_FIELDS",
    "LISTING_LIMIT",
    "OrderPage",
    "VenueOrder",
    "parse_order",
    "parse_page",
]

LISTING_LIMIT: Final = 50
"""The most orders one listing call may ask for (VENUE.md)."""

DECIMAL_FIELDS: Final = frozenset(
    {"quantity", "exec_quantity", "price", "avg_execution_price", "trigger_price"}
)
"""Order fields read as Decimal (also in ``raw``)."""


@dataclass(frozen=True)
class VenueOrder:
    """One order as the venue answered it."""

    order_id: str
    exchange: str
    symbol: str
    status: str
    created_at: int  # ms, venue clock (0 when an order-status answer omits it)
    updated_at: int | None
    quantity: Decimal | None
    exec_quantity: Decimal | None
    raw: Mapping[str, Any]  # the whole order object, numbers in DECIMAL_FIELDS as Decimal


@dataclass(frozen=True)
class OrderPage:
    """One page of a listing, newest first."""

    orders: tuple[VenueOrder, ...]
    cursor: int | None  # created_at of the oldest one returned; None on an empty page


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal | int | str):
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


_MAX_MS: Final = 2**63 - 1


def _ms(value: Any) -> int | None:
    """A time in integer ms (0 to 2**63 - 1): an int, an integral Decimal or a string of
    digits.  Anything else, however large, is not a time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal) and value.is_finite() and 0 <= value <= _MAX_MS:
        return int(value) if value == value.to_integral_value() else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_MS:
        return value
    return None


def _text(order: Mapping[str, Any], name: str) -> str:
    value = order.get(name)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else ""


def parse_order(order: Any, *, need_created_at: bool = True) -> VenueOrder:
    """A :class:`VenueOrder` from one JSON order object (decoded with ``parse_float=Decimal``).

    ``order_id`` and ``status`` are required; listings also require ``created_at``
    (their paging depends on it).
    """
    if not isinstance(order, dict):
        raise ValueError("an order is not an object")
    order_id = _text(order, "order_id")
    if not order_id:
        raise ValueError("an order has no order_id")
    status = order.get("status")
    if not isinstance(status, str) or not status:
        raise ValueError("an order has no status string")
    created_at = _ms(order.get("created_at"))
    if created_at is None:
        if need_created_at:
            raise ValueError("an order has no created_at in ms")
        created_at = 0
    raw = {
        k: (_decimal(v) if k in DECIMAL_FIELDS and _decimal(v) is not None else v)
        for k, v in order.items()
    }
    return VenueOrder(
        order_id=order_id,
        exchange=_text(order, "exchange"),
        symbol=_text(order, "symbol"),
        status=status,
        created_at=created_at,
        updated_at=_ms(order.get("updated_at")),
        quantity=_decimal(order.get("quantity")),
        exec_quantity=_decimal(order.get("exec_quantity")),
        raw=MappingProxyType(raw),
    )


def parse_page(data: Mapping[str, Any]) -> OrderPage:
    """An :class:`OrderPage` from a listing's ``data`` object.

    ``orders`` must be a list: a listing is what proves an account flat, so an
    answer without one is a bad answer, never an empty page.  The cursor is the
    venue's when it is a time in ms, else the oldest ``created_at`` on the page.
    """
    listed = data.get("orders")
    if not isinstance(listed, list):
        raise ValueError("data.orders is not a list")
    orders = tuple(parse_order(o) for o in listed)
    if not orders:
        return OrderPage((), None)
    cursor = _ms(data.get("cursor"))
    if cursor is None:
        cursor = min(o.created_at for o in orders)
    return OrderPage(orders, cursor)

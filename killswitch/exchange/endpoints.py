"""The venue's endpoints by name: one definition, used by the client, the limiters, the
kill engine's budgets and the metrics (contract §2, §3)."""

from __future__ import annotations

from typing import Final

__all__ = ["CANCEL_ALL", "CLOSED_ORDERS", "ENDPOINTS", "OPEN_ORDERS", "ORDER_STATUS", "TIME"]

CANCEL_ALL: Final = "cancel_all"
ORDER_STATUS: Final = "order_status"
OPEN_ORDERS: Final = "open_orders"
CLOSED_ORDERS: Final = "closed_orders"
TIME: Final = "time"
ENDPOINTS: Final = (CANCEL_ALL, ORDER_STATUS, OPEN_ORDERS, CLOSED_ORDERS)
"""The rate-limited endpoints, each with its own limiter (``time`` is not limited)."""

"""What an HTTP answer of the venue means (contract §2): a document, or a typed error.

The status code decides the error's type (:mod:`killswitch.exchange.errors`):
429 is :class:`RateLimited` (with ``Retry-After`` when sent), 5xx
:class:`ServerError` (outcome unknown), 401 :class:`Unauthorized` (after the
client's one re-sync), 404/400/422 on the status endpoint
:class:`OrderNotFound`, a 1xx/3xx :class:`BadResponse`, any other 4xx
:class:`RejectedRequest`.  A 2xx whose body is not the documented JSON object
is a :class:`BadResponse`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Final

from killswitch.exchange.endpoints import ORDER_STATUS
from killswitch.exchange.errors import (
    BadResponse,
    ExchangeError,
    OrderNotFound,
    RateLimited,
    RejectedRequest,
    ServerError,
    Unauthorized,
)
from killswitch.exchange.transport import Answer

__all__ = ["data_of", "document_of", "status_error"]

_NOT_FOUND: Final = frozenset({400, 404, 422})  # "unknown order id" on the status endpoint


def status_error(endpoint: str, answer: Answer, wall_now: float) -> ExchangeError:
    """The error a non-2xx ``answer`` of ``endpoint`` is."""
    status, message = answer.status, answer.message()
    if status == 429:
        return RateLimited(endpoint, answer.retry_after_seconds(wall_now), message=message)
    if status >= 500:
        return ServerError(endpoint, f"HTTP {status}", status=status, message=message)
    if status == 401:
        return Unauthorized(
            endpoint, "HTTP 401 after a clock re-sync", status=status, message=message
        )
    if status in _NOT_FOUND and endpoint == ORDER_STATUS:
        return OrderNotFound(
            endpoint, f"HTTP {status}: unknown order_id", status=status, message=message
        )
    if 300 <= status < 400 or status < 200:
        return BadResponse(endpoint, f"HTTP {status}", status=status, message=message)
    return RejectedRequest(endpoint, f"HTTP {status}", status=status, message=message)


def document_of(endpoint: str, answer: Answer) -> dict[str, Any]:
    """The answer's JSON object (numbers as ``Decimal``); raises :class:`BadResponse`."""
    try:
        document = json.loads(answer.body, parse_float=Decimal)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        raise BadResponse(endpoint, "body is not JSON") from None
    if not isinstance(document, dict):
        raise BadResponse(endpoint, "body is not a JSON object")
    return document


def data_of(endpoint: str, answer: Answer) -> dict[str, Any]:
    """The answer's ``data`` object; raises :class:`BadResponse`."""
    data = document_of(endpoint, answer).get("data")
    if not isinstance(data, dict):
        raise BadResponse(endpoint, "body has no 'data' object")
    return data

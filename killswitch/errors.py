"""Errors of one exchange call.  Each says what went wrong, never with secrets."""

from __future__ import annotations

__all__ = [
    "BadResponse",
    "ConnectionFailed",
    "ExchangeError",
    "OrderNotFound",
    "RateLimited",
    "RejectedRequest",
    "RequestTimeout",
    "ServerError",
]


class ExchangeError(Exception):
    """One exchange request failed; ``kind`` is a short machine-readable name."""

    kind = "error"

    def __init__(self, endpoint: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint
        self.detail = detail
        self.status = status


class RateLimited(ExchangeError):
    """HTTP 429; ``retry_after`` in seconds when the server said."""

    kind = "rate_limited"

    def __init__(self, endpoint: str, retry_after: float | None) -> None:
        super().__init__(endpoint, f"429 rate limited (retry_after={retry_after})", status=429)
        self.retry_after = retry_after


class ServerError(ExchangeError):
    """HTTP 5xx."""

    kind = "server_error"


class RejectedRequest(ExchangeError):
    """HTTP 4xx other than 404/429: the exchange refused the request (auth, params)."""

    kind = "rejected"


class OrderNotFound(ExchangeError):
    """HTTP 404 on the order-status endpoint: the exchange does not know the id."""

    kind = "not_found"


class BadResponse(ExchangeError):
    """A 2xx whose body is not the documented JSON."""

    kind = "bad_response"


class RequestTimeout(ExchangeError):
    """No complete answer within ``exchange.request_timeout``."""

    kind = "timeout"


class ConnectionFailed(ExchangeError):
    """The connection could not be made or broke before an answer."""

    kind = "connection"

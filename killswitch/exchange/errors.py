"""Errors of one exchange call.  Each says what went wrong, never with secrets.

Every :class:`ExchangeError` carries ``kind`` (a short machine-readable name),
``status`` (the HTTP status, or None when no answer came), ``message`` (the
venue's ``{"message": ...}``, shortened and scrubbed of registered secrets, or
None) and ``outcome_unknown``: True when the request may have been performed
although no usable answer came back (5xx, timeout, a connection lost after the
request may have left, a 2xx whose body could not be read).  For ``cancel_all``
that means "the cancel may have happened": never read it as "nothing was
cancelled".
"""

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
    "Unauthorized",
]


class ExchangeError(Exception):
    """One exchange request failed; ``kind`` is a short machine-readable name."""

    kind = "error"
    default_outcome_unknown = False

    def __init__(
        self,
        endpoint: str,
        detail: str,
        *,
        status: int | None = None,
        message: str | None = None,
        outcome_unknown: bool | None = None,
    ) -> None:
        text = f"{endpoint}: {detail}"
        if message:
            text += f": {message}"
        super().__init__(text)
        self.endpoint = endpoint
        self.detail = detail
        self.status = status
        self.message = message
        self.outcome_unknown = (
            self.default_outcome_unknown if outcome_unknown is None else outcome_unknown
        )


class RateLimited(ExchangeError):
    """HTTP 429; ``retry_after`` in seconds when the server said.

    The client has already deferred that endpoint's limiter (``Retry-After`` or
    its own next free slot, whichever is later, plus a doubling backoff), so the
    caller simply retries through the limiter.
    """

    kind = "rate_limited"

    def __init__(
        self, endpoint: str, retry_after: float | None, *, message: str | None = None
    ) -> None:
        super().__init__(
            endpoint, f"429 rate limited (retry_after={retry_after})", status=429, message=message
        )
        self.retry_after = retry_after


class ServerError(ExchangeError):
    """HTTP 5xx: the outcome is unknown (the request may have been performed)."""

    kind = "server_error"
    default_outcome_unknown = True


class RejectedRequest(ExchangeError):
    """HTTP 4xx other than 429 (and 404/400/422 on one order's status): refused as sent."""

    kind = "rejected"


class Unauthorized(RejectedRequest):
    """HTTP 401 that survived a clock re-sync and one immediate retry.

    The key, the signature or the clock is wrong: a credentials problem.
    """

    kind = "unauthorized"


class OrderNotFound(ExchangeError):
    """HTTP 404, 400 or 422 on the order-status endpoint: the exchange does not know the id."""

    kind = "not_found"


class BadResponse(ExchangeError):
    """A 2xx whose body is not the documented JSON (or a malformed HTTP answer).

    The request was answered, so it may have been performed: outcome unknown.
    """

    kind = "bad_response"
    default_outcome_unknown = True


class RequestTimeout(ExchangeError):
    """No complete answer within ``exchange.request_timeout``: outcome unknown."""

    kind = "timeout"
    default_outcome_unknown = True


class ConnectionFailed(ExchangeError):
    """The connection could not be made, or broke before an answer.

    ``outcome_unknown`` is False only when no byte of the request can have
    left (the connection was never made).
    """

    kind = "connection"
    default_outcome_unknown = True

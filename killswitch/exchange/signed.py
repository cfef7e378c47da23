"""Signed requests to the venue, and the log of what they did (contract §2).

:class:`SignedRequests` sends one signed request through its endpoint's
limiter: headers signed at sending (after the limiter's wait) with the venue's
clock, a 429 deferring the limiter, one re-sync of the clock and one retry on
a 401, any other non-2xx mapped to its typed error.  :class:`CallLog` counts
every request by endpoint and outcome and keeps the last signed call (for
``GET /status``).  :class:`~killswitch.exchange.client.ExchangeClient`
composes both; what each endpoint's answer means is its own business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.exchange.answers import data_of, document_of, status_error
from killswitch.exchange.errors import ExchangeError
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.signing import Signer
from killswitch.exchange.transport import Answer, Transport
from killswitch.exchange.venue_clock import VenueClock

__all__ = ["CallLog", "SignedRequests"]


class CallLog:
    """``requests_sent[endpoint][outcome]`` and the last signed call."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.requests_sent: dict[str, dict[str, int]] = {}
        self.last_call: dict[str, Any] | None = None

    def count(self, endpoint: str, outcome: str) -> None:
        by_outcome = self.requests_sent.setdefault(endpoint, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1

    def fail(self, endpoint: str, error: ExchangeError) -> ExchangeError:
        """Count ``error`` and hand it back (to be raised)."""
        self.count(endpoint, error.kind)
        return error

    def succeeded(self, endpoint: str, answer: Answer) -> None:
        self.count(endpoint, "ok")
        self.record_call(endpoint, True, answer.status, None)

    def record_call(
        self, endpoint: str, ok: bool, http_status: int | None, message: str | None
    ) -> None:
        self.last_call = {
            "endpoint": endpoint,
            "ok": ok,
            "http_status": http_status,
            "message": message,
            "at": round(self._clock.time(), 3),
        }

    def status_error(self, endpoint: str, answer: Answer) -> ExchangeError:
        return status_error(endpoint, answer, self._clock.time())

    def document(self, endpoint: str, answer: Answer) -> dict[str, Any]:
        try:
            return document_of(endpoint, answer)
        except ExchangeError as error:
            raise self.fail(endpoint, error) from None

    def data(self, endpoint: str, answer: Answer) -> dict[str, Any]:
        try:
            return data_of(endpoint, answer)
        except ExchangeError as error:
            raise self.fail(endpoint, error) from None


class SignedRequests:
    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        venue_clock: VenueClock,
        limiters: Mapping[str, SlidingWindowLimiter],
        clock: Clock,
        log: FilteringBoundLogger,
        calls: CallLog,
    ) -> None:
        self._transport = transport
        self._signer = signer
        self._venue_clock = venue_clock
        self._limiters = limiters
        self._clock = clock
        self._log = log
        self._calls = calls

    def _headers(self, method: str, path: str) -> dict[str, str]:
        headers = self._signer.headers(method, path, self._venue_clock.now_ms())
        headers["Content-Type"] = "application/json"
        return headers

    async def send(
        self,
        endpoint: str,
        method: str,
        path: str,
        pool: str,
        *,
        data: bytes | None = None,
        on_sent: Callable[[], None] | None = None,
        retry_stale: bool = True,
    ) -> Answer:
        """A signed request with its answer mapped to an error; one re-sync + retry on 401.

        POSTs are retried once at once on a stale pooled connection (a listing is as safe
        to repeat as cancel_all); aiohttp re-sends a GET itself, through the limiter
        (see the transport).
        """
        limiter = self._limiters[endpoint]
        signed_with = self._venue_clock.generation

        def headers() -> dict[str, str]:
            nonlocal signed_with
            signed_with = self._venue_clock.generation  # after the limiter's wait, at sending
            return self._headers(method, path)

        try:
            for attempt in (1, 2):
                answer = await self._transport.request(
                    endpoint,
                    method,
                    path,
                    pool,
                    limiter=limiter,
                    headers=headers,
                    data=data,
                    retry_stale=retry_stale and method == "POST",
                    on_sent=on_sent,
                )
                if answer.status == 429:
                    retry_after = answer.retry_after_seconds(self._clock.time())
                    limiter.rate_limited(retry_after, sent_at=answer.sent_at)
                else:
                    limiter.answered(sent_at=answer.sent_at)
                if answer.status == 401 and attempt == 1:
                    self._calls.count(endpoint, "unauthorized")
                    self._log.warning(
                        "exchange.unauthorized_resync",
                        endpoint=endpoint,
                        message=answer.message(),
                    )
                    # A burst of 401s signed with the same offset costs one re-sync.
                    await self._venue_clock.resync_after(signed_with)
                    continue
                if not 200 <= answer.status < 300:
                    raise self._calls.fail(endpoint, self._calls.status_error(endpoint, answer))
                return answer
        except ExchangeError as error:
            self._calls.record_call(endpoint, False, error.status, error.message)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

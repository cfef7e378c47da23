"""The start-up self-test: one signed open-orders call per target (contract §5, issue 9).

It proves the key, the signature and the clock before a kill needs them.  A
4xx logs ``exchange.rejected`` with the venue's message; a 401 (which the
client has already retried once after a clock re-sync) is said plainly to be
a credentials or clock problem.  Other failures (5xx, timeout, no connection)
log ``exchange.self_test_failed``.  Never raises an ExchangeError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from killswitch.config.model import Target
from killswitch.exchange.errors import ExchangeError, RejectedRequest, Unauthorized
from killswitch.exchange.orders import OrderPage

__all__ = ["SelfTest", "TargetCheck", "run_self_test"]

UNAUTHORIZED_PROBLEM = (
    "credentials or clock: the venue refused the API key, the signature or the epoch, "
    "even after a clock re-sync"
)


@dataclass(frozen=True)
class TargetCheck:
    """The self-test's answer for one target."""

    exchange: str
    ok: bool
    http_status: int | None = None
    error: str | None = None  # the ExchangeError kind
    message: str | None = None  # the venue's message


@dataclass(frozen=True)
class SelfTest:
    """One signed open-orders call per target: key, signature and clock work."""

    ok: bool
    at: float  # local wall time (s)
    checks: tuple[TargetCheck, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "at": self.at, "checks": [asdict(c) for c in self.checks]}


async def run_self_test(
    list_one: Callable[[str], Awaitable[OrderPage]],
    targets: Iterable[Target],
    wall_time: float,
    log: FilteringBoundLogger,
) -> SelfTest:
    """Call ``list_one(exchange)`` (a signed ``open_orders(limit=1)``) for every target."""

    async def check(target: Target) -> TargetCheck:
        try:
            await list_one(target.exchange)
        except ExchangeError as error:
            if isinstance(error, RejectedRequest):
                log.error(
                    "exchange.rejected",
                    endpoint=error.endpoint,
                    exchange=target.exchange,
                    http_status=error.status,
                    message=error.message,
                    problem=UNAUTHORIZED_PROBLEM
                    if isinstance(error, Unauthorized)
                    else "the venue refused the request as sent",
                    self_test=True,
                )
            else:
                log.warning(
                    "exchange.self_test_failed",
                    exchange=target.exchange,
                    error=error.kind,
                    http_status=error.status,
                    message=error.message,
                    detail=error.detail,
                )
            return TargetCheck(target.exchange, False, error.status, error.kind, error.message)
        return TargetCheck(target.exchange, True)

    checks = tuple(await asyncio.gather(*(check(t) for t in targets)))
    result = SelfTest(all(c.ok for c in checks), wall_time, checks)
    log.info("exchange.self_test", ok=result.ok, targets=len(checks))
    return result

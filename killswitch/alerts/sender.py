"""Delivery to one receiver: its own task, POST the oldest alert, back off while it fails.

Never on the kill's path: each receiver is a task of its own, an attempt is
bounded by ``alerts.timeout``, and nothing waits for it.  An alert is sent
only once its row is committed in the state store (at least once: a crash
after that re-sends it at the next start).  The URL and key are used here and
nowhere else; events name the receiver, the HTTP status or the error's type,
never the error's text (aiohttp's can carry the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

import aiohttp
from structlog.typing import FilteringBoundLogger

from killswitch.alerts.formats import body
from killswitch.alerts.model import Alert
from killswitch.alerts.queue import ReceiverQueue
from killswitch.alerts.receivers import Receiver
from killswitch.clock import Clock
from killswitch.damping import Damper

__all__ = ["Delivery"]

FIRST_RETRY = 0.5  # seconds after the first failure; doubles up to alerts.retry_max


class Delivery:
    def __init__(
        self,
        receiver: Receiver,
        queue: ReceiverQueue,
        clock: Clock,
        log: FilteringBoundLogger,
        damper: Damper,
        *,
        timeout: float,
        retry_max: float,
        on_result: Callable[[Alert, bool, str | None], None],
    ) -> None:
        self.receiver = receiver
        self.queue = queue
        self._clock = clock
        self._log = log
        self._damper = damper
        self._timeout = timeout
        self._retry_max = retry_max
        self._on_result = on_result
        self.failures = 0  # in a row
        self.last_error: str | None = None

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            alert = await self.queue.next()
            if alert.stored is not None:
                with contextlib.suppress(Exception):  # a store that fails: send it anyway
                    await asyncio.wrap_future(alert.stored)
            error = await self._post(session, alert)
            alert.attempts += 1
            if error is None:
                self.failures = 0
                self.last_error = None
                self.queue.done(alert)
                self._log.info("alert.sent", attempts=alert.attempts, **alert.describe())
                self._on_result(alert, True, None)
                continue
            alert.in_flight = False
            self.failures += 1
            self.last_error = error
            delay = min(FIRST_RETRY * 2 ** (self.failures - 1), self._retry_max)
            delay *= 1 + random.uniform(0, 0.1)
            self._damper.warning(
                self._log,
                "alert.failed",
                key=self.receiver.name,
                attempts=alert.attempts,
                problem=error,
                retry_in=round(delay, 3),
                queued=len(self.queue),
                **alert.describe(),
            )
            self._on_result(alert, False, error)
            await self._clock.sleep(delay)

    async def _post(self, session: aiohttp.ClientSession, alert: Alert) -> str | None:
        """None when the receiver took it (2xx), else what went wrong, without the URL."""
        key = self.receiver.routing_key
        document = body(alert, self.receiver.format, None if key is None else key.reveal())
        try:
            async with session.post(
                self.receiver.url.reveal(),
                json=document,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__

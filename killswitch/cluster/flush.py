"""A bounded wait for the NATS server's PONG that cannot leave the client deaf.

nats-py 2.16's ``flush(timeout)`` cancels its PONG future when the timeout
passes; when the late PONG arrives the client's read loop fails on the
cancelled future and stops, and from then on ``flush()`` returns at once while
nothing is received (LIBRARY-NOTES.md, "NATS: knowing the link works").  Here
the PING's future is never cancelled by our timeout: nats-py's own flush waits
with a patience far beyond nats-py's stale-connection check (its
``ping_interval`` x ``max_outstanding_pings``, minutes), and our caller waits
only ``timeout`` for it.  A reconnection drops nats-py's list of PONG futures,
so the abandoned wait can never meet a late PONG; :meth:`PatientFlush.close`
ends the waits only once the connection is closed (no read loop left to break).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["PatientFlush"]

PATIENCE = 3600  # seconds nats-py's own flush waits for its PONG (an int: nats-py's type)


class PatientFlush:
    """``await flush(nc, timeout)``: True once the server answered, False after ``timeout``."""

    def __init__(self) -> None:
        self._waits: set[asyncio.Task[None]] = set()

    async def __call__(self, nc: NatsClient, timeout: float) -> bool:
        wait = asyncio.ensure_future(nc.flush(timeout=PATIENCE))
        self._waits.add(wait)
        wait.add_done_callback(self._finished)
        done, _ = await asyncio.wait({wait}, timeout=timeout)
        if wait not in done:
            return False
        wait.result()  # a closed connection raises here, as nc.flush() would
        return True

    def _finished(self, wait: asyncio.Task[None]) -> None:
        self._waits.discard(wait)
        if not wait.cancelled():
            wait.exception()  # retrieved: an abandoned wait that failed is not an error

    async def close(self) -> None:
        """After ``nc.close()``: end the waits still pending."""
        waits, self._waits = set(self._waits), set()
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

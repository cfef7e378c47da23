"""``[metrics] listen``: the control socket's ``/metrics`` text over TCP, and nothing else.

Prometheus scrapes HTTP over TCP only (contract §16).  This listener answers
``GET /metrics`` (and ``HEAD``) and nothing more: every other path is 404,
every other method 405; no request reaches the switch, the store or the
exchange, so whoever can reach the port can read the metrics but change
nothing.  A port that cannot be bound is ``metrics.listen_failed`` (an
error), never a daemon that does not start: the kill switch matters more
than its scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from structlog.typing import FilteringBoundLogger

__all__ = ["MetricsListener"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsListener:
    def __init__(
        self, host: str, port: int, render: Callable[[], bytes], log: FilteringBoundLogger
    ) -> None:
        self.host = host
        self.port = port
        self._render = render
        self._log = log
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._render(),
            headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
        )

    async def start(self) -> bool:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=15
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=32)
        try:
            await site.start()
        except OSError as exc:
            self._log.error(
                "metrics.listen_failed",
                listen=f"{self.host}:{self.port}",
                problem=exc.strerror or type(exc).__name__,
                note="the daemon runs on; /metrics stays on the control socket",
            )
            await self._runner.cleanup()
            self._runner = None
            return False
        addresses = self._runner.addresses  # the bound address: port 0 picks a free one
        if addresses:
            self.bound = (str(addresses[0][0]), int(addresses[0][1]))
        self._log.info("metrics.listening", listen=f"{self.host}:{self.port}", bound=self.bound)
        return True

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.shield(runner.cleanup())

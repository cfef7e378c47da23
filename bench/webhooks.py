"""Webhook receivers in the bench's own process: one that never answers, one that fails
one request in three (``python -m bench alerts`` and ``soak``)."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

__all__ = ["Webhook"]


class Webhook:
    """``mode``: ``"hang"`` holds every request unanswered; ``"flaky"`` answers 500 to every
    ``fail_every``-th request and 200 to the others."""

    def __init__(self, mode: str, fail_every: int = 3) -> None:
        self.mode = mode
        self.fail_every = fail_every
        self.requests = 0
        self.accepted = 0
        self._never = asyncio.Event()
        self._runner: web.AppRunner | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/bench-token-0123456789"

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        if self.mode == "hang":
            await self._never.wait()
        if self.requests % self.fail_every == 0:
            return web.Response(status=500)
        self.accepted += 1
        return web.Response(status=200, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{token}", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

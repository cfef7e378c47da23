"""A webhook receiver on loopback for the alert tests: records what it is sent.

``mode``: ``"ok"`` answers 200 (PagerDuty's 202 with ``pagerduty=True``),
``"fail"`` 500, ``"hang"`` never answers, ``fail_every = 3`` fails one request
in three.  :meth:`stop` and :meth:`start` again on the same port make a
receiver that is down and comes back.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from typing import Any

from aiohttp import web

__all__ = ["Receiver"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    def __init__(self, *, mode: str = "ok", pagerduty: bool = False, fail_every: int = 0) -> None:
        self.mode = mode
        self.pagerduty = pagerduty
        self.fail_every = fail_every
        self.token = secrets.token_hex(16)  # the secret part of the URL
        self.port = free_port()
        self.received: list[dict[str, Any]] = []  # every body that arrived (answered or not)
        self.accepted: list[dict[str, Any]] = []  # the bodies answered 2xx
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{self.token}"

    async def _hook(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=404)
        self.requests += 1
        document = json.loads(await request.read())
        self.received.append(document)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        fail = self.mode == "fail" or (self.fail_every and self.requests % self.fail_every == 0)
        if fail:
            return web.Response(status=500)
        async with self._changed:
            self.accepted.append(document)
            self._changed.notify_all()
        return web.json_response({"status": "success"}, status=202 if self.pagerduty else 200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{token}", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_accepted(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self._changed:
            while len(self.accepted) < count:
                await self._changed.wait()
        return self.accepted

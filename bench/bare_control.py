"""``python -m bench.bare_control SOCKET``: the floor for handling a heartbeat.

A bare aiohttp application on a UNIX socket answering ``POST /heartbeat``
with ``{"ok": true}`` and doing nothing else: what the heartbeats' own
handling costs, for the idle benchmark to subtract.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiohttp import web


async def heartbeat(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def serve(path: str) -> None:
    app = web.Application()
    app.router.add_post("/heartbeat", heartbeat)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(json.dumps({"event": "bare.ready"}) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

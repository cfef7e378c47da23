"""``python -m bench.baseline_sender BASE_URL``: the floor for signal → cancel_all.

A minimal process holding one warm aiohttp keep-alive connection to the
exchange.  On each SIGUSR1 it signs the same ``cancel_all`` the daemon sends
(Ed25519 over ``METHOD + path + epoch_ms`` with the same library, the same headers and body) and
posts it; nothing else.  After the answer it prints one JSON line with the
monotonic time the POST was started (``sent``), so the bench can measure both
signal → arrival (as for the daemon) and send → arrival.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import aiohttp
from nacl.signing import SigningKey

PATH = "/trade/api/v2/futures/cancel_all"
BODY = json.dumps({"exchange": "EXCHANGE_2"}).encode()


async def serve(base_url: str) -> None:
    key = SigningKey(bytes.fromhex(os.environ["KILLSWITCH_API_SECRET"]))
    api_key = os.environ["KILLSWITCH_API_KEY"]
    url = base_url + PATH
    stop = asyncio.Event()
    pending: set[asyncio.Task[None]] = set()

    async with aiohttp.ClientSession() as session:

        async def fire() -> None:
            epoch = str(int(time.time() * 1000))
            headers = {
                "X-AUTH-APIKEY": api_key,
                "X-AUTH-SIGNATURE": key.sign(f"POST{PATH}{epoch}".encode()).signature.hex(),
                "X-AUTH-EPOCH": epoch,
                "Content-Type": "application/json",
            }
            sent = time.monotonic()
            async with session.post(url, data=BODY, headers=headers) as resp:
                await resp.read()
            line = {"event": "sent", "sent": sent, "status": resp.status}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

        def on_signal() -> None:
            task = asyncio.create_task(fire())
            pending.add(task)
            task.add_done_callback(pending.discard)

        async with session.head(base_url + "/") as resp:  # warm the connection
            await resp.read()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, on_signal)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sys.stdout.write(json.dumps({"event": "baseline.ready"}) + "\n")
        sys.stdout.flush()
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

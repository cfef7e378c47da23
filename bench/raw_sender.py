"""``python -m bench.raw_sender BASE_URL``: the second floor for signal → cancel_all.

No HTTP library: one warm TCP connection opened with asyncio streams, and on
each SIGUSR1 the signed ``cancel_all`` request (the same bytes the daemon
sends: Ed25519 over ``METHOD + path + epoch_ms``, the same headers and body) is
built at the signal and written in one ``write``.  The answer is read by its
``Content-Length``.  Prints ``raw.ready`` once warm and one ``sent`` line per
request, like :mod:`bench.baseline_sender`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit

from nacl.signing import SigningKey

PATH = "/trade/api/v2/futures/cancel_all"
BODY = json.dumps({"exchange": "EXCHANGE_2"}).encode()


async def _answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def serve(base_url: str) -> None:
    key = SigningKey(bytes.fromhex(os.environ["KILLSWITCH_API_SECRET"]))
    api_key = os.environ["KILLSWITCH_API_KEY"]
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    stop = asyncio.Event()
    lock = asyncio.Lock()
    pending: set[asyncio.Task[None]] = set()
    # Warm it with the unsigned server-time call, as the daemon does.
    writer.write(f"GET /trade/api/v2/time HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await _answer(reader)

    def request() -> bytes:
        epoch = str(int(time.time() * 1000))
        signature = key.sign(f"POST{PATH}{epoch}".encode()).signature.hex()
        return (
            f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"X-AUTH-APIKEY: {api_key}\r\nX-AUTH-SIGNATURE: {signature}\r\n"
            f"X-AUTH-EPOCH: {epoch}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY

    async def answered(sent: float) -> None:
        async with lock:
            status = await _answer(reader)
        line = {"event": "sent", "sent": sent, "status": status}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def on_signal() -> None:
        sent = time.monotonic()
        writer.write(request())  # built and written at the signal, in one call
        task = asyncio.create_task(answered(sent))
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, on_signal)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(json.dumps({"event": "raw.ready"}) + "\n")
    sys.stdout.flush()
    await stop.wait()
    writer.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

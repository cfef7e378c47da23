"""``python -m bench.naive_confirm BASE_URL``: the straightforward script, for context.

What one writes without thinking about the exchange's limits: post
``cancel_all``, then walk the returned ids one by one, asking each order's
status; whatever is not terminal yet is asked again in the next pass, one
second later.  No rate limiter; a 429 just leaves the order for the next pass.
Prints one JSON line: seconds from the acknowledgement to the last terminal
status, polls made, 429s received.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aiohttp
from nacl.signing import SigningKey

CANCEL_ALL = "/trade/api/v2/futures/cancel_all"
ORDER = "/trade/api/v2/futures/order"
TERMINAL = {"CANCELLED", "EXECUTED", "EXPIRED", "DISCARDED", "FAILED", "REJECTED"}


async def main(base_url: str) -> dict[str, float | int]:
    key = SigningKey(bytes.fromhex(os.environ["KILLSWITCH_API_SECRET"]))
    api_key = os.environ["KILLSWITCH_API_KEY"]

    def headers(method: str, path: str) -> dict[str, str]:
        epoch = str(int(time.time() * 1000))
        signature = key.sign(f"{method}{path}{epoch}".encode()).signature.hex()
        return {
            "Content-Type": "application/json",  # the venue requires it, GET included
            "X-AUTH-APIKEY": api_key,
            "X-AUTH-SIGNATURE": signature,
            "X-AUTH-EPOCH": epoch,
        }

    async with aiohttp.ClientSession() as session:
        async with session.post(
            base_url + CANCEL_ALL,
            json={"exchange": "EXCHANGE_2"},
            headers=headers("POST", CANCEL_ALL),
        ) as resp:
            ids: list[str] = (await resp.json())["data"]["orders_ids"]
        acked = time.monotonic()
        pending, polls, limited, passes = list(ids), 0, 0, 0
        while pending:
            passes += 1
            still: list[str] = []
            for order_id in pending:
                path = f"{ORDER}?order_id={order_id}"
                async with session.get(base_url + path, headers=headers("GET", path)) as resp:
                    polls += 1
                    if resp.status == 429:
                        limited += 1
                        still.append(order_id)
                        continue
                    status = (await resp.json())["data"]["order"]["status"]
                if status not in TERMINAL:
                    still.append(order_id)
            pending = still
            if pending:
                await asyncio.sleep(1.0)
        return {
            "orders": len(ids),
            "seconds": time.monotonic() - acked,
            "polls": polls,
            "http_429": limited,
            "passes": passes,
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))), flush=True)

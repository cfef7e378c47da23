"""A trading process's heartbeat sender, run inside the container (stdlib only).

``python3 heartbeats.py SOCKET STOPFILE``: one ``POST /heartbeat`` every 100 ms,
each on a new connection, each waiting up to 30 s for its answer, until STOPFILE
exists.  Prints one JSON object: the count sent, and every one not answered 200
with what went wrong (``ConnectionRefusedError``, ``FileNotFoundError``, ...).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time

INTERVAL = 0.1


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("killswitch", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.unix_path)


def beat(path: str) -> str | None:
    """None when answered 200, else what happened."""
    conn = UnixConnection(path)
    try:
        conn.request("POST", "/heartbeat")
        answer = conn.getresponse()
        answer.read()
        return None if answer.status == 200 else f"HTTP {answer.status}"
    except OSError as exc:
        return type(exc).__name__
    except http.client.HTTPException as exc:
        return type(exc).__name__
    finally:
        conn.close()


def main(path: str, stop: str) -> int:
    sent, failed, slowest = 0, [], 0.0
    due = time.monotonic()
    while not os.path.exists(stop):
        started = time.monotonic()
        problem = beat(path)
        slowest = max(slowest, time.monotonic() - started)
        sent += 1
        if problem is not None:
            failed.append({"n": sent, "problem": problem})
        due += INTERVAL
        time.sleep(max(0.0, due - time.monotonic()))
        due = max(due, time.monotonic() - INTERVAL)  # a long wait does not cause a burst
    print(json.dumps({"sent": sent, "failed": failed, "slowest_s": round(slowest, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

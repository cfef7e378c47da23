"""``python -m bench.access_client SOCKET COUNT [UID]``: heartbeat round trips, in ms.

Each ``POST /heartbeat`` on a new connection, as a trading process might send
it.  With ``UID`` (the bench runs as root) the process drops to that user after
start-up, so the daemon checks a real non-root peer against its rights.
Prints one JSON list of round-trip times.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

REQUEST = b"POST /heartbeat HTTP/1.1\r\nHost: killswitch\r\nContent-Length: 0\r\n\r\n"


def beat(path: str) -> float:
    started = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(REQUEST)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"heartbeat answered {answer[:40]!r}")
    return (time.perf_counter() - started) * 1000


def main(path: str, count: int, uid: int | None) -> int:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    print(json.dumps([beat(path) for _ in range(count)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None))

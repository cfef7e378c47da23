"""Run the killswitch CLI (or a raw control-socket client) as another user.

The interpreter starts as root (its files may be unreadable to the user), imports
what it needs, then drops to the user — setgroups, setgid, setuid, as
``subprocess.run(user=, group=, extra_groups=)`` would before exec — so every
connection it makes carries that user's credentials (SO_PEERCRED is recorded at
``connect()``).  Usage::

    python -m tests.as_user UID GID GROUP,GROUP cli ARGS...
    python -m tests.as_user UID GID GROUP,GROUP raw SOCKET METHOD PATH COUNT [BODY]

``raw`` sends COUNT requests on one kept-alive connection and prints the status
codes as one JSON list.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys

import killswitch.cli
import killswitch.service.status_view  # imported before the drop: the CLI imports it late


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("killswitch", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def raw(path: str, method: str, route: str, count: int, body: str | None) -> int:
    conn = _UnixConnection(path)
    codes = []
    for _ in range(count):
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, route, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        codes.append(answer.status)
    print(json.dumps(codes))
    return 0


def main(argv: list[str]) -> int:
    uid, gid, groups, mode, *rest = argv
    "x".encode("idna")  # the codecs aiohttp/yarl may import lazily, before the drop
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(int(gid))
    os.setuid(int(uid))
    if mode == "cli":
        return killswitch.cli.main(rest)
    path, method, route, count, *body = rest
    return raw(path, method, route, int(count), body[0] if body else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

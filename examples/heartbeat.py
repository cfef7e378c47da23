"""Send killswitch heartbeats from a Python strategy, standard library only.

Usage: python heartbeat.py [SOCKET] [INTERVAL_SECONDS] [COUNT]
"""

import http.client
import socket
import sys
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 1.0) -> None:
        super().__init__("killswitch", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def heartbeat(path: str = "/run/killswitch/control.sock") -> bool:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("POST", "/heartbeat")
        return conn.getresponse().status == 200
    finally:
        conn.close()


if __name__ == "__main__":
    sock = sys.argv[1] if len(sys.argv) > 1 else "/run/killswitch/control.sock"
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # 0: forever
    sent = 0
    while count == 0 or sent < count:
        print("ok" if heartbeat(sock) else "refused", flush=True)
        sent += 1
        time.sleep(interval)

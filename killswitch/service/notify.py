"""A minimal sd_notify client: tell systemd we are ready, reloading, stopping, alive.

The protocol is one AF_UNIX datagram of ``KEY=value`` lines sent to the socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
It is small enough to own instead of depending on ``sdnotify`` (which swallows
every error) or ``systemd-python`` (no wheel).

Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=`` is not
``notify``) every call is a no-op that returns True.  A send that fails
returns False and keeps the exception in :attr:`Notifier.last_error`: this
module never logs, the caller does (the daemon logs ``notify.failed``).

Sends are non-blocking, so a stalled receiver can never stall the event loop;
the datagram is then lost and the call returns False.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Mapping

from killswitch.clock import Clock

__all__ = ["Notifier", "watchdog_loop"]


def _parse_int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


class Notifier:
    """Sends sd_notify datagrams to ``address`` (``None``: every call is a no-op)."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self.last_error: OSError | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        return cls(
            environ.get("NOTIFY_SOCKET"),
            watchdog_usec=_parse_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_parse_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if sent (or disabled)."""
        if self.address is None:
            return True
        lines = []
        for key, value in fields.items():
            text = str(value)
            if not (key.isupper() and key.replace("_", "").isalnum()) or "\n" in text:
                raise ValueError(f"invalid sd_notify field {key!r}")
            lines.append(f"{key}={text}")
        payload = ("\n".join(lines) + "\n").encode()
        try:
            target = self._target()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(payload, target)
        except OSError as exc:
            self.last_error = exc
            return False
        return True

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        if self.address.startswith("/"):
            return self.address
        raise OSError(errno.EAFNOSUPPORT, "NOTIFY_SOCKET is neither a path nor @abstract")

    def ready(self) -> bool:
        """``READY=1``: startup (or a reload) is complete."""
        return self.send(READY=1)

    def reloading(self) -> bool:
        """``RELOADING=1`` with the ``MONOTONIC_USEC`` timestamp systemd expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        """``STOPPING=1``: a graceful shutdown has begun."""
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        """``STATUS=...``: the one line ``systemctl status`` shows (newlines flattened)."""
        return self.send(STATUS=" ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: we are alive; systemd restarts us if these stop."""
        return self.send(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or None if not asked for us."""
        if self.address is None or not self.watchdog_usec or self.watchdog_usec <= 0:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2 / 1_000_000


async def watchdog_loop(
    notifier: Notifier,
    healthy: Callable[[], bool],
    clock: Clock,
    *,
    on_failure: Callable[[OSError | None], None] | None = None,
) -> None:
    """Ping ``WATCHDOG=1`` every interval while ``healthy()`` holds; return when it fails.

    Returns at once if no watchdog was requested.  Once ``healthy()`` is false
    the loop stops for good, so systemd's watchdog fires and restarts the
    service; a wedged event loop stops the pings by itself.  ``on_failure``
    is called with :attr:`Notifier.last_error` when a ping could not be sent.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while healthy():
        if not notifier.watchdog() and on_failure is not None:
            on_failure(notifier.last_error)
        await clock.sleep(interval)

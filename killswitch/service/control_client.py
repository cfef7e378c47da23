"""The control API's client: the CLI's verbs over the daemon's UNIX socket (contract §6).

:class:`ControlClient` sends one request and reads its JSON answer; no daemon
on the socket, or a socket this user may not open, is
:class:`DaemonUnavailable` with a sentence saying what to do.  The server is
:class:`~killswitch.service.control.ControlServer`.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["ControlClient", "DaemonUnavailable", "permission_problem"]


class DaemonUnavailable(Exception):
    """No daemon answers on the control socket."""


def permission_problem(path: Path) -> str:
    """What to tell a user the control socket refused (mode 0600: its owner only)."""
    try:
        owner = path.stat().st_uid
        try:
            who = pwd.getpwuid(owner).pw_name
        except KeyError:
            who = f"uid {owner}"
    except OSError:
        who = "the daemon's user"
    try:
        me = getpass.getuser()
    except (KeyError, OSError):
        me = "?"
    return (
        f"permission denied on the control socket {path} for user {me} "
        f"(uid {os.getuid()}); the daemon may well be running: the socket belongs to "
        f"{who}. Run this with sudo, or as the service user (sudo -u {who} killswitch ...)"
    )


class ControlClient:
    """Talks to a running daemon over its control socket (the CLI verbs)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    async def request(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None = None,
        parse: Callable[[bytes], Any] = json.loads,
    ) -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(self.path))
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://killswitch{route}", json=body) as resp,
            ):
                return resp.status, parse(await resp.read())
        except PermissionError:
            raise DaemonUnavailable(permission_problem(self.path)) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PermissionError):
                raise DaemonUnavailable(permission_problem(self.path)) from None
            raise DaemonUnavailable(
                f"no daemon answers on {self.path} ({type(exc).__name__})"
            ) from None
        except (aiohttp.ClientConnectionError, FileNotFoundError, TimeoutError) as exc:
            raise DaemonUnavailable(
                f"no daemon answers on {self.path} ({type(exc).__name__})"
            ) from None

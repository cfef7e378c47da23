"""The control API: HTTP over a UNIX socket (contract §6), and its client.

The socket is created with mode 0600.  A path held by a live daemon is
refused; a stale socket file left by a crash is removed.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from killswitch.log import get_logger

__all__ = ["ControlClient", "ControlServer", "Controllable", "DaemonUnavailable", "SocketInUse"]

MAX_REASON = 500


class SocketInUse(Exception):
    """Another live daemon answers on the control socket."""


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


class Controllable(Protocol):
    def heartbeat(self) -> dict[str, Any]: ...
    def trigger(self, reason: str) -> dict[str, Any]: ...
    def reset(self, force: bool = False) -> tuple[bool, dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...
    def metrics(self) -> bytes: ...


def _socket_is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # exists and something is odd: do not steal it
        return True


class ControlServer:
    def __init__(self, path: Path, target: Controllable) -> None:
        self.path = path
        self.target = target
        self._runner: web.AppRunner | None = None
        self._log = get_logger()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/heartbeat", self._heartbeat)
        app.router.add_post("/trigger", self._trigger)
        app.router.add_get("/status", self._status)
        app.router.add_post("/reset", self._reset)
        app.router.add_get("/metrics", self._metrics)
        return app

    def claim(self) -> None:
        """Refuse a path a live daemon holds; remove a stale socket file left by a crash."""
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise SocketInUse(f"{self.path} exists and is not a socket")
            if _socket_is_live(self.path):
                raise SocketInUse(f"a live daemon already listens on {self.path}")
            self.path.unlink()
            self._log.warning("control.stale_socket_removed", path=str(self.path))

    async def start(self) -> None:
        self.claim()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        old = os.umask(0o177)
        try:
            site = web.UnixSite(self._runner, str(self.path))
            await site.start()
        finally:
            os.umask(old)
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _heartbeat(self, request: web.Request) -> web.Response:
        # Always 200 with the state, even with the heartbeat trigger off: a trading
        # process reads KILLING or TRIPPED here and stops itself (contract §1).
        return web.json_response({"ok": True, **self.target.heartbeat()})

    async def _trigger(self, request: web.Request) -> web.Response:
        reason = "control API"
        if request.can_read_body:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return web.json_response({"error": "body must be JSON"}, status=400)
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                reason = body["reason"][:MAX_REASON] or reason
            elif body not in (None, {}):
                return web.json_response({"error": 'expected {"reason": "..."}'}, status=400)
        return web.json_response(self.target.trigger(reason), status=202)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.target.status())

    async def _reset(self, request: web.Request) -> web.Response:
        force = request.query.get("force", "") in ("1", "true", "yes")
        ok, status = self.target.reset(force)
        if not ok:
            return web.json_response(
                {
                    "error": "a kill is running; reset once it completes, or force it "
                    "(POST /reset?force=1, killswitch reset --force) to abandon the kill",
                    **status,
                },
                status=409,
            )
        return web.json_response(status)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.target.metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
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

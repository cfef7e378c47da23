"""The control API: HTTP over a UNIX socket (contract §6).  What it answers is in
:mod:`killswitch.service.answers`; its client is :mod:`killswitch.service.control_client`
(re-exported here).

The socket is created with mode 0600.  A path held by a live daemon is
refused; a stale socket file left by a crash is removed.

No client can starve the daemon through this socket.  At most
``max_connections`` (64, fewer under a small RLIMIT_NOFILE) are held open; a
new connection beyond that evicts the oldest one that is not in the middle
of a request (an idle or slowloris client), or is closed at once when all of
them are busy.  A connection that has not sent a complete request within
``HEADER_TIMEOUT`` seconds of connecting is dropped (slowloris), a kept-alive
one after ``IDLE_TIMEOUT`` seconds without a request; a request body that
does not arrive within ``BODY_TIMEOUT`` is unreadable.
asyncio accepts up to ``BACKLOG`` connections in one loop turn, and an
evicted one is closed one or two turns later, so during a flood the control
socket may briefly hold ``max_connections + 3 * BACKLOG`` descriptors.  The
soft RLIMIT_NOFILE is raised to the hard limit at start, and ``FD_RESERVE``
descriptors beyond those bursts are kept out of the control socket's reach
for the exchange client's pools, the state store, the inotify watch and the
reader thread.  Malformed HTTP and handler errors are one damped
``control.error`` event, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from killswitch.damping import Damper
from killswitch.log import get_logger
from killswitch.service.access import AccessGuard, Peer
from killswitch.service.control_client import ControlClient, DaemonUnavailable

__all__ = [
    "ControlClient",
    "ControlServer",
    "Controllable",
    "DaemonUnavailable",
    "SocketInUse",
    "claim_socket",
    "raise_fd_limit",
]

MAX_REASON = 500
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64  # control connections held open at once
FD_RESERVE = 160  # exchange pools 64 + 8, store 3, inotify, loop, stdio, notify ... + margin
BACKLOG = 64  # asyncio accepts up to this many connections in one loop turn
LISTEN_QUEUE = 1024  # connects the kernel queues: a client waits instead of failing with EAGAIN
HEADER_TIMEOUT = 5.0  # seconds from connecting to a complete first request
IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection may wait for its next request
BODY_TIMEOUT = 2.0  # seconds for a request body to arrive
UNREADABLE = "unreadable request body"


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the (soft, hard) in force after.

    Under systemd the unit's ``LimitNOFILE=`` sets both (and its system call
    filter may forbid setrlimit): a refusal keeps the limit as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def connection_cap(soft_limit: int) -> int:
    """Control connections allowed under ``soft_limit`` descriptors, ``FD_RESERVE`` kept back."""
    if soft_limit == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft_limit - FD_RESERVE - 3 * BACKLOG))


class _Refused(asyncio.Protocol):
    """A connection over the cap while every held one is busy: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _HttpErrors(logging.Filter):
    """aiohttp's server log (malformed HTTP, handler errors) as one damped event."""

    def __init__(self, damper: Damper) -> None:
        super().__init__()
        self.damper = damper
        self.log = get_logger()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            exc = record.exc_info[1] if record.exc_info else None
            self.damper.warning(
                self.log,
                "control.error",
                problem=record.getMessage(),
                error=None if exc is None else type(exc).__name__,
                detail=None if exc is None else str(exc)[:200],
            )
        return False  # never a traceback on stderr


class SocketInUse(Exception):
    """Another live daemon answers on the control socket."""


class Controllable(Protocol):
    def heartbeat(self) -> dict[str, Any]: ...
    def trigger(self, reason: str, peer: Peer | None = None) -> dict[str, Any]: ...
    def reset(
        self, force: bool = False, peer: Peer | None = None, reason: str | None = None
    ) -> tuple[int, dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...
    def metrics(self) -> bytes: ...
    async def flatten(self, symbol: str | None) -> tuple[int, dict[str, Any]]: ...


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


def claim_socket(path: Path) -> None:
    """Refuse a path a live daemon holds; remove a stale socket file left by a crash."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket")
        if _socket_is_live(path):
            raise SocketInUse(f"a live daemon already listens on {path}")
        path.unlink()
        get_logger().warning("control.stale_socket_removed", path=str(path))


class ControlServer:
    def __init__(
        self,
        path: Path,
        target: Controllable,
        *,
        access: AccessGuard | None = None,
        mode: int = 0o600,
        group: int | None = None,
        activated: socket.socket | None = None,
    ) -> None:
        self.path = path
        self.target = target
        self.access = access  # rights by peer credentials (service/access.py)
        self.mode = mode
        self.group = group
        self.activated = activated  # the listening socket systemd passed (service/activation.py)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._busy: set[object] = set()  # protocols with a request being handled
        self._unserved: set[object] = set()  # connected, no request handled yet (until due)
        self._fresh: list[Any] = []  # protocols made in this loop turn, not yet connected
        self.max_connections = MAX_CONNECTIONS
        self.damper = Damper()
        self._log = get_logger()
        self._http_log = logging.getLogger(f"killswitch.control.{id(self):x}")
        self._http_log.propagate = False
        self._http_log.addFilter(_HttpErrors(self.damper))

    @web.middleware
    async def _track(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Mark the connection busy while its request is handled: it is not evicted."""
        protocol = request.protocol
        self._busy.add(protocol)
        self._unserved.discard(protocol)
        try:
            return await handler(request)
        finally:
            self._busy.discard(protocol)

    def _first_request_due(self, handler: Any) -> None:
        """HEADER_TIMEOUT after connecting: no complete request yet is a slowloris."""
        if handler not in self._unserved:
            return
        self._unserved.discard(handler)
        if handler.transport is not None and handler not in self._busy:
            handler.force_close()
            self.damper.warning(self._log, "control.slow_client", timeout=HEADER_TIMEOUT)

    def _protocol(self) -> asyncio.BaseProtocol:
        """A new connection: over the cap, evict the oldest idle ones (or refuse this one).

        asyncio creates the protocols of a whole accept burst before any of them
        is connected (``connection_made`` runs a loop turn later), so those are
        counted, and evicted, too: the newest connections of a burst survive,
        which is where a client that connects after a flood stands.
        """
        assert self._runner is not None
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        if not self._fresh:
            loop.call_soon(self._fresh.clear)  # next turn they are in server.connections
        held = [h for h in server.connections if h.transport is not None]
        excess = len(held) + len(self._fresh) + 1 - self.max_connections
        if excess > 0:
            idle = [h for h in held if h not in self._busy][:excess]
            for victim in idle:
                victim.force_close()
            doomed = self._fresh[: excess - len(idle)]
            del self._fresh[: len(doomed)]
            for victim in doomed:
                # Its connection_made is already queued; close it right after that.
                loop.call_soon(victim.force_close)
            if len(idle) + len(doomed) < excess:
                self.damper.warning(
                    self._log, "control.overloaded", held=len(held), action="refused"
                )
                return _Refused()
            self.damper.warning(
                self._log, "control.overloaded", held=len(held), action="evicted oldest idle"
            )
        handler = server()
        self._fresh.append(handler)
        self._unserved.add(handler)
        loop.call_later(HEADER_TIMEOUT, self._first_request_due, handler)
        return handler

    def _app(self) -> web.Application:
        guard = [] if self.access is None else [self.access.middleware]
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._track, *guard])
        app.router.add_post("/heartbeat", self._heartbeat)
        app.router.add_post("/trigger", self._trigger)
        app.router.add_get("/status", self._status)
        app.router.add_post("/reset", self._reset)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/flatten", self._flatten)
        return app

    def claim(self) -> None:
        """Refuse a path a live daemon holds; remove a stale socket file left by a crash."""
        claim_socket(self.path)

    async def start(self) -> None:
        if self.activated is None:
            self.claim()
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.access is not None:
            await asyncio.to_thread(self.access.prime)  # the daemon's own name: NSS, off the loop
        soft, hard = raise_fd_limit()
        self.max_connections = connection_cap(soft)
        self._runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=IDLE_TIMEOUT,
            lingering_time=0,  # a body left unread (too slow, too big) is not waited for
            logger=self._http_log,
        )
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        listener = self.activated or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            if self.activated is None:
                listener.bind(str(self.path))
            self._server = await loop.create_unix_server(
                self._protocol, sock=listener, backlog=BACKLOG
            )
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old)
        # asyncio uses one number for the kernel's queue and for its accept burst; a
        # long queue lets a flood wait in the kernel, where it costs no descriptor.
        listener.listen(LISTEN_QUEUE)
        if self.activated is None:
            if self.group is not None:
                os.chown(self.path, -1, self.group)
            self.path.chmod(self.mode)
        self._log.info(
            "control.listening",
            path=str(self.path),
            activated=self.activated is not None,
            max_connections=self.max_connections,
            nofile_soft=soft,
            nofile_hard=None if hard == resource.RLIM_INFINITY else hard,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.access is not None:
            self.access.close()
        if self.activated is None:  # systemd's socket stays, for the next daemon
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _heartbeat(self, request: web.Request) -> web.Response:
        # Always 200 with the state, even with the heartbeat trigger off: a trading
        # process reads KILLING or TRIPPED here and stops itself (contract §1).
        return web.json_response({"ok": True, **self.target.heartbeat()})

    async def _trigger(self, request: web.Request) -> web.Response:
        """Always kills: a body that cannot be read or understood is a reason, not a refusal."""
        reason, problem = await self._trigger_reason(request)
        if problem is not None:
            reason = UNREADABLE
            self.damper.warning(self._log, "control.unreadable_body", problem=problem)
        peer = None if self.access is None else self.access.peer(request)
        answer = self.target.trigger(reason, peer)
        if problem is not None:
            answer = {**answer, "reason": reason, "body_problem": problem}
        return web.json_response(answer, status=202)

    async def _trigger_reason(
        self, request: web.Request, default: str = "control API"
    ) -> tuple[str, str | None]:
        """The reason a trigger body gives, or the default and why the body was unusable."""
        reason = default
        if not request.can_read_body:
            return reason, None
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            return reason, f"body did not arrive within {BODY_TIMEOUT:g} s"
        except web.HTTPRequestEntityTooLarge:
            return reason, f"body larger than {MAX_BODY} bytes"
        except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
            return reason, f"body could not be read ({type(exc).__name__})"
        if not raw.strip():
            return reason, None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return reason, "not JSON"
        if isinstance(body, dict) and isinstance(body.get("reason"), str):
            return body["reason"][:MAX_REASON] or reason, None
        if body in (None, {}):
            return reason, None
        return reason, 'expected {"reason": "..."}'

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.target.status())

    async def _reset(self, request: web.Request) -> web.Response:
        force = request.query.get("force", "") in ("1", "true", "yes")
        reason, _ = await self._trigger_reason(request, default="")
        peer = None if self.access is None else self.access.peer(request)
        code, status = self.target.reset(force, peer, reason or None)
        if code == 202:  # four eyes: one approval of two (contract §13)
            return web.json_response(status, status=202)
        if code != 200:
            return web.json_response(
                {
                    "error": "a kill is running; reset once it completes, or force it "
                    "(POST /reset?force=1, killswitch reset --force) to abandon the kill",
                    **status,
                },
                status=409,
            )
        return web.json_response(status)

    async def _flatten(self, request: web.Request) -> web.Response:
        """``POST /flatten`` ``{"symbol"?}`` (contract §12): 409 unless ``TRIPPED``."""
        symbol: str | None = None
        if request.can_read_body:
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    body = json.loads((await request.read()) or b"{}")
            except (TimeoutError, ValueError, UnicodeDecodeError, aiohttp.ClientError):
                return web.json_response({"error": 'expected {"symbol"?: "..."}'}, status=400)
            if not isinstance(body, dict) or not isinstance(body.get("symbol", ""), str | None):
                return web.json_response({"error": 'expected {"symbol"?: "..."}'}, status=400)
            symbol = body.get("symbol") or None
        code, answer = await self.target.flatten(symbol)
        return web.json_response(answer, status=code)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.target.metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

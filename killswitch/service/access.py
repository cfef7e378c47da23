"""Who may use the control socket: rights by the kernel's peer credentials (contract §13).

Each request's peer is read from its connection with ``SO_PEERCRED`` (uid, gid,
pid, recorded by the kernel at ``connect()``) and ``SO_PEERGROUPS`` (the
process's supplementary groups at that moment): nothing the client sends about
itself counts, and no NSS lookup runs on the loop to decide.  The rights name
users, ``@groups`` and uids, resolved to uid and gid sets when the config was
loaded (:mod:`killswitch.config.access`).  Root and the daemon's own user
(``os.geteuid()`` at run time: under ``DynamicUser=`` it changes across
restarts) hold every right.  Without ``[control.access]`` whoever can connect
(the socket is 0600) may do everything, as in 0.3.0.

A request without its right is answered 403 with the right and the peer, and
logged as ``control.denied``, damped per right and uid: a flood of them costs a
getsockopt, a set lookup and a small answer each, and the socket's own flood
guarantees (:mod:`killswitch.service.control`) hold for the allowed requests.
User names for events come from the names the config resolved (the users it
names and their groups' members); any other uid is looked up once in a
thread, which a denial or a reset waits for (at most ``LOOKUP_WAIT``) and a
trigger never does (its peer then shows ``user: null``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from killswitch.config.model import ControlAccess, ControlConfig, Principals
from killswitch.damping import Damper
from killswitch.log import get_logger

__all__ = ["ROUTE_RIGHTS", "AccessGuard", "Peer", "peer_of"]

# The right each route needs; a route the app serves that is not listed needs UNLISTED,
# which only root and the daemon's own user hold.
ROUTE_RIGHTS = {
    "/status": "status",
    "/metrics": "status",
    "/heartbeat": "heartbeat",
    "/trigger": "trigger",
    "/reset": "reset",
    "/flatten": "reset",  # contract §12: closing positions is the reset right
}
UNLISTED = "unlisted route"
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python 3.11 lacks the name
_UCRED = struct.Struct("3i")
LOOKUP_WAIT = 1.0  # seconds a denial or a reset waits for an unknown uid's name
MAX_NAMES = 4096  # uids whose names are remembered (a flood from many uids stays bounded)


@dataclass(frozen=True)
class Peer:
    """The process on the other end of a control connection, as the kernel reports it."""

    uid: int
    gid: int
    pid: int
    groups: frozenset[int]
    user: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The peer in events and answers: ``uid``, ``user``, ``pid``."""
        return {"uid": self.uid, "user": self.user, "pid": self.pid}

    def holds(self, principals: Principals) -> bool:
        return self.uid in principals.uids or not principals.gids.isdisjoint(self.groups)


PEER_KEY = web.RequestKey("peer", Peer)  # the peer the guard recorded on a request


def peer_of(sock: Any) -> Peer:
    """``sock``'s peer from ``SO_PEERCRED`` and ``SO_PEERGROUPS`` (without a name)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    groups = {gid}
    for size in (256, 65536):  # NGROUPS_MAX is 65536; ERANGE asks for a larger buffer
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * size)
        except OSError:
            continue
        groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
        break
    return Peer(uid=uid, gid=gid, pid=pid, groups=frozenset(groups))


class _Names:
    """uid → user name without waiting: the config's names, else one lookup in a thread."""

    def __init__(self) -> None:
        self._known: dict[int, str | None] = {}
        self._pending: dict[int, asyncio.Future[str | None]] = {}

    def reset(self, access: ControlAccess | None, own: tuple[int, str | None]) -> None:
        self._known = {0: "root", own[0]: own[1]}
        if access is not None:
            self._known.update(access.names)

    def get(self, uid: int) -> str | None:
        if uid in self._known:
            return self._known[uid]
        if uid not in self._pending and len(self._known) < MAX_NAMES:
            loop = asyncio.get_running_loop()
            lookup = loop.run_in_executor(None, _user_name, uid)
            self._pending[uid] = lookup
            lookup.add_done_callback(lambda f: self._learned(uid, f))
        return None

    async def resolve(self, uid: int) -> str | None:
        """The name, waiting (without blocking the loop) up to ``LOOKUP_WAIT`` for a lookup."""
        name = self.get(uid)
        lookup = self._pending.get(uid)
        if name is None and lookup is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(lookup), LOOKUP_WAIT)
            name = self._known.get(uid)
        return name

    def _learned(self, uid: int, lookup: asyncio.Future[Any]) -> None:
        self._pending.pop(uid, None)
        if not lookup.cancelled() and lookup.exception() is None:
            self._known[uid] = lookup.result()

    def close(self) -> None:
        for lookup in self._pending.values():
            lookup.cancel()
        self._pending.clear()


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class AccessGuard:
    """The control API's middleware: the peer of every request, its right checked."""

    def __init__(self, control: Callable[[], ControlConfig]) -> None:
        self._control = control
        self._names = _Names()
        self._access: ControlAccess | None = None
        self._own: tuple[int, str | None] = (os.geteuid(), None)
        self.damper = Damper()
        self.denied = 0
        self._log = get_logger()

    def _current(self) -> ControlAccess | None:
        access = self._control().access
        if access is not self._access:  # a reload: the names it resolved
            self._access = access
            self._names.reset(access, self._own)
        return access

    def prime(self) -> None:
        """Learn the daemon's own name and the config's names, at start, before serving."""
        own = os.geteuid()
        self._own = (own, _user_name(own))
        self._access = self._control().access
        self._names.reset(self._access, self._own)

    def peer(self, request: web.Request) -> Peer | None:
        """The peer the guard recorded on ``request`` (None on a route that needs no right)."""
        return request.get(PEER_KEY)

    def allowed(self, peer: Peer, right: str) -> bool:
        access = self._current()
        if access is None or peer.uid in (0, os.geteuid()):
            return True
        principals: Principals = getattr(access, right, Principals())
        return peer.holds(principals)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The route the router matched (what will run), not the path as spelled: a
        # "/%72eset" or a new route cannot slip past with a right of its own.
        resource = request.match_info.route.resource
        if resource is None or request.match_info.http_exception is not None:
            return await handler(request)  # no such route: the router's 404 or 405
        # A route not in ROUTE_RIGHTS is root's and the daemon's own (fail closed).
        right = ROUTE_RIGHTS.get(resource.canonical, UNLISTED)
        sock = None if request.transport is None else request.transport.get_extra_info("socket")
        try:
            found = None if sock is None else peer_of(sock)
        except (OSError, struct.error):
            found = None
        if found is None:  # no credentials to read: fine without rights, refused with them
            if self._current() is None:
                return await handler(request)
            return self._deny(Peer(uid=-1, gid=-1, pid=0, groups=frozenset()), right)
        peer = Peer(found.uid, found.gid, found.pid, found.groups, self._names.get(found.uid))
        allowed = self.allowed(peer, right)
        if peer.user is None and (not allowed or right == "reset"):
            # Off the kill's path: worth the wait for a name (a trigger never waits).
            user = await self._names.resolve(peer.uid)
            peer = Peer(peer.uid, peer.gid, peer.pid, peer.groups, user)
        if not allowed:
            return self._deny(peer, right)
        request[PEER_KEY] = peer
        return await handler(request)

    def _deny(self, peer: Peer, right: str) -> web.Response:
        self.denied += 1
        shown = peer.as_dict()
        self.damper.warning(
            self._log, "control.denied", key=(right, peer.uid), right=right, peer=shown
        )
        who = peer.user or f"uid {peer.uid}"
        return web.json_response(
            {"error": f"{who} does not hold the right {right!r}", "right": right, "peer": shown},
            status=403,
        )

    def close(self) -> None:
        self._names.close()

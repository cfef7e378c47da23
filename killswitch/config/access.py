"""``[control]`` with its rights (contract §13) and ``[halt]`` (§14), read and resolved.

User and group names are looked up here, once, when the config is loaded (the
daemon's first load, a SIGHUP reload in a thread, ``check-config``): the engine
holds uid and gid sets and never asks NSS on its event loop.  A name that does
not resolve is a config error naming the key, as a typo should be.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import re
from pathlib import Path

from killswitch.config.model import ControlAccess, ControlConfig, HaltConfig, Principals
from killswitch.config.reader import ConfigError, Table, show

__all__ = ["RIGHTS", "SOCKET_MODES", "parse_control", "parse_halt"]

RIGHTS = ("status", "heartbeat", "trigger", "reset")
SOCKET_MODES = ("0600", "0660", "0666")
MAX_APPROVAL_WINDOW = 86400.0
# A unit name as systemd spells one (unit_name_is_valid): no path, no spaces.
_UNIT = re.compile(
    r"[A-Za-z0-9:_.\\@-]+\.(service|target|socket|timer|path|slice|scope|mount|device)"
)


def _principals(t: Table, right: str, names: dict[int, str]) -> Principals:
    if not t.has(right):
        return Principals()
    key = t.key(right)
    value = t.raw(right)
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of users, @groups or uids, got {show(value)}")
    entries: list[str] = []
    uids: set[int] = set()
    gids: set[int] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | str) or item == "":
            raise ConfigError(key, f"expected a user, @group or uid, got {show(item)}")
        text = str(item)
        if text in entries:
            raise ConfigError(key, f"lists {text!r} twice")
        entries.append(text)
        if isinstance(item, int) or text.isdigit():
            uid = int(text)
            if not 0 <= uid < 2**32 - 1:
                raise ConfigError(key, f"{text} is not a uid")
            uids.add(uid)
            # A uid without a name (a container's, a dynamic user's) is fine.
            with contextlib.suppress(KeyError):
                names.setdefault(uid, pwd.getpwuid(uid).pw_name)
        elif text.startswith("@"):
            group = _group(key, text[1:])
            gids.add(group.gr_gid)
            for member in group.gr_mem:  # their names, for the events
                try:
                    names.setdefault(pwd.getpwnam(member).pw_uid, member)
                except KeyError:
                    continue
        else:
            try:
                user = pwd.getpwnam(text)
            except KeyError:
                raise ConfigError(key, f"no such user {text!r}") from None
            uids.add(user.pw_uid)
            names.setdefault(user.pw_uid, user.pw_name)
    return Principals(entries=tuple(entries), uids=frozenset(uids), gids=frozenset(gids))


def _group(key: str, name: str) -> grp.struct_group:
    try:
        return grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except KeyError:
        raise ConfigError(key, f"no such group {name!r}") from None


def _access(c: Table) -> ControlAccess | None:
    if not c.has("access"):
        return None
    t = c.table("access")
    names: dict[int, str] = {}
    rights = {right: _principals(t, right, names) for right in RIGHTS}
    approvals = t.integer("reset_approvals", 1, minimum=1, maximum=2)
    t.finish()
    return ControlAccess(**rights, reset_approvals=approvals, names=tuple(sorted(names.items())))


def parse_control(c: Table, socket: Path) -> ControlConfig:
    """``[control]`` (``socket`` already read by the caller), then ``c.finish()``."""
    d = ControlConfig()
    access = _access(c)
    mode_text = c.choice("socket_mode", "0600", SOCKET_MODES)
    if mode_text != "0600" and access is None:
        raise ConfigError(
            c.key("socket_mode"),
            f"{mode_text} opens the socket to other users: only with [control.access]",
        )
    group: int | None = None
    if c.has("socket_group"):
        raw = c.raw("socket_group")
        if isinstance(raw, bool) or not isinstance(raw, int | str) or raw == "":
            raise ConfigError(c.key("socket_group"), f"expected a group or gid, got {show(raw)}")
        group = raw if isinstance(raw, int) else _group(c.key("socket_group"), raw).gr_gid
    window = c.number("approval_window", d.approval_window, positive=True)
    if window > MAX_APPROVAL_WINDOW:
        raise ConfigError(c.key("approval_window"), f"must be at most {MAX_APPROVAL_WINDOW:g}")
    c.finish()
    return ControlConfig(
        socket=socket,
        socket_mode=mode_text,  # type: ignore[arg-type]  # checked against SOCKET_MODES
        socket_group=group,
        approval_window=window,
        access=access,
    )


def parse_halt(t: Table) -> HaltConfig:
    units = t.strings("units")
    for unit in units:
        if not _UNIT.fullmatch(unit):
            raise ConfigError(t.key("units"), f"{unit!r} is not a systemd unit name")
    t.finish()
    return HaltConfig(units=units)

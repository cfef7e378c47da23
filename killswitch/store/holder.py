"""Which process holds the state file: the daemon's pid when its control socket is silent.

SQLite keeps POSIX record locks on the database (and, in WAL mode, on its
``-shm`` file) for as long as a connection is open, and the daemon keeps its
store open while it runs.  ``fcntl(F_GETLK)`` asks the kernel who holds a lock
that would conflict with a write lock, without taking one: nothing is changed,
no file is written, and a daemon that is running is not disturbed.  Linux only
(the ``struct flock`` layout of 64-bit Linux).
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Holder", "state_file_holder", "what_still_kills"]

_FLOCK: Final = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid (struct flock, 64-bit)


@dataclass(frozen=True)
class Holder:
    """The answer: ``pid`` of a process holding the file, or ``problem`` if none can be told."""

    path: Path
    pid: int | None
    command: str | None = None  # its command line, when /proc shows it
    problem: str | None = None  # why it could not be told (the file is unreadable, say)


def _lock_holder(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK or pid <= 0 else pid


def _command(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part) or None


def state_file_holder(path: Path) -> Holder:
    """The process that holds the state database at ``path`` (or its ``-shm``), if any."""
    if not path.exists():
        return Holder(path, None)
    try:
        for candidate in (path, path.with_name(path.name + "-shm")):
            pid = _lock_holder(candidate) if candidate.exists() else None
            if pid is not None:
                return Holder(path, pid, _command(pid))
    except OSError as exc:
        return Holder(path, None, problem=exc.strerror or type(exc).__name__)
    return Holder(path, None)


def what_still_kills(path: Path, config: Path | None) -> str:
    """``killswitch trigger`` when the control socket is silent: the process that holds
    the state file and its signal, or that no daemon runs (one line)."""
    holder = state_file_holder(path)
    where = f"the state file {holder.path}"
    systemd = "; under systemd: sudo systemctl kill -s SIGUSR1 --kill-whom=main killswitch"
    if holder.pid is not None:
        command = f" ({holder.command})" if holder.command else ""
        return (
            f"process {holder.pid}{command} holds {where}: if it is the daemon, "
            f"`kill -USR1 {holder.pid}` (as its user or root) kills through it{systemd}"
        )
    if holder.problem is not None:
        return (
            f"cannot tell which process holds {where} ({holder.problem}); as root, "
            f"`fuser -v {holder.path}` names it, and `kill -USR1 <pid>` kills{systemd}"
        )
    return (
        f"no process holds {where}: the daemon is not running. Start it (`killswitch run"
        f" --config {config or '...'}`, or `sudo systemctl start killswitch`): a latched"
        " kill resumes at start. Until then, cancel on the exchange by hand"
    )

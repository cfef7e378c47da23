"""Socket activation: the control socket handed over by systemd (``sd_listen_fds(3)``).

Under ``killswitch.socket`` systemd owns the listening socket: it exists from
boot, keeps listening while the daemon restarts (a crash, the watchdog,
``systemctl restart``), and connections made meanwhile wait in its backlog for
the next daemon.  The daemon gets it as fd 3 with ``LISTEN_FDS=1`` and
``LISTEN_PID=<its pid>``; the variables are removed once read, so no child
inherits them.  Without them (``killswitch run`` by hand) the daemon binds the
path itself, as before.  A few lines, not a dependency (LIBRARY-NOTES.md).
"""

from __future__ import annotations

import os
import socket
import stat

__all__ = ["SD_LISTEN_FDS_START", "ActivationError", "listening_socket"]

SD_LISTEN_FDS_START = 3


class ActivationError(Exception):
    """systemd passed something that is not one listening UNIX stream socket."""


def listening_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The control socket systemd passed to this process, or None when there is none."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return None
    if count != "1":
        raise ActivationError(f"LISTEN_FDS={count}: the control socket unit must listen once")
    fd = SD_LISTEN_FDS_START
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise ActivationError(f"fd {fd} from systemd is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ActivationError("the control socket unit must be a UNIX ListenStream=")
    os.set_inheritable(fd, False)
    return sock

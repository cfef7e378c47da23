"""Signals from the package's first line (contract §7): record them, never die of them.

``killswitch/__init__.py`` calls :func:`install_if_daemon` before anything
else, so from the moment the interpreter runs the package's first line a
``SIGUSR1``, ``SIGTERM``, ``SIGINT`` or ``SIGHUP`` only appends its number to a
list; the heavy imports (aiohttp, PyNaCl, structlog, prometheus: about
0.4 s) and the config load run on undisturbed.  ``Daemon.serve()`` then
attaches a wake-up: the event loop takes the signals recorded so far in the
order they arrived, and every later one wakes it to take that one too.  When
``serve()`` ends it detaches, and the process records again until it exits:
at no point between the first line and the exit does one of these signals end
the process.

The handlers stay the only handlers for the whole life of the process (there
is no hand-over to ``loop.add_signal_handler``, whose removal at the loop's
close resets the disposition to the default action, which for ``SIGUSR1`` is
death).  Python runs them in the main thread; ``serve()`` sets a wake-up fd so
a signal delivered to another thread still wakes the loop.

From the same line the daemon's stdout and stderr are best-effort and bounded
(:mod:`killswitch.logsink`): ``daemon.starting`` and everything after it is
queued for a writer thread, so a full or broken pipe at start-up cannot stop
or kill the daemon either.

Only the daemon captures ``SIGTERM``/``SIGINT`` this early: a library user or
pytest importing the package keeps its own handlers (see :func:`started_as_daemon`).
Standard library only, and nothing slow: this runs before the heavy imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

__all__ = [
    "SIGNALS",
    "attach",
    "detach",
    "install",
    "install_if_daemon",
    "installed",
    "pending",
    "started_as_daemon",
    "take",
    "uninstall",
]

SIGNALS = (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

_pending: list[int] = []  # received, not yet taken; appended only by _handler
_wake: Callable[[], None] | None = None
_previous: dict[int, Any] | None = None  # the handlers replaced by install(), for uninstall()


def _handler(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)
    wake = _wake
    if wake is not None:
        with contextlib.suppress(Exception):  # the loop is closing: it stays recorded
            wake()


def started_as_daemon(argv: Sequence[str] | None = None, orig: Sequence[str] | None = None) -> bool:
    """True when this process is ``killswitch run`` or ``python -m killswitch run``.

    The rule: the program is the ``killswitch`` console script (``argv[0]``'s
    base name), or ``argv[0]`` is ``-m`` (what :mod:`runpy` sets while it imports
    the package to run) and the interpreter's own arguments say ``-m killswitch``;
    and the first argument that is not an option is the ``run`` command.
    """
    argv = sys.argv if argv is None else argv
    if len(argv) < 2:
        return False
    if argv[0] == "-m":
        orig = getattr(sys, "orig_argv", []) if orig is None else orig
        modules = [
            orig[i + 1] if arg == "-m" else arg[2:]
            for i, arg in enumerate(orig[:-1])
            if arg.startswith("-m")
        ]
        if not modules or modules[0] != "killswitch":
            return False
    elif os.path.basename(argv[0]) != "killswitch":
        return False
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
    return command == "run" and not {"-h", "--help"} & set(argv[1:])  # help: no daemon


def install() -> bool:
    """Make the recording handler the handler of :data:`SIGNALS`; False if it already was."""
    global _previous
    if _previous is not None:
        return False
    _previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    return True


def installed() -> bool:
    return _previous is not None


def uninstall() -> None:
    """Put back the handlers :func:`install` replaced, and forget what was recorded."""
    global _previous
    if _previous is None:
        return
    for signum, previous in _previous.items():
        signal.signal(signum, previous)
    _previous = None
    _pending.clear()


def pending() -> list[int]:
    """The signals received and not yet taken, oldest first."""
    return list(_pending)


def take() -> int | None:
    """The oldest signal not yet taken, or None."""
    return _pending.pop(0) if _pending else None


def attach(wake: Callable[[], None]) -> None:
    """Call ``wake`` now and after every signal from here on; the woken side drains with
    :func:`take`.  Every signal is appended before ``wake`` is called, so none can
    slip between the backlog and the new route, and the order is the order of arrival.
    """
    global _wake
    _wake = wake
    wake()


def detach() -> None:
    """Back to recording only (until the process exits, or :func:`uninstall`)."""
    global _wake
    _wake = None


def announce(stream: Any = None) -> None:
    """``daemon.starting``: one JSON line saying that signals are now handled."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    line = {"event": "daemon.starting", "level": "info", "timestamp": stamp, "pid": os.getpid()}
    out = sys.stdout if stream is None else stream
    try:
        out.write(json.dumps(line) + "\n")
        out.flush()
    except (OSError, ValueError):  # no usable stdout: the daemon still starts
        pass


def install_if_daemon() -> None:
    """The package's first line: capture the signals if this process is the daemon,
    and make its stdout and stderr best-effort (never blocking, never raising)."""
    if started_as_daemon() and install():
        from killswitch import logsink  # standard library only, like this module

        logsink.install_std_streams()
        announce()

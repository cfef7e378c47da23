"""Route the process's signals to the running event loop (the daemon's side of ``_early``).

:func:`routed_to` attaches a wake-up to the recording handlers that
``killswitch/_early.py`` installed at the package's first line (or installs
them, when ``serve()`` runs in a process that did not start as the daemon):
the signals recorded during start-up reach ``on_signal`` first, in the order
they arrived, then every later one as it comes.  ``on_signal`` runs in a loop
callback, never inside the signal handler itself.

Python runs signal handlers in the main thread, at the next bytecode.  A
signal the kernel delivers to another thread (the store's writer, a resolver
thread) would leave the main thread asleep in ``epoll_wait``; a wake-up fd,
drained by the loop, wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator

from killswitch import _early

__all__ = ["routed_to"]


@contextlib.contextmanager
def routed_to(loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> Iterator[bool]:
    """While open, each ``SIGUSR1``/``SIGTERM``/``SIGINT``/``SIGHUP`` calls ``on_signal``
    on ``loop``, in the order of arrival.

    Yields False (and routes nothing) outside the main thread, where Python
    cannot set signal handlers.  On exit the process goes back to recording
    (the daemon) or to the handlers it had before (an embedding program, tests).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    installed_here = _early.install()
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous_fd != -1:  # someone already wakes the loop (loop.add_signal_handler): keep theirs
        signal.set_wakeup_fd(previous_fd)
    else:
        loop.add_reader(reader.fileno(), _drain, reader)

    def drain() -> None:
        while (signum := _early.take()) is not None:
            on_signal(signum)

    def wake() -> None:
        loop.call_soon_threadsafe(drain)

    _early.attach(wake)
    try:
        yield True
    finally:
        _early.detach()
        if previous_fd == -1:
            loop.remove_reader(reader.fileno())
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, writer.fileno()):  # someone took it over since: theirs stays
                signal.set_wakeup_fd(current)
        reader.close()
        writer.close()
        if installed_here:
            _early.uninstall()


def _drain(reader: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while reader.recv(4096):
            pass

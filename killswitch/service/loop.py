"""The daemon's event loop: uvloop on Linux (CPython), asyncio's own elsewhere.

uvloop is a drop-in loop (signal handlers, UNIX sockets, subprocesses and
aiohttp behave as on asyncio) with a shorter path from a signal or a socket
read to a callback: in this project's benchmark it brought the dead-man p99
from 6.13 to 4.81 ms (LIBRARY-NOTES.md "uvloop"; re-measured in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` where uvloop is installed, else None (asyncio's loop)."""
    try:
        import uvloop
    except ImportError:  # not Linux/CPython: the dependency's marker left it out
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` names."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

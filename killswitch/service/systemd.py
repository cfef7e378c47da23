"""What the daemon tells systemd: readiness, ``STATUS=`` lines and watchdog pings.

``READY=1``/``RELOADING=1``/``STOPPING=1`` go out through :meth:`Service.ready`,
:meth:`Service.reloading` and :meth:`Service.stopping`, which log
``notify.failed`` when a datagram cannot be sent.  The ``STATUS=``
line follows the switch (``ARMED``, ``KILLING 412/500 confirmed, ~40 s left``, ``TRIPPED at
<time> by <source>``), with the state store's problem if it has one
(``TRIPPED; store corrupt: ...``), and is refreshed while a kill runs.  Watchdog pings stop
as soon as a watcher task is no longer running, so systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from killswitch.clock import Clock
from killswitch.kill.progress import format_eta
from killswitch.kill.switch import KillSwitch, State
from killswitch.log import get_logger
from killswitch.service.notify import Notifier, watchdog_loop

__all__ = ["STATUS_REFRESH", "Service"]

STATUS_REFRESH = 0.5  # seconds between STATUS= progress updates during a kill


class Service:
    def __init__(self, notifier: Notifier, switch: KillSwitch, clock: Clock) -> None:
        self.notifier = notifier
        self.switch = switch
        self.clock = clock
        self.tripped_at: float | None = None  # wall-clock time the last kill completed
        self.problem: Callable[[], str | None] = lambda: None  # appended to STATUS= when set
        self._killing = asyncio.Event()  # wakes the STATUS= progress loop
        self._status_sent: str | None = None
        self.store_health: Callable[[], dict[str, Any]] | None = None  # GET /status "store"
        self._log = get_logger()

    def ready(self) -> None:
        """``READY=1``: start-up, or a reload (applied or refused), is complete."""
        self._sent("READY=1", self.notifier.ready())

    def reloading(self) -> None:
        """``RELOADING=1``: a reload begins."""
        self._sent("RELOADING=1", self.notifier.reloading())

    def stopping(self) -> None:
        """``STOPPING=1``: a graceful stop begins."""
        self._sent("STOPPING=1", self.notifier.stopping())

    def _sent(self, what: str, sent: bool) -> None:
        if not sent:
            self.notify_failed(self.notifier.last_error, what)

    def notify_failed(self, error: OSError | None, what: str = "WATCHDOG=1") -> None:
        self._log.warning(
            "notify.failed", message=what, error=None if error is None else str(error)
        )

    def state_changed(self, state: State) -> None:
        if state is State.KILLING:
            self._killing.set()
        elif state is State.TRIPPED:
            self.tripped_at = self.clock.time()
        self.send_status()

    def send_status(self, *, force: bool = False) -> None:
        """``STATUS=`` the current line, unless systemd already has it."""
        line = self.status_line()
        if (force or line != self._status_sent) and self.notifier.status(line):
            self._status_sent = line

    def status_line(self) -> str:
        line = self._state_line()
        health = {"ok": True} if self.store_health is None else self.store_health()
        if not health["ok"]:
            line += f"; store {health['problem']}"
        problem = self.problem()
        return line if problem is None else f"{line}; {problem}"

    def _state_line(self) -> str:
        state = self.switch.state
        if state is State.KILLING:
            progress = self.switch.runner.progress_report()
            if progress is not None and progress["total"] > 0:
                eta = format_eta(progress["eta_s"], progress.get("eta_basis"))
                return f"KILLING {progress['confirmed']}/{progress['total']} confirmed, {eta}"
            return "KILLING"
        if state is State.TRIPPED and self.switch.last_kill is not None:
            source = self.switch.last_kill.get("source", "?")
            if self.tripped_at is None:
                return f"TRIPPED by {source}"
            at = datetime.fromtimestamp(self.tripped_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return f"TRIPPED at {at} by {source}"
        return state.value

    async def status_loop(self) -> None:
        """While a kill runs, refresh ``STATUS=`` with its progress (only when it changed)."""
        while True:
            if self.switch.state is State.KILLING:
                self.send_status()
                await self.clock.sleep(STATUS_REFRESH)
            else:
                self._killing.clear()
                await self._killing.wait()

    async def watchdog(
        self,
        tasks: Callable[[], dict[str, asyncio.Task[None]]],
        stopping: Callable[[], bool],
    ) -> None:
        """Ping the watchdog while every watcher runs; say which one died if the pings stop."""

        def healthy() -> bool:
            return all(not t.done() for t in tasks().values())

        await watchdog_loop(self.notifier, healthy, self.clock, on_failure=self.notify_failed)
        dead = sorted(name for name, task in tasks().items() if task.done())
        if dead and not stopping():
            self._log.critical("watchdog.stopped", dead=dead, note="systemd restarts the daemon")

"""The dead-man switch: no heartbeat for ``timeout`` seconds fires a kill.

The deadline is a point on the monotonic clock that each heartbeat moves; the
watcher sleeps until the deadline it saw, checks again on waking (and sleeps
on if a heartbeat moved it later meanwhile), and so fires after the deadline
and never before it.  Timers are only as precise as the loop's (uvloop's run
on whole milliseconds), so the watcher sleeps by timer until
:data:`~killswitch.clock.TIMER_SLACK` before the deadline, looks again, and
only if no heartbeat moved it sleeps the rest precisely (loop turns, serving
heartbeats in between): it fires within a loop turn of the deadline, and
spends that short spin only when no heartbeat came for almost ``timeout``.  A heartbeat
only ever moves the deadline later, so it does not wake the watcher (that
would cost a wake-up and two new timers per heartbeat, a quarter of the
daemon's idle CPU at 10 heartbeats a second); arming and reconfiguring do.
After firing it stays disarmed until the next heartbeat: one kill per loss of
heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from killswitch.clock import TIMER_SLACK, Clock, sleep_or_wake
from killswitch.log import get_logger

__all__ = ["DeadManSwitch"]


class DeadManSwitch:
    def __init__(
        self,
        timeout: float,
        clock: Clock,
        on_timeout: Callable[[float], None],
        *,
        enabled: bool = True,
        armed: bool = False,
    ) -> None:
        self.timeout = timeout
        self.enabled = enabled
        self.clock = clock
        self.on_timeout = on_timeout
        self.last_beat: float | None = None
        self.deadline: float | None = clock.monotonic() + timeout if armed else None
        self._armed_at = clock.monotonic() if armed else None
        self._moved = asyncio.Event()
        self._log = get_logger()
        self.fired = False  # fired since the last heartbeat

    def beat(self) -> None:
        """A heartbeat arrived: (re-)arm and move the deadline."""
        now = self.clock.monotonic()
        self.last_beat = now
        self.fired = False
        armed = self.deadline is not None
        self.deadline = now + self.timeout
        if not armed:  # the watcher waits for a deadline: wake it
            self._moved.set()
            if self.enabled:  # once per arming: the first heartbeat, or the first after a kill
                self._log.info("heartbeat.armed", timeout=self.timeout)

    def reconfigure(self, timeout: float, enabled: bool) -> None:
        """Apply a reloaded config; an armed deadline moves with the new timeout."""
        self.timeout = timeout
        self.enabled = enabled
        if self.deadline is not None:
            base = self.last_beat if self.last_beat is not None else self._armed_at
            assert base is not None
            self.deadline = base + timeout
        self._moved.set()

    def state(self) -> str:
        """The trigger's own state, in words an operator cannot misread."""
        if not self.enabled:
            return "off"
        if self.deadline is not None:
            return "watching"
        return "fired, waiting for heartbeats" if self.fired else "waiting for first heartbeat"

    def age(self) -> float | None:
        """Seconds since the last heartbeat, or None before the first."""
        if self.last_beat is None:
            return None
        return self.clock.monotonic() - self.last_beat

    async def run(self) -> None:
        """Watch the deadline until cancelled."""
        while True:
            deadline = self.deadline if self.enabled else None
            delay = None if deadline is None else deadline - self.clock.monotonic()
            if delay is None or delay > 0:
                self._moved.clear()
                if delay is not None and delay > TIMER_SLACK:
                    delay -= TIMER_SLACK  # then look again: a heartbeat may have moved it
                    await sleep_or_wake(self.clock, delay, self._moved)
                else:
                    await sleep_or_wake(self.clock, delay, self._moved, precisely=True)
                continue
            assert deadline is not None
            # The deadline has passed and no heartbeat moved it: fire once, disarm.
            base = self.last_beat if self.last_beat is not None else self._armed_at
            observed = self.clock.monotonic() - base if base is not None else self.timeout
            self.deadline = None
            self.fired = True
            self._log.error(
                "heartbeat.timeout",
                age=round(observed, 6),
                timeout=self.timeout,
                late_ms=round((self.clock.monotonic() - deadline) * 1000, 3),
            )
            self.on_timeout(observed)

"""The sentinel's judgement (contract §15): is the desk silent while we could have heard it?

Pure state, driven by what the sentinel's connection observes, on an injected
clock (every time here is the sentinel's monotonic clock):

- :meth:`Watch.probe_ok`: a probe the sentinel sent at ``sent`` came back to it
  through the server.  A chain of probes that each came back proves the link up
  and answering from the first probe's send time (``up_since``) to the last
  one's (``proven_until``).
- :meth:`Watch.link_lost`: a probe did not come back in time, the connection
  dropped, or the sentinel's own loop stalled: the chain breaks, the sentinel is
  ``blind`` (``sentinel.blind``) and nothing it did not hear counts against the desk.
- :meth:`Watch.alive`: a liveness message of the desk arrived (receipt time).

The desk is judged silent only over a proven window, from ``quiet_from`` to
``proven_until``: ``quiet_from`` is the last liveness if it came after the link
came up, else ``up_since`` + ``reconnect_grace``.  After an outage the sentinel
therefore waits a full ``timeout`` plus the desks' reconnect delay again, unless
it has heard the desk since (then the desk is not reconnecting).  Silent for
``timeout`` → fire (once; disarmed until the next liveness).  A leaving desk
stands the sentinel down (or, ``kill_on_leave``, fires).  A desk never seen
since start is ``sentinel.never_seen``, critical and no kill: a wrong desk name
or a sentinel started before its desk must page a human, not flatten a healthy
account.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from structlog.typing import FilteringBoundLogger

from killswitch.clock import Clock
from killswitch.cluster.liveness import Alive
from killswitch.config.model import SentinelConfig

__all__ = ["Mode", "Watch"]


class Mode(enum.StrEnum):
    STARTING = "starting"  # the desk not seen yet, within the first timeout
    WATCHING = "watching"
    STANDDOWN = "standdown"  # the desk left cleanly
    FIRED = "fired"  # killed; disarmed until the desk's next liveness
    NEVER_SEEN = "never_seen"


class Watch:
    """One watched desk: its liveness against the sentinel's proven link."""

    def __init__(
        self,
        config: SentinelConfig,
        clock: Clock,
        fire: Callable[[float, str], None],
        log: FilteringBoundLogger,
    ) -> None:
        self.config = config
        self.clock = clock
        self.fire = fire  # fire(silent_s, reason)
        self._log = log
        self.mode = Mode.STARTING
        self.up_since: float | None = None  # None: blind
        self.proven_until: float | None = None
        self.last_seen: float | None = None
        self.last: Alive | None = None
        self.blind_since: float | None = self.clock.monotonic()
        self.blind_reported = False  # start-up is not an outage worth an alert
        self.fired = 0

    @property
    def blind(self) -> bool:
        return self.up_since is None

    # ------------------------------------------------------------------ the link

    def probe_ok(self, sent: float) -> None:
        """A probe sent at ``sent`` came back: the link was up and answering then."""
        if self.up_since is None:
            self.up_since = sent
            if self.blind_reported and self.blind_since is not None:
                self._log.info(
                    "sentinel.link_restored",
                    desk=self.config.desk,
                    blind_s=round(self.clock.monotonic() - self.blind_since, 3),
                    waits_s=self.config.timeout + self.config.reconnect_grace,
                )
            self.blind_since, self.blind_reported = None, False
        if self.proven_until is None or sent > self.proven_until:
            self.proven_until = sent
        self.check()

    def link_lost(self, problem: str) -> None:
        """The link is not proven any more: blind until a fresh chain of probes."""
        if self.up_since is None and self.blind_reported:
            return
        self.up_since = None
        self.proven_until = None
        if self.blind_since is None:
            self.blind_since = self.clock.monotonic()
        self.blind_reported = True
        self._log.error(
            "sentinel.blind",
            desk=self.config.desk,
            problem=problem,
            last_seen_s=self.last_seen_s(),
            note="no kill while the sentinel cannot hear the bus",
        )

    # ------------------------------------------------------------------ the desk

    def alive(self, alive: Alive) -> None:
        self.last_seen = self.clock.monotonic()
        self.last = alive
        if alive.leaving:
            if self.mode is Mode.STANDDOWN or self.mode is Mode.FIRED:
                return
            if self.config.kill_on_leave:
                self._fire(0.0, f"desk {self.config.desk} left (kill_on_leave)")
                return
            self.mode = Mode.STANDDOWN
            self._log.warning(
                "sentinel.standdown",
                desk=self.config.desk,
                host=alive.host,
                seq=alive.seq,
                note="the desk stopped cleanly: no kill; watching again at its next liveness",
            )
            return
        if self.mode is not Mode.WATCHING:
            previous, self.mode = self.mode, Mode.WATCHING
            self._log.info(
                "sentinel.watching",
                desk=self.config.desk,
                host=alive.host,
                state=alive.state,
                seq=alive.seq,
                previous=previous.value,
                timeout=self.config.timeout,
            )

    def check(self) -> None:
        """Fire (or report never_seen) once the desk was silent for a proven ``timeout``."""
        if self.up_since is None or self.proven_until is None:
            return
        if self.mode not in (Mode.STARTING, Mode.WATCHING):
            return
        if self.last_seen is not None and self.last_seen >= self.up_since:
            quiet_from = self.last_seen  # heard since the link came up: not reconnecting
        else:  # not heard since: the desk may be reconnecting on its own, slower schedule
            quiet_from = self.up_since + self.config.reconnect_grace
        if self.proven_until - quiet_from < self.config.timeout:
            return
        if self.last_seen is None:
            self.mode = Mode.NEVER_SEEN
            self._log.critical(
                "sentinel.never_seen",
                desk=self.config.desk,
                waited_s=round(self.clock.monotonic() - self.up_since, 3),
                problem="no liveness from the watched desk since this sentinel started "
                "(a dead host, or a wrong sentinel.desk): not killing, a human must look",
            )
            return
        silent = self.clock.monotonic() - self.last_seen
        self._fire(silent, f"no liveness from {self.config.desk} for {silent:.3f}s")

    def _fire(self, silent: float, reason: str) -> None:
        self.mode = Mode.FIRED
        self.fired += 1
        self.fire(silent, reason)

    # ------------------------------------------------------------------ what it shows

    def last_seen_s(self) -> float | None:
        if self.last_seen is None:
            return None
        return round(self.clock.monotonic() - self.last_seen, 3)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "desk": self.config.desk,
            "state": self.mode.value,
            "blind": self.blind,
            "last_seen_s": self.last_seen_s(),
            "timeout": self.config.timeout,
            "kill_on_leave": self.config.kill_on_leave,
            "desk_state": None if last is None else last.state,
            "desk_host": None if last is None else last.host,
            "fired": self.fired,
        }

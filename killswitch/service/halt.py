"""Halting the trading units (contract §14), the daemon's side: a marker file, no privilege.

The daemon stops nothing itself (its unit keeps its exposure score).  When a
kill starts — in the state callback, which runs right after the kill's first
``cancel_all`` requests have left — it writes ``halt`` in its own state
directory; it removes it at ``reset``.  systemd does the rest:
``killswitch-halt.path`` (``PathExists=``) starts ``killswitch-halt.service``
(root), which stops the units named in ``[halt] units``, writes what happened
to ``halt.result`` beside the marker, and stays until the marker is gone; the
drop-in ``trading-unit.d/killswitch.conf`` fails a trading unit's start while
the marker exists.  The daemon reads ``halt.result`` (a root-written file in
its own directory: nothing more to grant) and logs ``halt.stopped`` or
``halt.failed``.  The marker lives in the state directory, so it survives a
restart and a reboot as the latch does.

Without systemd (``INVOCATION_ID`` unset: ``killswitch run`` by hand) the halt
is off and ``status`` says so.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from killswitch.clock import Clock
from killswitch.kill.switch import State
from killswitch.log import get_logger
from killswitch.service.halt_helper import MARKER, RESULT

__all__ = ["RESULT_TIMEOUT", "Halt"]
RESULT_TIMEOUT = 10.0  # seconds to wait for killswitch-halt.service's answer
POLL = 0.02  # seconds between reads of the result while waiting for it


class Halt:
    def __init__(
        self,
        units: Callable[[], tuple[str, ...]],
        directory: Path,
        clock: Clock,
        *,
        systemd: bool | None = None,
    ) -> None:
        self.units = units
        self.marker = directory / MARKER
        self.result = directory / RESULT
        self.clock = clock
        self.systemd = "INVOCATION_ID" in os.environ if systemd is None else systemd
        self.state = "armed"
        self.kill_id: str | None = None
        self.stopped: list[str] = []
        self.failed: list[dict[str, str]] = []
        self._since = 0.0
        self._wake = asyncio.Event()
        self._log = get_logger()

    @property
    def enabled(self) -> bool:
        return self.systemd and bool(self.units())

    def state_changed(self, state: State, kill_id: str | None) -> None:
        """KILLING: write the marker; ARMED (a reset): remove it.  TRIPPED keeps it."""
        if not self.enabled:
            return
        if state is State.KILLING:
            self._trip(kill_id)
        elif state is State.ARMED:
            self._clear()

    def restore(self, state: State, kill_id: str | None) -> None:
        """At start: a latched switch keeps (or gets back) its marker; an armed one has none."""
        if not self.enabled:
            return
        if state is State.ARMED:
            self._clear()
        elif not self.marker.exists():
            self._trip(kill_id)
        else:
            self.state = "stopped"  # the units were stopped by an earlier daemon

    def _trip(self, kill_id: str | None) -> None:
        self.kill_id = kill_id or "latched"
        self.stopped, self.failed = [], []
        self._since = self.clock.monotonic()
        body = json.dumps({"kill_id": self.kill_id, "at": self.clock.time()})
        tmp = self.marker.with_name(f".{MARKER}.tmp")
        try:
            tmp.write_text(body)
            os.replace(tmp, self.marker)
        except OSError as exc:
            self._failed_all(f"cannot write {self.marker}: {exc.strerror}")
            return
        self.state = "stopping"
        self._wake.set()

    def _clear(self) -> None:
        for path in (self.marker, self.result):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self._log.error("halt.clear_failed", path=str(path), problem=exc.strerror)
        self.state = "armed"
        self.kill_id = None
        self._wake.clear()

    def _failed_all(self, problem: str) -> None:
        self.state = "failed"
        self.failed = [{"unit": unit, "problem": problem} for unit in self.units()]
        for unit in self.units():
            self._log.critical("halt.failed", unit=unit, problem=problem, kill_id=self.kill_id)

    async def run(self) -> None:
        """Wait for each trip's answer from ``killswitch-halt.service``, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            kill_id = self.kill_id
            deadline = self._since + RESULT_TIMEOUT
            answer = None
            while self.state == "stopping" and self.kill_id == kill_id:
                answer = self._read_result(kill_id)
                if answer is not None or self.clock.monotonic() >= deadline:
                    break
                await self.clock.sleep(POLL)
            if self.state != "stopping" or self.kill_id != kill_id:
                continue  # reset (or a new trip) meanwhile
            if answer is None:
                self._failed_all(
                    f"no answer from killswitch-halt.service within {RESULT_TIMEOUT:g} s"
                    " (is killswitch-halt.path enabled?)"
                )
                continue
            self._answered(answer)

    def _read_result(self, kill_id: str | None) -> dict[str, Any] | None:
        try:
            answer = json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None  # not there yet (or half written: it is renamed into place)
        if not isinstance(answer, dict) or answer.get("kill_id") != kill_id:
            return None
        return answer

    def _answered(self, answer: dict[str, Any]) -> None:
        self.stopped = [u for u in answer.get("stopped", []) if isinstance(u, str)]
        self.failed = [
            {"unit": str(f.get("unit")), "problem": str(f.get("problem"))}
            for f in answer.get("failed", [])
            if isinstance(f, dict)
        ]
        took = round((self.clock.monotonic() - self._since) * 1000, 1)
        if self.stopped:
            self._log.warning(
                "halt.stopped", units=self.stopped, kill_id=self.kill_id, duration_ms=took
            )
        for failure in self.failed:
            self._log.critical("halt.failed", kill_id=self.kill_id, **failure)
        self.state = "failed" if self.failed else "stopped"

    def status(self) -> dict[str, Any]:
        """``halt`` in ``GET /status``."""
        units = list(self.units())
        if not units:
            return {"state": "off", "why": "no [halt] units", "units": []}
        if not self.systemd:
            return {
                "state": "off",
                "why": "not under systemd (killswitch run by hand)",
                "units": units,
            }
        return {
            "state": self.state,
            "units": units,
            "marker": str(self.marker),
            "stopped": self.stopped,
            "failed": self.failed,
        }

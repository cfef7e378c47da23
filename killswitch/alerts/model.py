"""An alert: one event, for one receiver, with its stable ``dedup_key`` (contract §16)."""

from __future__ import annotations

import enum
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

__all__ = ["Action", "Alert", "Severity", "severity_of"]


class Severity(enum.StrEnum):
    """PagerDuty's severities; ``critical`` alerts are never the ones a full queue drops."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Action(enum.StrEnum):
    TRIGGER = "trigger"
    RESOLVE = "resolve"  # PagerDuty only: a reset closes the kill's incidents


# The event's own level, except where the level says less than a pager should: a kill
# that fired, got stuck or left the account exposed wakes someone; a reset informs.
_BY_EVENT = {
    "trigger.fired": Severity.CRITICAL,
    "kill.stuck": Severity.CRITICAL,
    "kill.abandoned": Severity.CRITICAL,
    "halt.failed": Severity.CRITICAL,
    "guard.swept": Severity.ERROR,
    "exchange.rejected": Severity.ERROR,
    "switch.reset": Severity.INFO,
}
_BY_LEVEL = {
    "critical": Severity.CRITICAL,
    "error": Severity.ERROR,
    "warning": Severity.WARNING,
}


def severity_of(event: str, fields: dict[str, Any]) -> Severity:
    """How urgent the event is (``kill.completed``: critical unless flat with no position)."""
    if event == "kill.completed":
        calm = fields.get("flat") is True and not fields.get("positions_open")
        return Severity.WARNING if calm else Severity.CRITICAL
    known = _BY_EVENT.get(event)
    if known is not None:
        return known
    return _BY_LEVEL.get(str(fields.get("level", "")), Severity.INFO)


@dataclass
class Alert:
    receiver: str
    dedup_key: str
    event: str
    kill_id: str | None
    severity: Severity
    fields: dict[str, Any]  # the event as logged (redacted)
    created_at: float  # wall clock
    action: Action = Action.TRIGGER
    attempts: int = 0
    stored: Future[Any] | None = None  # the insert into the state store, once queued there
    in_flight: bool = False

    @property
    def ident(self) -> tuple[str, str, str]:
        return self.receiver, self.dedup_key, self.action.value

    @property
    def critical(self) -> bool:
        return self.severity is Severity.CRITICAL

    def describe(self) -> dict[str, Any]:
        """What ``alert.*`` events say about it (never the receiver's URL)."""
        return {
            "receiver": self.receiver,
            "alert_event": self.event,
            "dedup_key": self.dedup_key,
            "action": self.action.value,
            "severity": self.severity.value,
            "kill_id": self.kill_id,
        }

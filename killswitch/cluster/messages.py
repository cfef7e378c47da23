"""Trigger messages ``{"id", "origin", "reason", "sent_at"}``: validated, encoded, remembered.

Every message is validated (:func:`parse_trigger` raises :class:`InvalidMessage`
saying what is wrong); :class:`SeenIds` remembers the ids already obeyed, so a
message seen twice is a duplicate, never a second kill.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from killswitch.clock import Clock

__all__ = [
    "MAX_MESSAGE",
    "InvalidMessage",
    "SeenIds",
    "TriggerMessage",
    "decode_object",
    "encode_trigger",
    "epoch_ms",
    "new_trigger",
    "parse_trigger",
]

MAX_MESSAGE = 16 * 1024  # a trigger message is a few hundred bytes
MAX_ID, MAX_ORIGIN, MAX_REASON = 128, 200, 500
SEEN_LIMIT = 100_000  # trigger ids remembered at most (each for 2 x max_age + 60 s)


class InvalidMessage(ValueError):
    """A trigger message that is not ``{"id", "origin", "reason", "sent_at"}``."""


@dataclass(frozen=True)
class TriggerMessage:
    id: str
    origin: str
    reason: str
    sent_at: int  # epoch ms, the sender's clock


def decode_object(data: bytes, limit: int) -> dict[str, Any]:
    """One bus message as a JSON object of at most ``limit`` bytes, or :class:`InvalidMessage`."""
    if len(data) > limit:
        raise InvalidMessage(f"larger than {limit} bytes")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidMessage("not JSON") from None
    if not isinstance(body, dict):
        raise InvalidMessage("expected a JSON object")
    return body


def epoch_ms(body: Mapping[str, Any], name: str) -> int:
    """A finite, plausible epoch-milliseconds field of a bus message."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{name}: expected epoch milliseconds")
    if not math.isfinite(value) or not 0 < value < 10**14:
        raise InvalidMessage(f"{name}: out of range")
    return int(value)


def _text(body: Mapping[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidMessage(f"{name}: expected a non-empty string")
    if len(value) > limit:
        raise InvalidMessage(f"{name}: longer than {limit} characters")
    if not value.isprintable():
        raise InvalidMessage(f"{name}: contains control characters")
    return value


def parse_trigger(data: bytes) -> TriggerMessage:
    """Validate one trigger message; :class:`InvalidMessage` says what is wrong."""
    body = decode_object(data, MAX_MESSAGE)
    return TriggerMessage(
        id=_text(body, "id", MAX_ID),
        origin=_text(body, "origin", MAX_ORIGIN),
        reason=_text(body, "reason", MAX_REASON),
        sent_at=epoch_ms(body, "sent_at"),
    )


def encode_trigger(message: TriggerMessage) -> bytes:
    return json.dumps(
        {
            "id": message.id,
            "origin": message.origin,
            "reason": message.reason,
            "sent_at": message.sent_at,
        }
    ).encode()


def new_trigger(origin: str, reason: str, now: float) -> TriggerMessage:
    """A fresh trigger message sent at ``now`` (epoch seconds)."""
    return TriggerMessage(uuid.uuid4().hex, origin, reason[:MAX_REASON], int(now * 1000))


class SeenIds:
    """Trigger ids already obeyed, each kept ``keep`` seconds (monotonic), at most ``limit``."""

    def __init__(self, keep: float, clock: Clock, limit: int = SEEN_LIMIT) -> None:
        self.keep = keep
        self.clock = clock
        self.limit = limit
        self._ids: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def get(self, trigger_id: str) -> tuple[str | None] | None:
        """``(kill_id,)`` if the id was seen, else None."""
        self._expire()
        found = self._ids.get(trigger_id)
        return None if found is None else (found[1],)

    def add(self, trigger_id: str, kill_id: str | None) -> None:
        self._ids[trigger_id] = (self.clock.monotonic(), kill_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def _expire(self) -> None:
        horizon = self.clock.monotonic() - self.keep
        while self._ids:
            at = next(iter(self._ids.values()))[0]
            if at >= horizon:
                break
            self._ids.popitem(last=False)

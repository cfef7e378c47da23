"""Agreement (contract §15): a desk that comes back after its sentinel killed its account
goes ``TRIPPED`` too.

Core NATS keeps no messages, and a desk that was frozen (SIGSTOP, a hypervisor
pause) never reconnects: its TCP connection simply resumes.  So the desk learns
the verdict two ways, whichever comes first:

- it asks ``P.<firm>.<desk>.sentinel`` (request/reply) at every connection and
  reconnection; the sentinel answers ``killed: true|false``;
- while the sentinel's switch is ``KILLING`` or ``TRIPPED`` it publishes its
  verdict on ``P.<firm>.<desk>.killed`` every :data:`VERDICT_EVERY` seconds.

A verdict ``{"sentinel", "desk", "killed", "kill_id", "source", "state",
"sent_at"}`` with ``killed: true`` fires the desk's own switch once per sentinel
``kill_id`` (source ``sentinel``): a normal kill, so the desk proves the account
flat itself and latches.  A verdict older than ``cluster.max_age`` is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from killswitch.clock import Clock
from killswitch.cluster.messages import InvalidMessage, decode_object, epoch_ms
from killswitch.kill.switch import TriggerOutcome
from killswitch.log import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["VERDICT_EVERY", "DeskAgreement", "Verdict", "encode_verdict", "parse_verdict"]

VERDICT_EVERY = 0.5  # seconds between a tripped sentinel's verdicts (the 2 s bound, with room)
ASK_TIMEOUT = 1.0  # seconds the desk waits for its sentinel's answer
MAX_VERDICT = 4096


@dataclass(frozen=True)
class Verdict:
    sentinel: str  # the sentinel's origin, desk@host
    desk: str  # the watched desk
    killed: bool
    kill_id: str | None
    source: str | None  # what fired the sentinel's kill (sentinel, or an operator there)
    state: str
    sent_at: int  # epoch ms


def encode_verdict(verdict: Verdict) -> bytes:
    return json.dumps(
        {
            "sentinel": verdict.sentinel,
            "desk": verdict.desk,
            "killed": verdict.killed,
            "kill_id": verdict.kill_id,
            "source": verdict.source,
            "state": verdict.state,
            "sent_at": verdict.sent_at,
        }
    ).encode()


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
        raise InvalidMessage(f"{name}: expected a short string or null")
    return value


def parse_verdict(data: bytes) -> Verdict:
    """Validate one verdict; :class:`InvalidMessage` says what is wrong."""
    body = decode_object(data, MAX_VERDICT)
    sentinel, desk = _optional_text(body, "sentinel"), _optional_text(body, "desk")
    state = _optional_text(body, "state")
    if sentinel is None or desk is None or state is None:
        raise InvalidMessage("sentinel, desk and state are required")
    killed = body.get("killed")
    if not isinstance(killed, bool):
        raise InvalidMessage("killed: expected true or false")
    sent_at = epoch_ms(body, "sent_at")
    kill_id = _optional_text(body, "kill_id")
    if killed and kill_id is None:
        raise InvalidMessage("kill_id: required when killed")
    source = _optional_text(body, "source")
    return Verdict(sentinel, desk, killed, kill_id, source, state, sent_at)


class DeskAgreement:
    """The desk's side: obey its sentinel's verdict, once per sentinel kill."""

    def __init__(
        self,
        desk: str,
        ask_subject: str,
        max_age: float,
        clock: Clock,
        fire: Callable[..., TriggerOutcome],
    ) -> None:
        self.desk = desk
        self.ask_subject = ask_subject
        self.max_age = max_age
        self.clock = clock
        self.fire = fire  # the host's sentinel trigger: fire(reason, **detail)
        self.obeyed: set[str] = set()
        self.last: dict[str, Any] | None = None
        self._log = get_logger()

    def receive(self, data: bytes, how: str) -> TriggerOutcome | None:
        """One verdict (``how``: ``broadcast`` or ``answer``); the trigger's outcome, if any."""
        try:
            verdict = parse_verdict(data)
        except InvalidMessage as exc:
            self._log.warning("sentinel.verdict_invalid", how=how, problem=str(exc))
            return None
        if verdict.desk != self.desk or not verdict.killed or verdict.kill_id is None:
            return None
        age = self.clock.time() - verdict.sent_at / 1000
        if abs(age) > self.max_age:
            self._log.warning(
                "sentinel.verdict_stale", how=how, age=round(age, 3), kill_id=verdict.kill_id
            )
            return None
        if verdict.kill_id in self.obeyed:
            return None
        self.obeyed.add(verdict.kill_id)
        outcome = self.fire(
            f"the sentinel {verdict.sentinel} killed this desk's account",
            sentinel=verdict.sentinel,
            sentinel_kill_id=verdict.kill_id,
            sentinel_source=verdict.source,
            learned_by=how,
        )
        self.last = {
            "sentinel": verdict.sentinel,
            "kill_id": verdict.kill_id,
            "learned_by": how,
            "outcome": outcome.value,
        }
        return outcome

    async def ask(self, nc: NatsClient) -> None:
        """At a (re)connection: did the sentinel kill us while we were away?"""
        import nats.errors

        try:
            msg = await nc.request(self.ask_subject, b"", timeout=ASK_TIMEOUT)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return  # no sentinel, or none up: the broadcast covers a later one
        except Exception as exc:  # never let a failed ask end the connection task
            self._log.info("sentinel.ask_failed", error=type(exc).__name__)
            return
        self.receive(msg.data, "answer")

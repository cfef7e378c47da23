"""Obeying a trigger message (contract §11): validate, decide, fire, and answer when.

:class:`Obedience` is the part of :class:`~killswitch.cluster.connection.Cluster`
that judges one message: garbage, a stale message (older than ``max_age``) or an
id already seen is an event and a refusal, never a kill; otherwise the host's
switch fires (source ``cluster``) and the reply ``{"desk", "host", "accepted",
"kill_id"}`` waits until the kill's first ``cancel_all`` has left.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter

from killswitch.clock import Clock
from killswitch.cluster.messages import InvalidMessage, SeenIds, parse_trigger
from killswitch.cluster.settings import ClusterSettings
from killswitch.kill.switch import TriggerOutcome
from killswitch.log import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["Decision", "Obedience", "TriggerHost"]


class TriggerHost(Protocol):
    def cluster_trigger(self, reason: str, **detail: Any) -> tuple[TriggerOutcome, str | None]: ...
    def cancel_sent(self, kill_id: str) -> asyncio.Future[None]: ...


@dataclass(frozen=True)
class Decision:
    """What to answer a trigger message: at once (``reply``), or once ``kill_id`` has sent."""

    reply: dict[str, Any]
    wait_for: str | None = None


class Obedience:
    """Trigger messages judged and obeyed; the ids seen, the last trigger, kills starting."""

    def __init__(
        self, settings: ClusterSettings, host: TriggerHost, clock: Clock, messages: Counter
    ) -> None:
        self.settings = settings
        self.config = settings.config
        self.host = host
        self.clock = clock
        self.m_messages = messages
        self.seen = SeenIds(2 * self.config.max_age + 60.0, clock)
        self.last_trigger: dict[str, Any] | None = None
        self.starting: set[str] = set()  # kills a broadcast started, first cancel_all not yet sent
        self._log = get_logger()

    def receive(self, data: bytes, scope: str) -> Decision:
        """Validate and obey one trigger message; what to reply, and when."""
        try:
            message = parse_trigger(data)
        except InvalidMessage as exc:
            self.m_messages.labels("invalid").inc()
            self._log.warning("cluster.trigger_invalid", scope=scope, problem=str(exc))
            return self._refuse(f"invalid trigger message: {exc}")
        age = self.clock.time() - message.sent_at / 1000
        fields = {"trigger_id": message.id, "origin": message.origin, "scope": scope}
        if abs(age) > self.config.max_age:
            self.m_messages.labels("stale").inc()
            self._log.warning(
                "cluster.trigger_stale", **fields, age=round(age, 3), max_age=self.config.max_age
            )
            return self._refuse(
                f"stale: sent {age:.1f} s ago, max_age {self.config.max_age:g} s",
                trigger_id=message.id,
            )
        seen = self.seen.get(message.id)
        if seen is not None:
            self.m_messages.labels("duplicate").inc()
            self._log.warning("cluster.trigger_duplicate", **fields)
            return self._refuse(
                "duplicate trigger id: already obeyed", kill_id=seen[0], trigger_id=message.id
            )
        outcome, kill_id = self.host.cluster_trigger(message.reason, **fields)
        self.seen.add(message.id, kill_id)
        self.m_messages.labels(outcome.value).inc()
        self.last_trigger = {
            **fields,
            "reason": message.reason,
            "sent_at": message.sent_at,
            "received_at": round(self.clock.time(), 3),
            "outcome": outcome.value,
            "kill_id": kill_id,
        }
        if outcome in (TriggerOutcome.STARTED, TriggerOutcome.COALESCED) and kill_id is not None:
            reply = self._reply(True, kill_id, outcome=outcome.value, trigger_id=message.id)
            return Decision(reply, wait_for=kill_id)
        if outcome is TriggerOutcome.STOPPING:  # recorded at once; its send may never come
            note = "the daemon is stopping: the kill is recorded and resumes at the next start"
            return Decision(
                self._reply(True, kill_id, outcome=outcome.value, trigger_id=message.id, note=note)
            )
        return self._refuse(f"trigger {outcome.value}", kill_id=kill_id, trigger_id=message.id)

    def _reply(self, accepted: bool, kill_id: str | None, **extra: Any) -> dict[str, Any]:
        return {
            "desk": self.settings.desk,
            "host": self.settings.host,
            "accepted": accepted,
            "kill_id": kill_id,
            **extra,
        }

    def _refuse(self, why: str, kill_id: str | None = None, **extra: Any) -> Decision:
        return Decision(self._reply(False, kill_id, why=why, **extra))

    async def answer(self, msg: Msg, decision: Decision) -> None:
        """Reply once the kill's first cancel_all is on the wire (bounded by max_age)."""
        reply = decision.reply
        if decision.wait_for is not None:
            self.starting.add(decision.wait_for)
            try:
                async with asyncio.timeout(self.config.max_age):
                    await self.host.cancel_sent(decision.wait_for)
            except TimeoutError:
                reply = {**reply, "on_wire": False, "why": "no cancel_all sent yet"}
            finally:
                self.starting.discard(decision.wait_for)
        if msg.reply:
            try:
                await msg.respond(json.dumps(reply).encode())
            except Exception as exc:  # a lost reply must not end the connection task
                self._log.warning("cluster.reply_failed", error=type(exc).__name__)
                return
        self._log.info(
            "cluster.acknowledged",
            trigger_id=reply.get("trigger_id"),
            accepted=reply["accepted"],
            kill_id=reply["kill_id"],
            why=reply.get("why"),
            replied=bool(msg.reply),
        )

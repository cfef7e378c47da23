"""Liveness (contract §15): the subjects, the message, and the desk's publisher.

Every desk publishes ``P.<firm>.<desk>.alive`` every ``cluster.liveness_interval``:
``{"desk", "host", "state", "seq", "sent_at", "leaving"}``; on a clean stop a last
one with ``leaving: true``.  The publisher is a task on the daemon's own event
loop (never a thread): when the loop is frozen or dead, the messages stop, which
is exactly what a sentinel listens for.  It only ever calls ``nc.publish`` (a
buffer append) and never waits for the server, so it cannot delay anything else;
nothing on a kill's path waits for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from killswitch.clock import Clock
from killswitch.cluster.messages import InvalidMessage, decode_object, epoch_ms
from killswitch.config.model import ClusterConfig
from killswitch.log import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = [
    "Alive",
    "LivenessPublisher",
    "SentinelSubjects",
    "encode_alive",
    "parse_alive",
]

MAX_ALIVE = 4096  # an alive message is ~150 bytes
LEAVE_FLUSH = 1  # seconds a clean stop waits for the server to take the last message


@dataclass(frozen=True)
class SentinelSubjects:
    """The §15 subjects of one watched desk (``P`` = ``subject_prefix``).

    ``alive``: the desk's liveness; ``ask``: the desk asks (request/reply) whether
    its sentinel killed its account; ``verdict``: the sentinel repeats its kill
    while tripped (core NATS keeps nothing); ``probe``: the sentinel's own subject,
    on which it proves its link by messages that must come back to it.
    """

    alive: str
    ask: str
    verdict: str

    @classmethod
    def of(cls, config: ClusterConfig, desk: str) -> SentinelSubjects:
        base = f"{config.subject_prefix}.{config.firm}.{desk}"
        return cls(f"{base}.alive", f"{base}.sentinel", f"{base}.killed")

    @staticmethod
    def probe(config: ClusterConfig, own_desk: str) -> str:
        return f"{config.subject_prefix}.{config.firm}.{own_desk}.probe"


@dataclass(frozen=True)
class Alive:
    desk: str
    host: str
    state: str
    seq: int
    sent_at: int  # epoch ms, the desk's clock (shown, never used for timing)
    leaving: bool


def encode_alive(alive: Alive) -> bytes:
    return json.dumps(
        {
            "desk": alive.desk,
            "host": alive.host,
            "state": alive.state,
            "seq": alive.seq,
            "sent_at": alive.sent_at,
            "leaving": alive.leaving,
        }
    ).encode()


def parse_alive(data: bytes) -> Alive:
    """Validate one liveness message; :class:`InvalidMessage` says what is wrong."""
    body = decode_object(data, MAX_ALIVE)
    text: dict[str, str] = {}
    for name in ("desk", "host", "state"):
        value = body.get(name)
        if not isinstance(value, str) or not value or len(value) > 200:
            raise InvalidMessage(f"{name}: expected a short non-empty string")
        text[name] = value
    seq, leaving = body.get("seq"), body.get("leaving", False)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidMessage("seq: expected a whole number")
    sent_at = epoch_ms(body, "sent_at")
    if not isinstance(leaving, bool):
        raise InvalidMessage("leaving: expected true or false")
    return Alive(text["desk"], text["host"], text["state"], seq, sent_at, leaving)


class LivenessPublisher:
    """The desk's ``alive`` messages, one every ``interval``, from a task on its loop."""

    def __init__(
        self,
        config: ClusterConfig,
        desk: str,
        host: str,
        state: Callable[[], str],
        clock: Clock,
    ) -> None:
        self.subject = SentinelSubjects.of(config, desk).alive
        self.interval = config.liveness_interval
        self.desk = desk
        self.host = host
        self.state = state
        self.clock = clock
        self.seq = 0
        self.left = False
        self._log = get_logger()

    def message(self, *, leaving: bool = False) -> bytes:
        self.seq += 1
        return encode_alive(
            Alive(
                self.desk,
                self.host,
                self.state(),
                self.seq,
                int(self.clock.time() * 1000),
                leaving,
            )
        )

    async def run(self, nc: NatsClient) -> None:
        """Publish while connected, until cancelled (the connection's session ends).

        A message is skipped while nats-py is reconnecting: one buffered and flushed
        later would say "alive" about a moment long gone.  The schedule is kept on
        the monotonic clock, so a late turn does not shift the ones after it.
        """
        next_at = self.clock.monotonic()
        while not self.left:
            if nc.is_connected:
                await nc.publish(self.subject, self.message())
            next_at += self.interval
            now = self.clock.monotonic()
            if next_at < now:  # the loop was frozen or busy: start the schedule afresh
                next_at = now + self.interval
            await self.clock.sleep(next_at - now)

    async def leave(self, nc: NatsClient | None) -> bool:
        """A clean stop: the last message, ``leaving: true``, flushed (at most 1 s)."""
        self.left = True
        if nc is None or not nc.is_connected:
            self._log.warning("liveness.leave_unsent", reason="not connected to NATS")
            return False
        try:
            await nc.publish(self.subject, self.message(leaving=True))
            # nc.flush(timeout) may leave the client deaf (cluster/flush.py); harmless
            # here: the connection is closed right after this last message.
            await nc.flush(timeout=LEAVE_FLUSH)
        except Exception as exc:  # the stop goes on; the sentinel will see silence instead
            self._log.warning("liveness.leave_unsent", reason=type(exc).__name__)
            return False
        self._log.info("liveness.left", subject=self.subject, seq=self.seq)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "interval": self.interval,
            "seq": self.seq,
            "left": self.left,
        }

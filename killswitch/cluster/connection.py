"""Firm-wide triggers over NATS (contract §11): optional, and never in the way.

Subjects (``P`` = ``subject_prefix``): ``P.<firm>.trigger`` (every desk),
``P.<firm>.<desk>.trigger`` (this desk), ``P.<firm>.<desk>.events`` (every event
this desk logs, the same JSON line as stdout) and ``P.<firm>.status``
(request/reply: the ``GET /status`` body plus ``desk`` and ``host``).

A trigger message ``{"id", "origin", "reason", "sent_at"}`` is the trigger
source ``cluster``.  Every message is validated; garbage, a stale message
(older than ``max_age``) or an id already seen is an event, never a crash and
never a kill.  The reply ``{"desk", "host", "accepted", "kill_id"}`` is sent
once the kill's first ``cancel_all`` has left (the daemon's ``cancel_sent``
future), or at once with ``accepted: false`` and ``why`` (the judging is
:mod:`killswitch.cluster.obey`'s).  On the same connection the desk publishes
its liveness and hears its sentinel's verdict (:mod:`~killswitch.cluster.liveness`,
:mod:`~killswitch.cluster.verdict`, contract §15).

NATS down, slow or unreachable changes nothing locally: the connection lives
in one task of the daemon's task group that retries forever; events wait in a
bounded buffer (the overflow is counted, never waited for); a local kill never
waits for NATS.  nats-py is imported only when ``[cluster]`` is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from killswitch.clock import Clock
from killswitch.cluster.flush import PatientFlush
from killswitch.cluster.liveness import LivenessPublisher, SentinelSubjects
from killswitch.cluster.messages import encode_trigger, new_trigger
from killswitch.cluster.obey import Decision, Obedience
from killswitch.cluster.settings import (
    ClusterSettings,
    InsecureConnection,
    connect_options,
    is_tls,
    server_label,
    wants_tls,
)
from killswitch.cluster.verdict import DeskAgreement
from killswitch.kill.switch import State, TriggerOutcome
from killswitch.log import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

__all__ = ["Cluster", "ClusterHost", "Decision"]

EVENT_BUFFER = 10_000  # event lines held while NATS is slow or away; the rest are counted
RECONNECT_WAIT = 1.0  # nats-py's wait between attempts at one server
RETRY_MAX = 30.0  # our own backoff cap if a whole connection attempt fails
EVENTS_IN_FLIGHT = 64 * 1024  # event bytes handed to nats-py before waiting for the server
FLUSH_TIMEOUT = 5  # seconds
STATUS_DEFER = 1.0  # a status request waits at most this long for a starting kill's first send
CONNECT_FAILED_EVERY = 60.0  # cluster.connect_failed at most once a minute (+ suppressed)


# --------------------------------------------------------------------------- the daemon side


class ClusterHost(Protocol):
    """What the cluster needs from the daemon."""

    def cluster_trigger(self, reason: str, **detail: Any) -> tuple[TriggerOutcome, str | None]: ...
    def cancel_sent(self, kill_id: str) -> asyncio.Future[None]: ...
    def status(self) -> dict[str, Any]: ...
    def switch_state(self) -> str: ...
    def sentinel_trigger(self, reason: str, **detail: Any) -> TriggerOutcome: ...


class Cluster:
    """The NATS side of one daemon: a task that connects, subscribes, obeys and publishes."""

    def __init__(
        self,
        settings: ClusterSettings,
        host: ClusterHost,
        clock: Clock,
        registry: CollectorRegistry | None = None,
    ) -> None:
        import nats  # noqa: F401 - paid during start-up, never on a trigger's path

        self.settings = settings
        self.config = settings.config
        self.subjects = settings.subjects
        self.host = host
        self.clock = clock
        self._log = get_logger()
        self._events: deque[str] = deque()
        self._outbox: deque[bytes] = deque()  # our own broadcasts (propagate), sent first
        self._dropped = 0
        self._dropped_total = 0
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._nc: NatsClient | None = None
        self._subscribed: list[str] = []
        self._connect_failures = 0
        self._connect_failed_logged = -math.inf
        self._sessions = 0  # connections made since run() last looked
        self._check_tls_failed = False  # a reconnection came back unencrypted
        self._tls = wants_tls(self.config)
        # Liveness and the sentinel's verdict (contract §15): killswitch/cluster/liveness.py
        # and verdict.py; this class only runs them on its connection.
        self.liveness = LivenessPublisher(
            self.config, settings.desk, settings.host, host.switch_state, clock
        )
        self.sentinel_subjects = SentinelSubjects.of(self.config, settings.desk)
        self.agreement = DeskAgreement(
            settings.desk,
            self.sentinel_subjects.ask,
            self.config.max_age,
            clock,
            host.sentinel_trigger,
        )
        self._reconnected = asyncio.Event()
        self._flush = PatientFlush()  # never nc.flush(timeout): it can leave the client deaf
        r = registry if registry is not None else CollectorRegistry()
        self.m_connected = Gauge(
            "killswitch_cluster_connected", "1 while connected to NATS", registry=r
        )
        self.m_messages = Counter(
            "killswitch_cluster_messages",
            "Cluster trigger messages by outcome",
            ["outcome"],
            registry=r,
        )
        self.obey = Obedience(settings, host, clock, self.m_messages)
        self.m_dropped = Counter(
            "killswitch_cluster_events_dropped",
            "Event lines not published because the buffer was full",
            registry=r,
        )

    # ------------------------------------------------------------------ local side

    def tap(self, line: str) -> None:
        """Every rendered event line (the log's tap): buffer it, never wait."""
        if not line.startswith("{"):
            return  # log.format = "console": the events subject carries JSON only
        if len(self._events) >= EVENT_BUFFER:
            self._dropped += 1
            return
        self._events.append(line)
        self._poke()

    def _poke(self) -> None:
        if threading.get_ident() == self._thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def state_changed(self, state: State, why: str) -> None:
        """``propagate``: a local kill (not one a broadcast started) is broadcast firm-wide."""
        if not self.config.propagate or state is not State.KILLING:
            return
        if why.split(":", 1)[0] == "cluster":
            return  # never re-broadcast a broadcast: no storms
        message = new_trigger(
            self.settings.origin, f"propagated from {self.settings.desk}: {why}", self.clock.time()
        )
        self._outbox.append(encode_trigger(message))
        self.obey.seen.add(message.id, None)
        self._log.warning(
            "cluster.propagated",
            trigger_id=message.id,
            subject=self.subjects.firm_trigger,
            connected=self.connected,
        )
        self._poke()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def status(self) -> dict[str, Any]:
        nc = self._nc
        return {
            "connected": self.connected,
            "desk": self.settings.desk,
            "host": self.settings.host,
            "firm": self.config.firm,
            "servers": list(self.config.servers),
            "server": server_label(nc.connected_url) if nc is not None and self.connected else None,
            "subscriptions": list(self._subscribed),
            "last_trigger": self.obey.last_trigger,
            "events_buffered": len(self._events),
            "events_dropped": self._dropped_total + self._dropped,
            "liveness": self.liveness.status(),
            "sentinel_verdict": self.agreement.last,
        }

    async def leave(self) -> bool:
        """A clean stop: the last liveness message says ``leaving`` (contract §15)."""
        return await self.liveness.leave(self._nc)

    # ------------------------------------------------------------------ triggers

    def receive(self, data: bytes, scope: str) -> Decision:
        """Validate and obey one trigger message (:class:`~killswitch.cluster.obey.Obedience`)."""
        return self.obey.receive(data, scope)

    # ------------------------------------------------------------------ the connection task

    async def run(self) -> None:
        """Connect, subscribe, publish; retry forever.  Never raises (but is cancellable)."""
        backoff = RECONNECT_WAIT
        while True:
            if self._sessions:  # the last one got connected: start the backoff afresh
                backoff, self._sessions = RECONNECT_WAIT, 0
            try:
                await self._session()
            except Exception as exc:
                self._log.error(
                    "cluster.error",
                    error=type(exc).__name__,
                    detail=str(exc)[:300],
                    retry_in=backoff,
                )
            self.m_connected.set(0)
            await self.clock.sleep(backoff)
            backoff = min(RETRY_MAX, backoff * 2)

    async def _session(self) -> None:
        import nats

        nc = await nats.connect(
            servers=list(self.config.servers),
            name=f"killswitch {self.settings.origin}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=2,
            no_echo=True,  # our own broadcasts and events do not come back to us
            inbox_prefix=f"_INBOX.{self.settings.desk}",  # the desk's replies, and only its own
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            **connect_options(self.settings),
        )
        self._nc = nc
        try:
            self._check_tls(nc)
            async with asyncio.TaskGroup() as answers:

                async def obey_firm(msg: Msg) -> None:
                    if self._secure(nc):
                        answers.create_task(self.obey.answer(msg, self.receive(msg.data, "firm")))

                async def obey_desk(msg: Msg) -> None:
                    if self._secure(nc):
                        answers.create_task(self.obey.answer(msg, self.receive(msg.data, "desk")))

                subscriptions = []
                if "firm" in self.config.follow:
                    subscriptions.append(self.subjects.firm_trigger)
                    await nc.subscribe(self.subjects.firm_trigger, cb=obey_firm)
                if "desk" in self.config.follow:
                    subscriptions.append(self.subjects.desk_trigger)
                    await nc.subscribe(self.subjects.desk_trigger, cb=obey_desk)
                await nc.subscribe(self.subjects.status, cb=self._on_status)
                subscriptions.append(self.subjects.status)

                async def verdict(msg: Msg) -> None:
                    if self._secure(nc):
                        self.agreement.receive(msg.data, "broadcast")

                await nc.subscribe(self.sentinel_subjects.verdict, cb=verdict)  # in "liveness"
                if not await self._flush(nc, FLUSH_TIMEOUT):
                    raise TimeoutError("the NATS server did not confirm the subscriptions")
                self._subscribed = subscriptions
                self._connected_event(reconnected=False)
                answers.create_task(self.liveness.run(nc), name="liveness")
                answers.create_task(self._ask_sentinel(nc), name="ask-sentinel")
                await self._publish_forever(nc)
        finally:
            self._nc = None
            self._subscribed = []
            self.m_connected.set(0)
            try:
                async with asyncio.timeout(1.0):
                    await nc.close()
            except Exception as exc:
                self._log.info("cluster.close_failed", error=type(exc).__name__)
            await self._flush.close()

    async def _ask_sentinel(self, nc: NatsClient) -> None:
        """At every (re)connection: did our sentinel kill the account meanwhile?"""
        while True:
            self._reconnected.clear()
            if self._secure(nc):
                await self.agreement.ask(nc)
            await self._reconnected.wait()

    async def _publish_forever(self, nc: NatsClient) -> None:
        """Send our broadcasts, then the buffered event lines, while connected."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if nc.is_closed:
                raise ConnectionError("the NATS connection closed")
            if self._check_tls_failed:
                self._check_tls_failed = False
                self._check_tls(nc)
            if not nc.is_connected:
                continue  # reconnected_cb pokes us
            while self._outbox and nc.is_connected:
                await nc.publish(self.subjects.firm_trigger, self._outbox[0])
                self._outbox.popleft()
            while self._events and nc.is_connected:
                if nc.pending_data_size > EVENTS_IN_FLIGHT:
                    # Replies share nats-py's outgoing buffer: never let events pile up
                    # in front of an acknowledgement.  Wait for the server to take them.
                    try:
                        answered = await self._flush(nc, FLUSH_TIMEOUT)
                        error = None if answered else "FlushTimeoutError"
                    except Exception as exc:
                        error = type(exc).__name__
                    if error is not None:
                        self._log.warning("cluster.slow", error=error)
                        break  # the buffer grows meanwhile; drops are counted
                    continue
                line = self._events[0].encode()
                if len(line) <= nc.max_payload:  # a larger one would fail the connection
                    await nc.publish(self.subjects.events, line)
                else:
                    self._dropped += 1
                self._events.popleft()
            if self._dropped and nc.is_connected:
                dropped, self._dropped = self._dropped, 0
                self._dropped_total += dropped
                self.m_dropped.inc(dropped)
                self._log.warning("cluster.events_dropped", count=dropped, buffer=EVENT_BUFFER)

    async def _on_status(self, msg: Msg) -> None:
        if not msg.reply:
            return
        self.m_messages.labels("status").inc()
        # A status request that reaches a desk before its kill's first cancel_all (a
        # desk slower than the rest, another operator's tool) waits for that send.
        for kill_id in list(self.obey.starting):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_DEFER):
                    await self.host.cancel_sent(kill_id)
        body = {
            **self.host.status(),
            "desk": self.settings.desk,
            "host": self.settings.host,
            "now_ms": int(self.clock.time() * 1000),
        }
        try:
            await msg.respond(json.dumps(body, default=str).encode())
        except Exception as exc:
            self._log.warning("cluster.reply_failed", error=type(exc).__name__)

    # ------------------------------------------------------------------ nats-py callbacks

    def _connected_event(self, *, reconnected: bool) -> None:
        nc = self._nc
        self.m_connected.set(1)
        self._sessions += 1
        self._connect_failures = 0
        self._connect_failed_logged = -math.inf
        self._log.info(
            "cluster.connected",
            server=None if nc is None else server_label(nc.connected_url),
            desk=self.settings.desk,
            subscriptions=self._subscribed,
            reconnected=reconnected,
        )
        self._poke()

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every failed (re)connection attempt: damp the repeats.
        self._connect_failures += 1
        now = self.clock.monotonic()
        if now - self._connect_failed_logged < CONNECT_FAILED_EVERY:
            return
        self._connect_failed_logged = now
        self._log.warning(
            "cluster.connect_failed" if not self.connected else "cluster.error",
            error=type(exc).__name__,
            detail=str(exc)[:300],
            attempts=self._connect_failures,
            servers=list(self.config.servers),
        )

    async def _on_disconnected(self) -> None:
        if self._nc is None:
            return
        self.m_connected.set(0)
        self._log.warning("cluster.disconnected", desk=self.settings.desk)

    def _secure(self, nc: NatsClient) -> bool:
        """False for a message that came over an unencrypted reconnection of a tls:// cluster."""
        if self._tls and not is_tls(nc):
            self._check_tls_failed = True
            self._poke()
            return False
        return True

    def _check_tls(self, nc: NatsClient) -> None:
        if self._tls and not is_tls(nc):
            self._log.critical(
                "cluster.insecure",
                server=server_label(nc.connected_url),
                problem="tls:// configured, the connection is not encrypted: closing it",
            )
            raise InsecureConnection("the NATS connection is not encrypted")

    async def _on_reconnected(self) -> None:
        nc = self._nc
        if nc is not None and self._tls and not is_tls(nc):
            self._check_tls_failed = True
            self._poke()  # the publisher ends the session; run() connects afresh
            return
        self._connected_event(reconnected=True)
        self._reconnected.set()

    async def _on_closed(self) -> None:
        self.m_connected.set(0)
        self._poke()  # the publisher sees the closed connection and the session ends

"""The sentinel (contract §15): a dead-man switch for a whole desk host, over NATS.

A killswitch daemon with ``[sentinel] desk`` (and the watched desk's venue
credentials and targets) runs this beside its own :class:`Cluster`.  It keeps a
connection of its own, because proving the link takes messages that come back
to the sender (the cluster connection runs with ``no_echo``):

- **probes**: every :attr:`Sentinel.probe_interval` it publishes a fresh token
  on ``P.<firm>.<own desk>.probe``, to which it is subscribed, and waits
  :attr:`Sentinel.probe_timeout` for it.  Only a token that came back through the
  server and the client's read loop proves the link.  ``is_connected`` lags a
  silent network, and nats-py's ``flush()`` can return at once on a client that
  no longer receives anything (LIBRARY-NOTES.md), so neither is trusted.  A probe
  that does not come back, a disconnection, or a stall of the sentinel's own loop
  makes it blind (:class:`~killswitch.cluster.watch.Watch`);
- **liveness**: ``P.<firm>.<desk>.alive`` feeds the watch;
- **verdict**: while this daemon's switch is ``KILLING`` or ``TRIPPED`` it
  publishes its kill on ``P.<firm>.<desk>.killed`` every 0.5 s and answers the
  desk's question on ``P.<firm>.<desk>.sentinel`` (:mod:`killswitch.cluster.verdict`).

Its kill is the switch's normal trigger (source ``sentinel``): flat proof,
latch, guard and reset as for any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from killswitch.clock import Clock
from killswitch.cluster.liveness import SentinelSubjects, parse_alive
from killswitch.cluster.messages import InvalidMessage
from killswitch.cluster.settings import ClusterSettings, connect_options, server_label
from killswitch.cluster.verdict import VERDICT_EVERY, Verdict, encode_verdict
from killswitch.cluster.watch import Watch
from killswitch.config.model import SentinelConfig
from killswitch.kill.switch import TriggerOutcome
from killswitch.log import get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

__all__ = ["Sentinel", "SentinelHost"]

RECONNECT_WAIT = 0.25  # the sentinel's own reconnect attempts: it should be back first
RETRY_MAX = 5.0


class SentinelHost(Protocol):
    """What the sentinel needs from the daemon."""

    def sentinel_trigger(self, reason: str, **detail: Any) -> TriggerOutcome: ...
    def account_killed(self) -> tuple[str, str | None, str] | None: ...


class Sentinel:
    """Watch one desk's liveness over a proven link; kill its account when it falls silent."""

    def __init__(
        self,
        settings: ClusterSettings,
        config: SentinelConfig,
        host: SentinelHost,
        clock: Clock,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.host = host
        self.clock = clock
        self.subjects = SentinelSubjects.of(settings.config, config.desk)
        self.probe_subject = SentinelSubjects.probe(settings.config, settings.desk)
        # Probes often enough that the proof lags the truth by little (the kill's bound is
        # timeout + liveness_interval), given up on well before a timeout could pass.
        self.probe_interval = min(0.25, config.timeout / 8)
        self.probe_timeout = max(0.2, min(1.0, config.timeout / 2))
        self._log = get_logger()
        self.watch = Watch(config, clock, self._fire, self._log)
        self._nonce = os.urandom(6).hex()
        self._waiting: tuple[bytes, asyncio.Future[None]] | None = None
        self._nc: NatsClient | None = None
        self.probes = 0
        self.rtt: float | None = None
        r = registry if registry is not None else CollectorRegistry()
        self.m_fired = Counter(
            "killswitch_sentinel_fired", "Kills this sentinel fired on a silent desk", registry=r
        )
        Gauge(
            "killswitch_sentinel_blind", "1 while the sentinel cannot prove its link", registry=r
        ).set_function(lambda: 1.0 if self.watch.blind else 0.0)
        Gauge(
            "killswitch_sentinel_last_seen_seconds",
            "Seconds since the watched desk's last liveness (NaN: never seen)",
            registry=r,
        ).set_function(self._last_seen)
        Gauge(
            "killswitch_sentinel_watching", "1 while the sentinel watches its desk", registry=r
        ).set_function(lambda: 1.0 if self.watch.mode.value == "watching" else 0.0)

    def _last_seen(self) -> float:
        age = self.watch.last_seen_s()
        return float("nan") if age is None else age

    def _fire(self, silent: float, reason: str) -> None:
        self.m_fired.inc()
        self.host.sentinel_trigger(reason, desk=self.config.desk, silent_s=round(silent, 3))

    def status(self) -> dict[str, Any]:
        nc = self._nc
        return {
            **self.watch.status(),
            "server": None if nc is None or not nc.is_connected else server_label(nc.connected_url),
            "probe_rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "probes": self.probes,
        }

    # ------------------------------------------------------------------ the connection

    async def run(self) -> None:
        """Connect, watch, prove, repeat forever.  Never raises (but is cancellable)."""
        backoff = RECONNECT_WAIT
        while True:
            try:
                await self._session()
            except Exception as exc:
                self.watch.link_lost(f"{type(exc).__name__}: {str(exc)[:200]}")
            await self.clock.sleep(backoff)
            backoff = min(RETRY_MAX, backoff * 2)

    async def _session(self) -> None:
        import nats

        async def lost() -> None:
            self.watch.link_lost("disconnected from NATS")

        async def error(exc: Exception) -> None:
            self._log.info("sentinel.nats_error", error=type(exc).__name__, detail=str(exc)[:200])

        nc = await nats.connect(
            servers=list(self.settings.config.servers),
            name=f"killswitch sentinel {self.settings.origin} for {self.config.desk}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=2,
            no_echo=False,  # the probes are our own messages coming back
            disconnected_cb=lost,
            error_cb=error,
            **connect_options(self.settings),
        )
        self._nc = nc
        try:
            await nc.subscribe(self.subjects.alive, cb=self._on_alive)
            await nc.subscribe(self.probe_subject, cb=self._on_probe)
            await nc.subscribe(self.subjects.ask, cb=self._on_ask)
            self._log.info(
                "sentinel.connected",
                desk=self.config.desk,
                server=server_label(nc.connected_url),
                subjects=[self.subjects.alive, self.subjects.ask, self.probe_subject],
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._verdicts(nc))
                await self._probe_forever(nc)
        finally:  # blind is for run() to say: a clean stop is not an outage to alert on
            self._nc = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await nc.close()

    async def _probe_forever(self, nc: NatsClient) -> None:
        previous: float | None = None
        stall = self.probe_interval + self.probe_timeout
        while True:
            if nc.is_closed:
                raise ConnectionError("the NATS connection closed")
            sent = self.clock.monotonic()
            if previous is not None and sent - previous > stall:
                # Our own loop did not run: we cannot vouch for what we did not hear.
                self.watch.link_lost(f"the sentinel's own loop stalled {sent - previous:.3f}s")
            previous = sent
            if nc.is_connected:
                await self._probe(nc, sent)
            else:
                self.watch.link_lost("disconnected from NATS")
            await self.clock.sleep(sent + self.probe_interval - self.clock.monotonic())

    async def _probe(self, nc: NatsClient, sent: float) -> None:
        self.probes += 1
        token = f"{self._nonce}:{self.probes}".encode()
        back: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting = (token, back)
        try:
            await nc.publish(self.probe_subject, token)
            async with asyncio.timeout(self.probe_timeout):
                await back
        except TimeoutError:
            self.watch.link_lost(f"a probe did not come back within {self.probe_timeout:g}s")
            return
        except Exception as exc:
            self.watch.link_lost(f"probe failed: {type(exc).__name__}")
            return
        finally:
            self._waiting = None
        self.rtt = self.clock.monotonic() - sent
        self.watch.probe_ok(sent)

    async def _on_probe(self, msg: Msg) -> None:
        waiting = self._waiting
        if waiting is not None and msg.data == waiting[0] and not waiting[1].done():
            waiting[1].set_result(None)

    async def _on_alive(self, msg: Msg) -> None:
        try:
            alive = parse_alive(msg.data)
        except InvalidMessage as exc:
            self._log.warning("sentinel.alive_invalid", desk=self.config.desk, problem=str(exc))
            return
        if alive.desk != self.config.desk:
            self._log.warning("sentinel.alive_invalid", desk=self.config.desk, problem="desk")
            return
        self.watch.alive(alive)

    # ------------------------------------------------------------------ the verdict

    def verdict(self) -> Verdict:
        killed = self.host.account_killed()
        return Verdict(
            sentinel=self.settings.origin,
            desk=self.config.desk,
            killed=killed is not None,
            kill_id=None if killed is None else killed[0],
            source=None if killed is None else killed[1],
            state="ARMED" if killed is None else killed[2],
            sent_at=int(self.clock.time() * 1000),
        )

    async def _verdicts(self, nc: NatsClient) -> None:
        """While this daemon's switch holds a kill, tell the desk again and again."""
        while True:
            verdict = self.verdict()
            if verdict.killed and nc.is_connected:
                await nc.publish(self.subjects.verdict, encode_verdict(verdict))
            await self.clock.sleep(VERDICT_EVERY)

    async def _on_ask(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(encode_verdict(self.verdict()))
        except Exception as exc:
            self._log.warning("sentinel.reply_failed", error=type(exc).__name__)

"""The daemon's parts, built from the config and wired together.

:class:`Wiring` holds everything a running daemon is made of: the state store
and its watch, one sliding-window limiter per endpoint (its send log restored
from the store), the exchange client, the kill runner, the switch, the tripped
guard, the dead-man switch, the PnL monitor, the control server and its
answers (:mod:`killswitch.service.answers`), the optional cluster and its host
side (:mod:`killswitch.service.cluster_host`), and the metrics that read them.
It implements the engine's ``KillEvents``.  When each part opens and closes is
:class:`~killswitch.service.daemon.Daemon`'s business.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from killswitch.alerts import Receiver
from killswitch.clock import Clock, SystemClock
from killswitch.config.model import Config, RateLimit
from killswitch.damping import Damper
from killswitch.exchange.client import (
    CANCEL_ALL,
    CLOSED_ORDERS,
    OPEN_ORDERS,
    ORDER_STATUS,
    ExchangeClient,
)
from killswitch.exchange.credentials import Credentials
from killswitch.exchange.positions import PLACE_ORDER, POSITIONS
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.signing import make_signer
from killswitch.kill.confirm import OUTCOME_FIELDS
from killswitch.kill.flat import VenueListings
from killswitch.kill.guard import Guard
from killswitch.kill.order_facts import RecordingListings, RecordingStatus
from killswitch.kill.runner import KillRunner
from killswitch.kill.switch import KillSwitch, State
from killswitch.log import get_logger, redactor
from killswitch.logsink import health as log_health
from killswitch.service.access import AccessGuard
from killswitch.service.answers import ControlAnswers, triggers_enabled
from killswitch.service.approvals import ResetApprovals
from killswitch.service.cluster_host import ClusterHost
from killswitch.service.control import ControlServer
from killswitch.service.halt import Halt
from killswitch.service.metrics import Metrics
from killswitch.service.notify import Notifier
from killswitch.service.positions import PositionsService
from killswitch.service.systemd import Service
from killswitch.service.telling import Telling
from killswitch.store.state import StateStore
from killswitch.store.watch import StoreWatch
from killswitch.store.writer import coalesce_from_env
from killswitch.triggers.heartbeat import DeadManSwitch
from killswitch.triggers.pnl import PnlMonitor, PnlWatcher

if TYPE_CHECKING:
    from killswitch.cluster.connection import Cluster
    from killswitch.cluster.sentinel import Sentinel
    from killswitch.cluster.settings import ClusterSettings

__all__ = ["Wiring"]


class Wiring:
    """The parts of a daemon and their wiring; a :class:`~killswitch.service.daemon.Daemon`
    holds one (``daemon.parts``) and says when each part opens, runs and closes."""

    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        cluster: ClusterSettings | None = None,
        alerts: tuple[Receiver, ...] | None = None,
    ) -> None:
        self.config = config
        self.cluster_settings = cluster
        self.cluster: Cluster | None = None
        self.sentinel: Sentinel | None = None
        self.credentials = credentials
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier.from_env()
        self.prom = Metrics()
        self.store = StateStore(config.state.path, coalesce=coalesce_from_env())
        self.store_watch = StoreWatch(
            self.store, self.prom, self.clock, on_change=self._store_changed
        )
        self._log = get_logger()
        self._started = self.clock.monotonic()
        self.damper = Damper()  # repeated warnings (ratelimit.wait) a few a minute
        self.ready = False  # daemon.ready was logged (the daemon sets it)
        self.activated_socket: socket.socket | None = None  # from systemd (service/activation.py)
        redactor.register([credentials.api_key.reveal(), credentials.api_secret.reveal()])
        if cluster is not None and cluster.credentials is not None:
            # The JWT and the seed (a .creds file's frame lines are not secret).
            redactor.register(t for t in cluster.credentials.reveal().split() if len(t) >= 40)
        self.telling = Telling(  # alerts, the kill's journal, [metrics] listen (contract §16)
            config,
            alerts,
            self.store,
            self.clock,
            self._log,
            registry=self.prom.registry,
            current_kill=self._current_kill,
            render=self.prom.render,
            last_kill=self._tripped_by,
        )

    # ------------------------------------------------------------------ wiring

    def _tripped_by(self) -> dict[str, Any] | None:
        """The last kill's summary while it keeps the switch tripped (None once reset)."""
        switch: KillSwitch | None = getattr(self, "switch", None)
        return None if switch is None or switch.state is State.ARMED else switch.last_kill

    def _current_kill(self) -> str | None:
        switch: KillSwitch | None = getattr(self, "switch", None)  # None before _build()
        return None if switch is None else switch.current_kill_id

    def _store_changed(self) -> None:
        if self.ready:  # before that, daemon.ready sends the first STATUS=
            self.service.send_status()

    def _limiter(self, endpoint: str, limit: RateLimit) -> SlidingWindowLimiter:
        now_wall, now_mono = self.clock.time(), self.clock.monotonic()
        window = limit.per_seconds + limit.margin
        sent = self.store.recent_sends(endpoint, now_wall - window)
        # Wall-clock send times from the store, mapped onto this process's monotonic clock.
        history = [now_mono - max(0.0, now_wall - t) for t in sent]
        log = self._log

        def on_send() -> None:
            self.store.record_send(endpoint, self.clock.time())

        def on_wait(seconds: float) -> None:
            self.prom.ratelimit_waits.labels(endpoint).inc()
            self.damper.warning(
                log, "ratelimit.wait", key=endpoint, endpoint=endpoint, seconds=round(seconds, 3)
            )

        return SlidingWindowLimiter(
            endpoint,
            limit.requests,
            limit.per_seconds,
            self.clock,
            margin=limit.margin,
            history=history,
            on_send=on_send,
            on_wait=on_wait,
        )

    # ------------------------------------------------------------------ KillEvents

    def cancel_all_sent(self, kill_id: str | None, exchange: str, symbol: str | None) -> None:
        """A ``cancel_all`` was written (the engine logged ``cancel_all.sent``)."""
        self.cluster_host.sent(kill_id)

    def _build(self) -> None:
        cfg = self.config
        self.cancel_limiter = self._limiter(CANCEL_ALL, cfg.cancel_all.rate_limit)
        self.status_limiter = self._limiter(ORDER_STATUS, cfg.confirm.rate_limit)
        self.exchange = ExchangeClient(
            cfg.exchange,
            make_signer(cfg.exchange, self.credentials),
            limiters={
                CANCEL_ALL: self.cancel_limiter,
                ORDER_STATUS: self.status_limiter,
                OPEN_ORDERS: self._limiter(OPEN_ORDERS, cfg.flat.rate_limit),
                CLOSED_ORDERS: self._limiter(CLOSED_ORDERS, cfg.flat.rate_limit),
                POSITIONS: self._limiter(POSITIONS, cfg.positions.rate_limit),
                PLACE_ORDER: self._limiter(PLACE_ORDER, cfg.flatten.rate_limit),
            },
            clock=self.clock,
            status_pool_size=cfg.confirm.max_concurrency,
        )
        self.limiters = self.exchange.limiters
        listings = (
            None
            if cfg.exchange.dry_run
            else VenueListings(self.exchange, lambda: self.config.flat.lookback_days)
        )
        self._build_positions(listings)
        self.runner = KillRunner(
            cfg,
            RecordingStatus(self.exchange, self.order_facts),
            self.store,
            self.clock,
            events=self,
            status_gate=self.status_limiter,
            listings=None if listings is None else RecordingListings(listings, self.order_facts),
            budgets=self.limiters,
            after_flat=self.after_flat,
        )
        self.switch = KillSwitch(self.runner, self.store, self.clock, events=self)
        self.guard = (
            None
            if listings is None
            else Guard(
                lambda: self.config,
                self.exchange,
                listings,
                self.clock,
                tripped=lambda: self.switch.state is State.TRIPPED,
                status_gate=self.status_limiter,
                events=self,
            )
        )
        self.service = Service(self.notifier, self.switch, self.clock)
        self.service.store_health = self.store.health
        self.service.problem = self._problem
        hb = cfg.triggers.heartbeat
        self.deadman = DeadManSwitch(
            hb.timeout,
            self.clock,
            lambda age: self._fire("heartbeat", f"no heartbeat for {age:.3f}s"),
            enabled=hb.enabled,
            armed=hb.arm_on_start,
        )
        pnl = cfg.triggers.pnl
        self.pnl = PnlMonitor(
            pnl.threshold,
            pnl.stale_after,
            self.clock,
            lambda why, value: self._fire("pnl", why if value is None else f"{why}: pnl={value}"),
            latched=lambda: self.switch.state is State.TRIPPED,
        )
        self.pnl_watcher = PnlWatcher(pnl.path, self.pnl)
        self.switch.on_reset(self.pnl.rearm)
        self.access = AccessGuard(lambda: self.config.control)
        self.approvals = ResetApprovals(
            self.clock,
            lambda: (
                1
                if self.config.control.access is None
                else self.config.control.access.reset_approvals
            ),
            lambda: self.config.control.approval_window,
        )
        self.halt = Halt(lambda: self.config.halt.units, cfg.state.path.parent, self.clock)
        self.cluster_host = ClusterHost(self.switch, self.prom, lambda: self.answers.status())
        if self.cluster_settings is not None:
            from killswitch.cluster.connection import Cluster
            from killswitch.log import add_tap

            self.cluster = Cluster(
                self.cluster_settings, self.cluster_host, self.clock, self.prom.registry
            )
            add_tap(self.cluster.tap)
            if cfg.sentinel is not None:
                from killswitch.cluster.sentinel import Sentinel

                self.sentinel = Sentinel(
                    self.cluster_settings,
                    cfg.sentinel,
                    self.cluster_host,
                    self.clock,
                    self.prom.registry,
                )
        self.answers = ControlAnswers(
            lambda: self.config,
            switch=self.switch,
            runner=self.runner,
            deadman=self.deadman,
            pnl=self.pnl,
            store=self.store,
            limiters=self.limiters,
            exchange=self.exchange,
            guard=self.guard,
            positions=self.positions,
            halt=self.halt,
            approvals=self.approvals,
            telling=self.telling,
            prom=self.prom,
            clock=self.clock,
            started=self._started,
            cluster=self.cluster,
            sentinel=self.sentinel,
        )
        self.control = ControlServer(
            cfg.control.socket,
            self.answers,
            access=self.access,
            mode=int(cfg.control.socket_mode, 8),
            group=cfg.control.socket_group,
            activated=self.activated_socket,
        )
        self.prom.watch(
            heartbeat_age=self.deadman.age,
            pnl=lambda: self.pnl.value,
            pnl_age=self.pnl.age,
            state=lambda: self.switch.state.value,
            available={name: lim.available for name, lim in self.limiters.items()},
        )
        self.prom.clock_offset.set_function(self._clock_offset)
        self.prom.kill_stuck.set_function(lambda: 0.0 if self.runner.stuck_info() is None else 1.0)
        self.prom.watch_requests(lambda: self.exchange.requests_sent)
        self.prom.self_test_ok.set_function(self._self_test_gauge)
        self.prom.watch_log(log_health)

    # ------------------------------------------------------------------ positions (§12)

    def _build_positions(self, listings: VenueListings | None) -> None:
        """The positions step after every kill and the flattener (service/positions.py)."""
        self.positions = PositionsService(
            lambda: self.config, self.exchange, self.store, self.clock, listings
        )
        self.order_facts = self.positions.facts
        self.after_flat = self.positions.after_flat

    def _problem(self) -> str | None:
        """What systemd's STATUS= line should say is wrong (a stuck kill, a failed self-test)."""
        stuck = self.runner.stuck_info()
        if stuck is not None and self.switch.state is State.KILLING:
            return f"STUCK: venue refuses cancel_all (HTTP {stuck.http_status}: {stuck.why})"
        test = self.exchange.health().get("self_test")
        if test is not None and not test["ok"]:
            failed = [c for c in test["checks"] if not c["ok"]]
            first = failed[0] if failed else {}
            return (
                f"exchange self-test FAILED (HTTP {first.get('http_status')}: "
                f"{first.get('message') or first.get('error')})"
            )
        return None

    def _clock_offset(self) -> float:
        offset = self.exchange.health().get("offset_ms")
        return float("nan") if offset is None else offset / 1000

    def _self_test_gauge(self) -> float:
        test = self.exchange.health().get("self_test")
        return -1.0 if test is None else 1.0 if test["ok"] else 0.0

    def status_gate_waited(self, seconds: float) -> None:
        """The confirmer waits on the status limiter's gate (it never acquires it there)."""
        self.limiters[ORDER_STATUS].waits += 1
        on_wait = self.limiters[ORDER_STATUS].on_wait
        if on_wait is not None:
            on_wait(seconds)

    async def _exchange_background(self) -> None:
        """The start-up self-test (key, signature, clock), then clock re-syncs forever
        (re-testing while the self-test fails)."""
        if not self.config.exchange.dry_run:
            result = await self.exchange.self_test(self.config.targets)
            if not result.ok:
                self._log.critical(
                    "exchange.self_test_failed_at_start",
                    checks=[c for c in result.as_dict()["checks"] if not c["ok"]],
                    note="the daemon keeps running and re-tests; a kill still tries",
                )
            if self.ready:  # before that, daemon.ready sends the first STATUS= (after READY=1)
                self.service.send_status()  # only if the line changed (a failed self-test)
        await self.exchange.run_background()

    def _latch(self) -> tuple[bool, str | None]:
        """The latch as the switch holds it now (written to a store that works again)."""
        return self.switch.state is not State.ARMED, self.switch.current_kill_id

    def request_done(self, endpoint: str, outcome: str) -> None:
        self.prom.requests.labels(endpoint, outcome).inc()

    def guard_swept(self, orders: int) -> None:
        self.prom.guard_swept.inc(orders)

    def kill_completed(self, kill_id: str, summary: Mapping[str, Any]) -> None:
        pass  # the switch goes TRIPPED next: state_changed() reads its last kill

    def kill_classified(self, kill_id: str, summary: Mapping[str, Any]) -> None:
        for outcome in OUTCOME_FIELDS:
            self.prom.orders.labels(outcome).inc(summary.get(outcome, 0))

    def state_changed(self, value: str, why: str) -> None:
        state = State(value)
        if self.guard is not None:
            self.guard.state_changed()
        self.halt.state_changed(state, self.switch.current_kill_id)  # after the first cancel_all
        if state is State.KILLING:
            self.approvals.cancel("a new kill started")
        if state is State.KILLING:
            self.prom.kills.labels(self.switch.kill_source or "unknown").inc()
        elif state is State.TRIPPED:
            last = self.switch.last_kill or {}
            if last.get("duration_ms") is not None:
                self.prom.kill_seconds.observe(last["duration_ms"] / 1000)
            if last.get("flat_ms") is not None:
                self.prom.flat_seconds.observe(last["flat_ms"] / 1000)
            self.prom.leftovers.inc(last.get("leftover", 0))
            self.prom.kill_flat.set(1.0 if last.get("flat") else 0.0)
            self.telling.kill_recorded(self.config.state.keep_kills)
        self.service.state_changed(state)
        if self.cluster is not None:
            self.cluster.state_changed(state, why)

    def _fire(self, source: str, reason: str) -> None:
        if not triggers_enabled(self.config).get(source, True):
            self._log.info("trigger.disabled", source=source, reason=reason)
            return
        outcome = self.switch.trigger(source, reason)
        self.prom.triggers.labels(source, outcome.value).inc()

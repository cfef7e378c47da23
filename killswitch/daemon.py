"""The daemon's lifecycle: wire the parts, serve, stop in order.

``serve()`` is the async core (tests await it directly); ``killswitch run``
wraps it.  Start-up: state restored → limiters seeded from persisted send
times → exchange connections warm → control socket listening → signal
handlers → ``daemon.ready`` (and ``READY=1`` to systemd).  Stop: refuse new
triggers, let a running kill confirm for ``daemon.shutdown_grace`` seconds,
cancel the rest with a message, flush the store, exit 0.  An exception in any
watcher is never swallowed: it is logged as ``daemon.crashed`` and ends the
daemon with status 1, so systemd restarts it and the unfinished kill resumes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import structlog

from killswitch import __version__
from killswitch.clock import Clock, SystemClock
from killswitch.config import Config, ConfigError, RateLimit, load_config, reloadable
from killswitch.control import ControlServer
from killswitch.credentials import Credentials
from killswitch.damping import Damper
from killswitch.exchange import CLOSED_ORDERS, OPEN_ORDERS, ExchangeClient
from killswitch.heartbeat import DeadManSwitch
from killswitch.kill import KillRunner
from killswitch.log import configure_logging, get_logger, install_loop_handler, redactor
from killswitch.metrics import Metrics
from killswitch.notify import Notifier
from killswitch.pnl import PnlMonitor, PnlWatcher
from killswitch.ratelimit import SlidingWindowLimiter
from killswitch.service import Service
from killswitch.signing import make_signer
from killswitch.store import StateStore
from killswitch.switch import KillSwitch, State

__all__ = ["Daemon"]

CANCEL_ALL = "cancel_all"
ORDER_STATUS = "order_status"


class _StatusStrings:
    """The client as the confirmer still sees it: order_status as a status string.

    A stop-gap until the kill engine takes :class:`~killswitch.exchange.VenueOrder`.
    """

    def __init__(self, client: ExchangeClient) -> None:
        self._client = client

    async def cancel_all(self, exchange: str, symbol: str | None = None) -> list[str]:
        return await self._client.cancel_all(exchange, symbol)

    async def order_status(self, order_id: str) -> str:
        return (await self._client.order_status(order_id)).status


class _Stop(Exception):
    """Raised inside the task group to end it on SIGTERM/SIGINT."""


class Daemon:
    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier.from_env()
        self.prom = Metrics()
        self.store = StateStore(config.state.path, on_error=self._store_failed)
        self._log = get_logger()
        self._stop = asyncio.Event()
        self._started = self.clock.monotonic()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.damper = Damper()  # repeated warnings (ratelimit.wait) a few a minute
        redactor.register([credentials.api_key.reveal(), credentials.api_secret.reveal()])

    # ------------------------------------------------------------------ wiring

    def _store_failed(self, exc: BaseException) -> None:
        # Runs on the store's writer thread: hand the event to the loop.
        def log() -> None:
            self._log.critical("store.write_failed", error=type(exc).__name__, detail=str(exc))

        try:
            self._loop.call_soon_threadsafe(log)
        except RuntimeError:  # the loop is closed: last resort, log from here
            log()

    def _limiter(self, endpoint: str, limit: RateLimit) -> SlidingWindowLimiter:
        now_wall, now_mono = self.clock.time(), self.clock.monotonic()
        window = limit.per_seconds + limit.margin
        sent = self.store.recent_sends(endpoint, now_wall - window)
        # Wall-clock send times from the store, mapped onto this process's monotonic clock.
        history = [now_mono - max(0.0, now_wall - t) for t in sent]
        log = self._log

        def on_send(at: float) -> None:
            self.store.record_send(endpoint, self.clock.time())
            if endpoint == CANCEL_ALL:
                # Logged two loop turns later, once aiohttp's writer task has put the
                # request on the wire (the event keeps the sweep's exchange and symbol).
                loop = asyncio.get_running_loop()
                loop.call_soon(loop.call_soon, log.info, "cancel_all.sent")

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
            },
            clock=self.clock,
            status_pool_size=cfg.confirm.max_concurrency,
        )
        self.runner = KillRunner(
            cfg,
            _StatusStrings(self.exchange),
            self.store,
            self.clock,
            on_outcome=self._count_request,
            status_gate=self.status_limiter,
        )
        self.switch = KillSwitch(self.runner, self.store, self.clock, on_state=self._state_changed)
        self.service = Service(self.notifier, self.switch, self.clock)
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
        self.control = ControlServer(cfg.control.socket, self)
        self.prom.watch(
            heartbeat_age=self.deadman.age,
            pnl=lambda: self.pnl.value,
            pnl_age=self.pnl.age,
            state=lambda: self.switch.state.value,
            available={
                CANCEL_ALL: self.cancel_limiter.available,
                ORDER_STATUS: self.status_limiter.available,
            },
        )

    def _count_request(self, endpoint: str, outcome: str) -> None:
        self.prom.requests.labels(endpoint, outcome).inc()

    def _state_changed(self, state: State, why: str) -> None:
        if state is State.KILLING:
            self.prom.kills.labels(why.split(":", 1)[0]).inc()
        elif state is State.TRIPPED:
            last = self.switch.last_kill or {}
            for outcome in ("cancelled", "filled", "other", "unknown", "unconfirmed"):
                self.prom.orders.labels(outcome).inc(last.get(outcome, 0))
        self.service.state_changed(state)

    def _fire(self, source: str, reason: str) -> None:
        enabled = {
            "signal": self.config.triggers.signal.enabled,
            "heartbeat": self.config.triggers.heartbeat.enabled,
            "pnl": self.config.triggers.pnl.enabled,
        }.get(source, True)
        if not enabled:
            self._log.info("trigger.disabled", source=source, reason=reason)
            return
        outcome = self.switch.trigger(source, reason)
        self.prom.triggers.labels(source, outcome.value).inc()

    # ------------------------------------------------------------------ control API

    def heartbeat(self) -> None:
        self.deadman.beat()

    def trigger(self, reason: str) -> dict[str, Any]:
        outcome = self.switch.trigger("manual", reason)
        self.prom.triggers.labels("manual", outcome.value).inc()
        return {"outcome": outcome.value, "kill_id": self.switch.current_kill_id}

    def reset(self) -> tuple[bool, dict[str, Any]]:
        ok = self.switch.reset()
        return ok, self.status()

    def status(self) -> dict[str, Any]:
        progress = self.switch.progress()
        hb_deadline = self.deadman.deadline
        return {
            "state": self.switch.state.value,
            "kill_id": self.switch.current_kill_id,
            "progress": None
            if progress is None
            else {"confirmed": progress[0], "total": progress[1]},
            "heartbeat_age": self.deadman.age(),
            "heartbeat_armed": hb_deadline is not None and self.deadman.enabled,
            "heartbeat_timeout": self.deadman.timeout,
            "pnl": self.pnl.value,
            "pnl_age": self.pnl.age(),
            "pnl_threshold": self.pnl.threshold,
            "last_kill": self.switch.last_kill,
            "rate_limit": {
                name: {
                    "available": lim.available(),
                    "limit": lim.requests,
                    "next_free_in": round(lim.next_free_in(), 3),
                }
                for name, lim in (
                    (CANCEL_ALL, self.cancel_limiter),
                    (ORDER_STATUS, self.status_limiter),
                )
            },
            "triggers": {
                "signal": self.config.triggers.signal.enabled,
                "heartbeat": self.config.triggers.heartbeat.enabled,
                "pnl": self.config.triggers.pnl.enabled,
            },
            "uptime": round(self.clock.monotonic() - self._started, 3),
            "pid": os.getpid(),
            "version": __version__,
        }

    def metrics(self) -> bytes:
        return self.prom.render()

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        """SIGHUP: re-read the config file; the latch, heartbeat clock and state stay."""
        self.service.notify("RELOADING=1", self.notifier.reloading())
        try:
            if self.config.source is None:
                raise ConfigError("config", "no file to reload from")
            new = load_config(self.config.source)
        except ConfigError as exc:
            self._log.error("config.reload_failed", key=exc.key, problem=exc.problem)
            self.service.notify("READY=1", self.notifier.ready())
            return
        previous = self.config
        self.config, ignored = reloadable(previous, new)
        triggers = self.config.triggers
        self.runner.config = self.config
        self.deadman.reconfigure(triggers.heartbeat.timeout, triggers.heartbeat.enabled)
        self.pnl.threshold = triggers.pnl.threshold
        self.pnl.stale_after = triggers.pnl.stale_after
        if self.config.log != previous.log:
            configure_logging(self.config.log.level, self.config.log.format)
        self._log.info("config.reloaded", needs_restart=ignored)
        self.service.notify("READY=1", self.notifier.ready())
        self.service.send_status(force=True)

    # ------------------------------------------------------------------ serve

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; 0 on a clean stop."""
        loop = self._loop = asyncio.get_running_loop()
        install_loop_handler(loop)
        # Before touching the state store: is another daemon already running here?
        ControlServer(self.config.control.socket, self).claim()
        self.store.open()
        tripped, _ = self.store.latch()
        unfinished = self.store.unfinished_kill()
        last = self.store.last_kill()
        self._build()
        self.switch.restore(tripped, last, unfinished)
        self.service.tripped_at = None if last is None else last.completed_at
        self.store.set_clean(False)
        if self.config.triggers.pnl.enabled:
            self.pnl_watcher.open()
        await self.exchange.start()
        try:
            await self.control.start()
        except BaseException:
            await self.exchange.close()
            raise
        handlers = {
            signal.SIGUSR1: self._on_sigusr1,
            signal.SIGTERM: lambda: self._on_stop("SIGTERM"),
            signal.SIGINT: lambda: self._on_stop("SIGINT"),
            signal.SIGHUP: self.reload,
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        try:
            return await self._serve()
        finally:
            for signum in handlers:
                loop.remove_signal_handler(signum)
            await self.control.close()
            await self.exchange.close()
            await self.store.flush()
            self.store.close()

    def _on_sigusr1(self) -> None:
        self._fire("signal", "SIGUSR1")

    def _on_stop(self, why: str) -> None:
        if not self._stop.is_set():
            self._log.info("daemon.stop_requested", signal=why)
        self._stop.set()

    async def _serve(self) -> int:
        self._log.info(
            "daemon.ready",
            state=self.switch.state.value,
            pid=os.getpid(),
            version=__version__,
            targets=len(self.config.targets),
            control_socket=str(self.config.control.socket),
            pnl_watch=self.config.triggers.pnl.enabled,
        )
        self.service.notify("READY=1", self.notifier.ready())
        self.service.send_status(force=True)
        crash: BaseExceptionGroup[Exception] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = {
                    "switch": tg.create_task(self.switch.run(), name="switch"),
                    "heartbeat": tg.create_task(self.deadman.run(), name="heartbeat"),
                }
                # Clock re-sync every exchange.clock_sync_interval; keeps the pools warm.
                tg.create_task(self.exchange.run_background(), name="exchange")
                if self.config.triggers.pnl.enabled:
                    self._tasks["pnl"] = tg.create_task(self.pnl_watcher.run(), name="pnl")
                tg.create_task(
                    self.service.watchdog(lambda: self._tasks, self._stop.is_set),
                    name="watchdog",
                )
                if self.notifier.enabled:
                    tg.create_task(self.service.status_loop(), name="status")
                await self._stop.wait()
                await self._shutdown()
                raise _Stop
        except* _Stop:
            pass
        except* Exception as group:
            crash = group
        if crash is not None:
            errors = [{"error": type(e).__name__, "detail": str(e)} for e in _leaves(crash)]
            self._log.critical("daemon.crashed", errors=errors, exc_info=crash)
            return 1
        self.store.set_clean(True)
        self._log.info("daemon.stopped")
        return 0

    async def _shutdown(self) -> None:
        self._log.info(
            "daemon.stopping",
            state=self.switch.state.value,
            grace=self.config.daemon.shutdown_grace,
        )
        self.service.notify("STOPPING=1", self.notifier.stopping())
        finished = await self.switch.drain(self.config.daemon.shutdown_grace)
        if not finished:
            progress = self.switch.progress()
            self._log.warning(
                "kill.interrupted",
                kill_id=self.switch.current_kill_id,
                confirmed=None if progress is None else progress[0],
                total=None if progress is None else progress[1],
                note="resumes at the next start",
            )
        for name, task in self._tasks.items():
            task.cancel(f"daemon stopping ({name})")
        structlog.contextvars.clear_contextvars()


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]

"""The daemon's lifecycle: wire the parts, serve, stop in order.

The parts and their wiring are :class:`~killswitch.service.wiring.Wiring`'s; this
module says when they open, run and close, and what a signal or a reload does.

``serve()`` is the async core (tests await it directly); ``killswitch run``
wraps it.  Start-up, each step registered on one exit stack before it opens:
signals routed to the loop (the ones recorded since the package's first line
are replayed) → control socket path claimed → state restored → PnL watch →
exchange sessions → watchers running, and SIGUSR1s received so far fire →
control socket listening → ``daemon.ready`` (and ``READY=1`` to systemd), and a
SIGHUP received so far reloads.  Stop: refuse new triggers, let a running kill
confirm for ``daemon.shutdown_grace`` seconds, cancel the rest with a message,
then release everything in reverse order (a failing step is logged and the
others still run), exit 0.  An exception in any watcher is never swallowed: it
is logged as ``daemon.crashed`` and ends the daemon with status 1, so systemd
restarts it and the unfinished kill resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from killswitch import __version__
from killswitch.clock import Clock
from killswitch.config.load import load_config
from killswitch.config.model import Config, reloadable
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import Credentials
from killswitch.kill.switch import State
from killswitch.log import configure_logging, get_logger, install_loop_handler
from killswitch.service.activation import listening_socket
from killswitch.service.control import SocketInUse, claim_socket
from killswitch.service.notify import Notifier
from killswitch.service.wiring import Wiring
from killswitch.triggers import signals

if TYPE_CHECKING:
    from killswitch.alerts import Receiver
    from killswitch.cluster.settings import ClusterSettings

__all__ = ["Daemon"]


class _Stop(Exception):
    """Raised inside the task group to end it on SIGTERM/SIGINT."""


class Daemon:
    """The lifecycle: start the parts in order, serve until told to stop, stop in order.

    The parts are a :class:`~killswitch.service.wiring.Wiring` (``self.parts``), built
    from the config; the daemon owns only what the lifecycle needs.
    """

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
        self.parts = Wiring(
            config, credentials, clock=clock, notifier=notifier, cluster=cluster, alerts=alerts
        )
        self._log = get_logger()
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._accepting = False  # the switch runs and the exchange client can send
        self._ready = False
        self._deferred_triggers = 0  # SIGUSR1s received before _accepting
        self._reload_wanted = False  # a SIGHUP received before daemon.ready
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        """Re-read the config file now; the latch, heartbeat clock and state stay."""
        self.parts.service.reloading()
        try:
            if self.parts.config.source is None:
                raise ConfigError("config", "no file to reload from")
            new = load_config(self.parts.config.source)
        except Exception as exc:  # any failure keeps the old config
            self._reload_failed(exc)
        else:
            self._apply(new)

    async def _reload_task(self) -> None:
        """SIGHUP: :meth:`reload` off the signal handler, the file read in a thread."""
        while True:
            self._reload_again = False
            self.parts.service.reloading()
            try:
                if self.parts.config.source is None:
                    raise ConfigError("config", "no file to reload from")
                new = await asyncio.to_thread(load_config, self.parts.config.source)
            except Exception as exc:  # any failure keeps the old config
                self._reload_failed(exc)
            else:
                self._apply(new)
            if not self._reload_again:
                return

    def _reload_failed(self, exc: Exception) -> None:
        if isinstance(exc, ConfigError):
            self._log.error("config.reload_failed", key=exc.key, problem=exc.problem)
        else:
            self._log.error(
                "config.reload_failed", key="config", problem=f"{type(exc).__name__}: {exc}"
            )
        self.parts.service.ready()

    def _apply(self, new: Config) -> None:
        previous = self.parts.config
        self.parts.config, ignored = reloadable(previous, new)
        triggers = self.parts.config.triggers
        self.parts.runner.config = self.parts.config
        self.parts.deadman.reconfigure(triggers.heartbeat.timeout, triggers.heartbeat.enabled)
        self.parts.pnl.threshold = triggers.pnl.threshold
        self.parts.pnl.stale_after = triggers.pnl.stale_after
        if self.parts.config.log != previous.log:
            log = self.parts.config.log
            configure_logging(log.level, log.format, buffer_lines=log.buffer_lines)
        self._log.info("config.reloaded", needs_restart=ignored)
        self.parts.service.ready()
        self.parts.service.send_status(force=True)

    def _schedule_reload(self) -> None:
        running = self._reloading
        if running is not None and not running.done():
            self._reload_again = True  # one more pass once the running one ends
            return
        assert self._tg is not None
        self._reloading = self._tg.create_task(self._reload_task(), name="reload")

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int) -> None:
        """Every signal, on the loop (the handler only recorded it): act, or keep it for later."""
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            action = "fires" if self._accepting else "fires once the exchange client can send"
        elif signum == signal.SIGHUP:
            action = "reloads" if self._ready else "reloads after daemon.ready"
        else:
            action = "stops"
        if not self._ready:
            with contextlib.suppress(Exception):  # the signal is acted on whatever the log does
                self._log.info("signal.during_startup", signal=name, action=action)
        if signum == signal.SIGUSR1:
            if self._accepting:
                self.parts._fire("signal", name)
            else:
                self._deferred_triggers += 1
        elif signum == signal.SIGHUP:
            if self._ready:
                self._schedule_reload()
            else:
                self._reload_wanted = True
        else:
            self._on_stop(name)

    def _on_stop(self, why: str) -> None:
        first = not self._stop.is_set()
        self._stop.set()  # before the event, and whatever logging it does: the stop is honoured
        if first:
            with contextlib.suppress(Exception):
                self._log.info("daemon.stop_requested", signal=why)

    # ------------------------------------------------------------------ serve

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT: 0 on a clean stop, 1 on a crash or a failed start.

        One :class:`contextlib.AsyncExitStack` owns everything start-up opens
        (signal routing, store, PnL watch, exchange sessions, control socket)
        and releases it in reverse order, whatever failed; a release step that
        fails is logged (``daemon.close_failed``) and the others still run.
        """
        loop = asyncio.get_running_loop()
        install_loop_handler(loop)  # asyncio's own errors as events, not stderr text
        async with contextlib.AsyncExitStack() as stack:
            # First, so no signal is lost or fatal from here on (start-up ones are replayed).
            stack.enter_context(signals.routed_to(loop, self._on_signal))
            try:
                await self._start(stack)
            except SocketInUse as exc:  # another daemon owns the socket: no traceback to show
                self._log.critical("daemon.start_failed", error="SocketInUse", detail=str(exc))
                return 1
            except Exception as exc:
                self._log.critical(
                    "daemon.start_failed", error=type(exc).__name__, detail=str(exc), exc_info=exc
                )
                return 1
            return await self._run(stack)
        raise AssertionError("unreachable")  # mypy: the stack may swallow exceptions

    def _release(
        self, stack: contextlib.AsyncExitStack, step: str, close: Callable[[], Any]
    ) -> None:
        """Release with ``close`` when the stack unwinds; a failure is an event, not a skip."""

        async def run() -> None:
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._log.error(
                    "daemon.close_failed", step=step, error=type(exc).__name__, detail=str(exc)
                )

        stack.push_async_callback(run)

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        """Everything before the watchers run; each resource is registered for release
        before it is opened, so a half-done open is released too."""
        # Before touching the state store: is another daemon already running here?
        # (Not under socket activation: systemd's socket is live, and it is ours.)
        self.parts.activated_socket = listening_socket()
        if self.parts.activated_socket is None:
            claim_socket(self.parts.config.control.socket)
        self._release(stack, "store", self._close_store)
        self._release(stack, "alerts and journal", self.parts.telling.close)
        self.parts.telling.listen()  # first: a store that cannot open is an alert too
        problem = self.parts.store_watch.open(asyncio.get_running_loop())
        tripped, _ = self.parts.store.latch()
        unfinished = self.parts.store.unfinished_kill()
        lost = self.parts.store.lost_kill()  # decided, its record lost in a crash: resumed by proof
        last = self.parts.store.last_kill()
        self.parts._build()
        self.parts.telling.open(None if last is None else last.kill_id)
        # Fail closed: a store that could not be used as found may have held a set latch.
        self.parts.switch.restore(tripped or problem is not None, last, unfinished, lost)
        self.parts.halt.restore(self.parts.switch.state, self.parts.switch.current_kill_id)
        if problem is not None:
            self.parts.store.set_latch(True)
        self.parts.service.tripped_at = None if last is None else last.completed_at
        if self.parts.config.triggers.pnl.enabled:
            self._release(stack, "pnl watch", self.parts.pnl_watcher.close)
            self.parts.pnl_watcher.open()
        self._release(stack, "exchange", self.parts.exchange.close)
        self.parts.exchange.open()  # can send from here; start() (the first clock sync) follows

    async def _close_store(self) -> None:
        try:
            await self.parts.store.flush()
        finally:
            self.parts.store.close()

    async def _run(self, stack: contextlib.AsyncExitStack) -> int:
        crash: BaseExceptionGroup[Exception] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._tasks = {
                    "switch": tg.create_task(self.parts.switch.run(), name="switch"),
                    "heartbeat": tg.create_task(self.parts.deadman.run(), name="heartbeat"),
                }
                if self.parts.config.triggers.pnl.enabled:
                    self._tasks["pnl"] = tg.create_task(self.parts.pnl_watcher.run(), name="pnl")
                tg.create_task(self.parts.store_watch.run(self.parts._latch), name="store")
                tg.create_task(self.parts.halt.run(), name="halt")
                tg.create_task(self.parts.telling.alerter.run(), name="alerts")  # beside the kill
                # The switch runs and the exchange client can send: SIGUSR1s that came
                # during start-up fire now (coalesced into one kill), before the first
                # clock sync, the control socket and daemon.ready.
                self._accepting = True
                for _ in range(self._deferred_triggers):
                    self.parts._fire("signal", "SIGUSR1")
                self._deferred_triggers = 0
                # The first clock sync warms the pools; a kill already running does not wait.
                await self.parts.exchange.start()
                # The start-up self-test, then clock re-sync every clock_sync_interval
                # (which keeps the pools warm); the guard sweeps while tripped.
                self._tasks["exchange"] = tg.create_task(
                    self.parts._exchange_background(), name="exchange"
                )
                if self.parts.guard is not None:
                    self._tasks["guard"] = tg.create_task(self.parts.guard.run(), name="guard")
                if not self._stop.is_set():
                    self._release(stack, "control socket", self.parts.control.close)
                    await self.parts.control.start()
                    metrics = self.parts.telling.metrics_listener
                    if metrics is not None:
                        self._release(stack, "metrics listener", metrics.close)
                        await metrics.start()
                    self._announce_ready(tg)
                await self._stop.wait()
                await self._shutdown()
                raise _Stop
        except* _Stop:
            pass
        except* Exception as group:
            crash = group
        finally:
            self._tg = None
        if crash is not None:
            errors = [{"error": type(e).__name__, "detail": str(e)} for e in _leaves(crash)]
            self._log.critical("daemon.crashed", errors=errors, exc_info=crash)
            return 1
        self._log.info("daemon.stopped")
        return 0

    def _announce_ready(self, tg: asyncio.TaskGroup) -> None:
        self._log.info(
            "daemon.ready",
            state=self.parts.switch.state.value,
            pid=os.getpid(),
            version=__version__,
            targets=len(self.parts.config.targets),
            control_socket=str(self.parts.config.control.socket),
            pnl_watch=self.parts.config.triggers.pnl.enabled,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],  # uvloop | asyncio
        )
        self._ready = self.parts.ready = True
        self.parts.service.ready()
        self.parts.service.send_status(force=True)
        # What start-up allocated lives as long as the daemon: out of the collector's reach,
        # a collection on the trigger path has less to scan (LIBRARY-NOTES.md "uvloop").
        gc.freeze()
        tg.create_task(
            self.parts.service.watchdog(lambda: self._tasks, self._stop.is_set),
            name="watchdog",
        )
        if self.parts.notifier.enabled:
            tg.create_task(self.parts.service.status_loop(), name="status")
        if self.parts.cluster is not None:
            tg.create_task(self.parts.cluster.run(), name="cluster")
        if self.parts.sentinel is not None:
            tg.create_task(self.parts.sentinel.run(), name="sentinel")
        if self._reload_wanted:  # a SIGHUP during start-up: honoured now
            self._reload_wanted = False
            self._schedule_reload()

    async def _shutdown(self) -> None:
        self._log.info(
            "daemon.stopping",
            state=self.parts.switch.state.value,
            grace=self.parts.config.daemon.shutdown_grace,
        )
        self.parts.service.stopping()
        finished = await self.parts.switch.drain(self.parts.config.daemon.shutdown_grace)
        if not finished or self.parts.switch.state is State.KILLING:
            progress = self.parts.switch.progress()
            self._log.warning(
                "kill.interrupted",
                kill_id=self.parts.switch.current_kill_id,
                confirmed=None if progress is None else progress[0],
                total=None if progress is None else progress[1],
                note="resumes at the next start",
            )
        if self.parts.cluster is not None:  # the last liveness says leaving: a sentinel stands down
            await self.parts.cluster.leave()
        for name, task in self._tasks.items():
            task.cancel(f"daemon stopping ({name})")


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]

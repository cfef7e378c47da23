"""Alerts from the event stream: which events alert, their ``dedup_key``, queue and delivery.

The adapter is thin: :meth:`Alerter.listen` is a log listener
(:func:`killswitch.log.add_listener`), handed each event as a redacted dict.
For an event some receiver wants it builds one :class:`Alert` per receiver and
queues it in memory and in the state store (one ``put`` on the writer's
queue: nothing on the loop waits for the disk, so a kill's first
``cancel_all`` is never delayed); the senders run in tasks of their own.

Few and precise: a coalesced trigger does not alert (its kill already did);
the same event of the same kill (or of the daemon) alerts again at most every
``alerts.repeat_after`` seconds, the next one carrying ``suppressed``; a
kill's ``trigger.fired``, ``kill.completed``, ``kill.abandoned`` and
``switch.reset`` are never held back.  PagerDuty: a reset resolves every
incident its kill triggered there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from structlog.typing import FilteringBoundLogger

from killswitch.alerts.model import Action, Alert, severity_of
from killswitch.alerts.queue import ReceiverQueue
from killswitch.alerts.receivers import Receiver
from killswitch.alerts.sender import Delivery
from killswitch.clock import Clock
from killswitch.config.alerting import AlertsConfig
from killswitch.damping import Damper
from killswitch.store.alerts import AlertRow, AlertTable
from killswitch.store.state import StateStore

__all__ = ["Alerter"]

NEVER_HELD = frozenset({"trigger.fired", "kill.completed", "kill.abandoned", "switch.reset"})
OF_LAST_KILL = frozenset(
    {"switch.reset", "guard.swept", "exchange.rejected", "kill.stuck", "kill.abandoned"}
)
EARLY_LIMIT = 100  # events kept before the store opens (start-up: store.unavailable)
MEMORY = 4096  # (kill, event) slots remembered for numbering and repeats; older ones go
_DROP_FIELDS = ("_record", "_from_structlog", "exc_info")


class Alerter:
    def __init__(
        self,
        config: AlertsConfig,
        receivers: tuple[Receiver, ...],
        store: StateStore,
        clock: Clock,
        log: FilteringBoundLogger,
        *,
        registry: CollectorRegistry | None = None,
        current_kill: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        self.receivers = receivers
        self._table = AlertTable(store)
        self._store = store
        self._clock = clock
        self._log = log
        self._current_kill = current_kill
        self._wanted = frozenset().union(*(r.events for r in receivers))
        self._damper = Damper()
        self._queues = {r.name: ReceiverQueue(config.max_queued, self._dropped) for r in receivers}
        self.deliveries = {
            r.name: Delivery(
                r,
                self._queues[r.name],
                clock,
                log,
                self._damper,
                timeout=config.timeout,
                retry_max=config.retry_max,
                on_result=self._result,
            )
            for r in receivers
        }
        self._counters: dict[tuple[str, str], int] = {}
        self._last_at: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._incidents: dict[tuple[str, str], list[str]] = {}  # (receiver, kill_id): keys
        self._last_kill: str | None = None
        self._early: list[dict[str, Any]] | None = []  # None once open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self.errors = 0
        self._metrics(registry)

    @property
    def enabled(self) -> bool:
        return bool(self.receivers)

    def _metrics(self, registry: CollectorRegistry | None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.sent = Counter("killswitch_alerts_sent", "Alerts delivered", ["receiver"], registry=r)
        self.failed = Counter(
            "killswitch_alerts_failed", "Delivery attempts that failed", ["receiver"], registry=r
        )
        self.dropped = Counter(
            "killswitch_alerts_dropped",
            "Pending alerts dropped to keep a receiver's queue bounded",
            ["receiver"],
            registry=r,
        )
        queued = Gauge(
            "killswitch_alerts_queued", "Alerts waiting for delivery", ["receiver"], registry=r
        )
        for name, queue in self._queues.items():
            queued.labels(name).set_function(_length(queue))

    # ------------------------------------------------------------------ the event stream

    def listen(self, event: Mapping[str, Any]) -> None:
        """The log listener: never raises, never blocks (a kill logs through here)."""
        try:
            name = event.get("event")
            kill_id = event.get("kill_id")
            if isinstance(kill_id, str):
                self._last_kill = kill_id
            if name not in self._wanted:
                return
            fields = {k: v for k, v in event.items() if k not in _DROP_FIELDS}
            if self._loop is not None and threading.get_ident() != self._thread:
                self._loop.call_soon_threadsafe(self._accept, fields)
            elif self._early is not None:
                if len(self._early) < EARLY_LIMIT:
                    self._early.append(fields)
            else:
                self._accept(fields)
        except Exception:  # an alert must never break the log call it rides on
            self.errors += 1

    def _scope(self, name: str, fields: dict[str, Any]) -> str | None:
        kill_id = fields.get("kill_id")
        if isinstance(kill_id, str):
            return kill_id
        current = self._current_kill()
        if current is not None and name != "switch.reset":
            return current
        if name in OF_LAST_KILL:
            return self._last_kill
        return None

    def _accept(self, fields: dict[str, Any]) -> None:
        name = str(fields["event"])
        if name == "trigger.fired" and fields.get("coalesced") and not fields.get("resweep"):
            return  # its kill alerted already
        kill_id = self._scope(name, fields)
        scope = kill_id or "daemon"
        slot = (scope, name)
        now = self._clock.monotonic()
        if name not in NEVER_HELD:
            last = self._last_at.get(slot)
            if last is not None and now - last < self.config.repeat_after:
                self._suppressed[slot] = self._suppressed.get(slot, 0) + 1
                return
        self._last_at[slot] = now
        suppressed = self._suppressed.pop(slot, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        if kill_id is not None:
            fields.setdefault("kill_id", kill_id)
        n = self._counters.get(slot, 0) + 1
        self._counters[slot] = n
        if len(self._counters) > MEMORY:  # a daemon that lives through many kills
            _forget_oldest(self._counters)
            _forget_oldest(self._last_at)
        key = f"{scope}:{name}:{n}"
        severity = severity_of(name, fields)
        wall = self._clock.time()
        for receiver in self.receivers:
            if name not in receiver.events:
                continue
            if receiver.format == "pagerduty" and name == "switch.reset":
                for incident in self._incidents.pop((receiver.name, scope), []):
                    self._queue(
                        Alert(receiver.name, incident, name, kill_id, severity, fields, wall),
                        Action.RESOLVE,
                    )
                continue
            self._queue(Alert(receiver.name, key, name, kill_id, severity, fields, wall))

    def _queue(self, alert: Alert, action: Action = Action.TRIGGER) -> None:
        alert.action = action
        if not self._queues[alert.receiver].add(alert):
            return
        receiver = next(r for r in self.receivers if r.name == alert.receiver)
        if receiver.format == "pagerduty" and action is Action.TRIGGER and alert.kill_id:
            self._incidents.setdefault((alert.receiver, alert.kill_id), []).append(alert.dedup_key)
        alert.stored = self._table.insert(
            receiver=alert.receiver,
            dedup_key=alert.dedup_key,
            action=action.value,
            event=alert.event,
            kill_id=alert.kill_id,
            severity=alert.severity.value,
            fields=alert.fields,
            created_at=alert.created_at,
        )

    # ------------------------------------------------------------------ lifecycle

    def open(self, last_kill: str | None) -> None:
        """The store is open: create the table, restore what a previous run left, then
        queue what was logged before (start-up).  Reads wait for the writer (start-up only)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        if self._last_kill is None:
            self._last_kill = last_kill
        self._table.create()
        names = {r.name for r in self.receivers}
        for receiver, key, kill_id, action in self._table.known_keys():
            scope, _, rest = key.partition(":")
            event, _, number = rest.rpartition(":")
            if number.isdigit():
                slot = (scope, event)
                self._counters[slot] = max(self._counters.get(slot, 0), int(number))
            if action == Action.TRIGGER.value and kill_id and receiver in names:
                self._incidents.setdefault((receiver, kill_id), []).append(key)
        for row in self._table.pending():
            self._restore(row, names)
        early, self._early = self._early or [], None
        for fields in early:
            self._accept(fields)

    def _restore(self, row: AlertRow, names: set[str]) -> None:
        if row.receiver not in names:
            self._log.warning(
                "alert.orphaned", receiver=row.receiver, dedup_key=row.dedup_key,
                note="no receiver of that name is configured any more; kept in the store",
            )  # fmt: skip
            return
        alert = Alert(
            row.receiver,
            row.dedup_key,
            row.event,
            row.kill_id,
            severity_of(row.event, {**row.fields, "level": row.fields.get("level")}),
            row.fields,
            row.created_at,
            action=Action(row.action),
            attempts=row.attempts,
        )
        self._queues[row.receiver].add(alert)

    async def run(self) -> None:
        """Deliver, one task per receiver, until cancelled."""
        if not self.receivers:
            return
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
            for delivery in self.deliveries.values():
                tg.create_task(delivery.run(session), name=f"alerts-{delivery.receiver.name}")

    # ------------------------------------------------------------------ outcomes

    def _result(self, alert: Alert, ok: bool, error: str | None) -> None:
        receiver, key, action = alert.ident
        if ok:
            self.sent.labels(receiver).inc()
            self._table.delivered(receiver, key, action, self._clock.time(), alert.attempts)
        else:
            self.failed.labels(receiver).inc()
            self._table.failed(receiver, key, action, alert.attempts, error or "failed")

    def _dropped(self, alert: Alert) -> None:
        self.dropped.labels(alert.receiver).inc()
        self._table.remove(*alert.ident)
        level = "critical" if alert.critical else "warning"
        self._damper.log(
            self._log, level, "alert.dropped", key=alert.receiver, **alert.describe(),
            note="the receiver's queue is full (alerts.max_queued): the oldest went",
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        """``GET /status`` ``alerts``: each receiver by name (never its URL)."""
        return {
            name: {
                "format": d.receiver.format,
                "queued": len(self._queues[name]),
                "failing": d.failures,
                "last_error": d.last_error,
            }
            for name, d in self.deliveries.items()
        }


def _length(queue: ReceiverQueue) -> Callable[[], float]:
    return lambda: float(len(queue))


def _forget_oldest(table: dict[tuple[str, str], Any]) -> None:
    """Keep the newest half of :data:`MEMORY` entries (dicts keep insertion order)."""
    for old in list(table)[: max(0, len(table) - MEMORY // 2)]:
        del table[old]

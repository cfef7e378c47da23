"""Structured events: one JSON object per line on stdout (contract §8).

Events are names with typed fields (``kill.completed cancelled=412``).  A
redaction processor scrubs every registered secret value from every field and
drops fields whose name looks like a credential, so no event can leak one.

Nothing else reaches stdout or stderr while ``log.format = "json"``: records of
the standard library's ``logging`` (asyncio, aiohttp) go through
``structlog.stdlib.ProcessorFormatter`` with the same processors and become
``python.log`` events, warnings become ``python.warning`` events, and an
uncaught exception (main thread, other threads, "exception ignored", the
event loop's handler once :func:`install_loop_handler` ran) is an event too.

In the daemon, ``sys.stdout`` and ``sys.stderr`` are best-effort and bounded
(:mod:`killswitch.logsink`): writing an event never blocks and never raises; a
line that could not be written is counted and reported once as ``log.dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from killswitch import logsink
from killswitch.damping import Damper

__all__ = [
    "Redactor",
    "add_listener",
    "add_tap",
    "configure_logging",
    "get_logger",
    "install_loop_handler",
    "redactor",
    "tell_listeners",
]

_SENSITIVE_NAMES = ("secret", "password", "api_key", "apikey", "signature", "authorization")
REDACTED = "**redacted**"


class Redactor:
    """A structlog processor that removes secrets from events."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def register(self, values: Iterable[str]) -> None:
        self._values.update(v for v in values if len(v) >= 4)

    def clear(self) -> None:
        self._values.clear()

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._values:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._field(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def _field(self, name: str, value: Any) -> Any:
        lowered = name.lower()
        if any(s in lowered for s in _SENSITIVE_NAMES) and not lowered.endswith("_env"):
            return REDACTED
        return self.scrub(value)

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        return {k: self._field(k, v) for k, v in event.items()}


redactor = Redactor()


_handler: logging.Handler | None = None  # the root handler configure_logging() installed


def _foreign_event(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    """A stdlib record: the contract's event name, the text as ``message``."""
    record = event.get("_record")
    origin = getattr(record, "name", "root")
    event["message"] = event.get("event")
    event["event"] = "python.warning" if origin == "py.warnings" else "python.log"
    event["logger"] = origin
    return event


_taps: list[Callable[[str], None]] = []


def add_tap(tap: Callable[[str], None]) -> Callable[[], None]:
    """Also hand every rendered event line to ``tap`` (it must not block); returns the remover."""
    _taps.append(tap)
    return lambda: _taps.remove(tap)


def _tap(logger: WrappedLogger, name: str, line: Any) -> Any:
    # After the renderer: ``line`` is the text written to stdout (the cluster's events subject).
    for tap in _taps:
        tap(line)
    return line


_listeners: list[Callable[[EventDict], None]] = []


def add_listener(listener: Callable[[EventDict], None]) -> Callable[[], None]:
    """Also hand every event, as a redacted dict, to ``listener`` (it must not block, and must
    not keep or change the dict); returns the remover.  The alerts read events here."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def tell_listeners(event: str, **fields: Any) -> None:
    """Hand an event that is not written (a debug event at level info: ``order.status``)
    to the listeners alone, as the log would have: the kill's record still learns it."""
    if not _listeners:
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    record = {**structlog.contextvars.get_contextvars(), **fields, "event": event}
    record.update(level="debug", timestamp=stamp)
    _listen(None, "debug", redactor(None, "debug", record))


def _listen(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    for listener in _listeners:
        listener(event)
    return event


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    *,
    buffer_lines: int | None = None,
) -> None:
    """Install the daemon's processor chain; safe to call again on reload.

    Also routes the standard library's logging, warnings and uncaught
    exceptions into the same stream as events (see the module docstring).
    ``buffer_lines`` bounds what the daemon's stdout and stderr sinks hold
    while their reader is slow (``log.buffer_lines``).
    """
    global _handler
    out = sys.stdout if stream is None else stream
    if buffer_lines is not None:
        logsink.set_capacity(buffer_lines)
    logsink.set_reporter(_report_dropped)
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    exceptions: Processor = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    if fmt == "console":
        # ConsoleRenderer takes the traceback as text (a dict traceback made it raise
        # TypeError on every logged exception); as text before the redactor, no locals.
        exceptions = structlog.processors.format_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            exceptions,
            redactor,
            _listen,
            renderer,
            _tap,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    foreign: list[Processor] = [
        structlog.stdlib.add_log_level,
        _foreign_event,
        timestamper,
        structlog.processors.StackInfoRenderer(),
    ]
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                redactor,
                renderer,
                _tap,
            ],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    sys.unraisablehook = _unraisablehook
    threading.excepthook = _thread_excepthook


def _report_dropped(stream: str, dropped: int, total: int) -> None:
    """Once writing works again: how many lines were lost (from the sink's writer thread)."""
    get_logger().warning(
        "log.dropped",
        stream=stream,
        dropped=dropped,
        total=total,
        note="the reader of the log was slow or gone; the state store has the record",
    )


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    get_logger().critical(
        "python.uncaught", error=kind.__name__, detail=str(value), exc_info=(kind, value, tb)
    )


def _unraisablehook(unraisable: Any) -> None:
    exc = unraisable.exc_value
    get_logger().error(
        "python.unraisable",
        message=unraisable.err_msg or "Exception ignored in",
        object=repr(unraisable.object)[:200],
        error=type(exc).__name__ if exc is not None else None,
        detail=str(exc) if exc is not None else None,
    )


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    get_logger().critical(
        "python.thread_crashed",
        thread=None if args.thread is None else args.thread.name,
        error=args.exc_type.__name__,
        detail=str(args.exc_value),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
        if args.exc_value is not None
        else None,
    )


def install_loop_handler(loop: asyncio.AbstractEventLoop, damper: Damper | None = None) -> None:
    """The loop's exception handler logs ``loop.exception`` events, damped by message.

    asyncio reports here what no task awaited ("Task exception was never
    retrieved"), failing callbacks and out-of-file-descriptor accept errors;
    the default handler would write a text traceback to stderr.
    """
    damp = damper if damper is not None else Damper()
    log = get_logger()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled exception in the event loop")
        exc = context.get("exception")
        fields: dict[str, Any] = {"message": message}
        if isinstance(exc, BaseException):
            fields.update(error=type(exc).__name__, detail=str(exc), exc_info=exc)
        for name in ("task", "future", "handle"):
            if context.get(name) is not None:
                fields[name] = repr(context[name])[:200]
        damp.error(log, "loop.exception", key=message, **fields)

    loop.set_exception_handler(handle)


def get_logger(**bound: Any) -> FilteringBoundLogger:
    """A structlog logger; ``bound`` fields go on every event it emits."""
    logger = structlog.get_logger()
    return cast(FilteringBoundLogger, logger.bind(**bound) if bound else logger)

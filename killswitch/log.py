"""Structured events: one JSON object per line on stdout (contract §8).

Events are names with typed fields (``kill.completed cancelled=412``).  A
redaction processor scrubs every registered secret value from every field and
drops fields whose name looks like a credential, so no event can leak one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = ["Redactor", "add_tap", "configure_logging", "get_logger", "redactor"]

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


def _rename_level(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    # structlog names "warn" differently depending on the call; keep the contract's names.
    if event.get("level") == "warn":
        event["level"] = "warning"
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


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Install the daemon's processor chain; safe to call again on reload."""
    out = sys.stdout if stream is None else stream
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _rename_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redactor,
            renderer,
            _tap,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    """A structlog logger; ``bound`` fields go on every event it emits."""
    logger = structlog.get_logger()
    return logger.bind(**bound) if bound else logger

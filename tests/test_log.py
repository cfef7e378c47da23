"""Nothing but JSON events: library logs, warnings and uncaught exceptions included."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest
import structlog

from killswitch.log import configure_logging, get_logger, install_loop_handler
from tests.harness import check_json_output


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """configure_logging() into a buffer; every global it touches is restored after."""
    out = io.StringIO()
    root = logging.getLogger()
    saved = (
        sys.excepthook,
        sys.unraisablehook,
        threading.excepthook,
        list(root.handlers),
        root.level,
        structlog.get_config(),
    )
    configure_logging("info", "json", out)
    yield out
    logging.captureWarnings(False)
    sys.excepthook, sys.unraisablehook, threading.excepthook = saved[:3]
    root.handlers[:] = saved[3]
    root.setLevel(saved[4])
    structlog.configure(**saved[5])


def _events(out: io.StringIO) -> list[dict[str, object]]:
    check_json_output("stdout", out.getvalue().encode(), 0)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_library_logs_warnings_and_uncaught_exceptions_are_events(stream: io.StringIO) -> None:
    """A stdlib record, a warning, sys.excepthook and a thread's crash: one JSON event each."""
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=ValueError("x"))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    try:
        raise KeyError("boom")
    except KeyError:
        sys.excepthook(*sys.exc_info())
    thread = threading.Thread(target=lambda: 1 / 0, name="worker")
    thread.start()
    thread.join()
    get_logger().info("ours", secret_value="x")
    events = _events(stream)
    assert [(e["event"], e["level"]) for e in events] == [
        ("python.log", "error"),
        ("python.warning", "warning"),
        ("python.uncaught", "critical"),
        ("python.thread_crashed", "critical"),
        ("ours", "info"),
    ]
    assert events[0]["logger"] == "aiohttp.server"
    assert events[0]["message"] == "Error handling request"
    assert "careful" in str(events[1]["message"])
    assert events[2]["error"] == "KeyError"
    assert events[3]["thread"] == "worker"
    assert events[4]["secret_value"] == "**redacted**"


async def test_loop_exception_handler_logs_damped_events(stream: io.StringIO) -> None:
    """The loop's handler: "Task exception was never retrieved" as loop.exception, damped."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    install_loop_handler(loop)
    try:
        for _ in range(20):
            loop.call_exception_handler(
                {"message": "Task exception was never retrieved", "exception": OSError(24, "x")}
            )
    finally:
        loop.set_exception_handler(previous)
    events = _events(stream)
    assert [e["event"] for e in events] == ["loop.exception"] * 5
    assert events[0]["error"] == "OSError"
    assert events[0]["level"] == "error"

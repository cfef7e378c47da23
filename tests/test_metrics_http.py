"""``[metrics] listen`` (contract §16): only GET /metrics over TCP; a port taken is an event."""

from __future__ import annotations

import socket

import aiohttp
import structlog
from structlog.testing import capture_logs

from killswitch.service.metrics_http import MetricsListener


async def test_only_get_metrics_is_served() -> None:
    """GET /metrics answers the rendered text; every other path is 404, other methods 405."""
    listener = MetricsListener("127.0.0.1", 0, lambda: b"killswitch_up 1\n", structlog.get_logger())
    assert await listener.start()
    assert listener.bound is not None
    base = f"http://127.0.0.1:{listener.bound[1]}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert await resp.text() == "killswitch_up 1\n"
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            for method, path, status in (
                ("POST", "/metrics", 405),
                ("DELETE", "/metrics", 405),
                ("GET", "/status", 404),
                ("POST", "/trigger", 404),
                ("POST", "/reset", 404),
                ("POST", "/heartbeat", 404),
            ):
                async with session.request(method, f"{base}{path}") as resp:
                    assert resp.status == status, (method, path)
    finally:
        await listener.close()


async def test_a_port_in_use_is_an_event_not_a_failed_start() -> None:
    """A port another process holds: ``metrics.listen_failed`` and False, nothing raised."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = MetricsListener("127.0.0.1", port, lambda: b"", structlog.get_logger())
        with capture_logs() as logs:
            assert not await listener.start()
        await listener.close()
    failed = [e for e in logs if e["event"] == "metrics.listen_failed"]
    assert failed[0]["listen"] == f"127.0.0.1:{port}"

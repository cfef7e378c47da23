"""The daemon in-process against the simulated exchange on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from killswitch.config.load import load_config
from killswitch.exchange.credentials import load_credentials
from killswitch.service.daemon import Daemon
from killswitch.service.notify import Notifier
from killswitch.sim import DEMO_API_KEY, DEMO_API_SECRET, SimExchange
from tests.harness import write_config

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
Running = tuple[Daemon, SimExchange, list[MutableMapping[str, Any]]]


@pytest.fixture
async def running(
    workdir: Path, sim_factory: SimFactory
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start Daemon.serve() as a task in this loop; stopped after the test."""
    tasks: list[tuple[Daemon, asyncio.Task[int]]] = []
    logs_cm = capture_logs(processors=[structlog.contextvars.merge_contextvars])
    logs = logs_cm.__enter__()

    async def start(sim_overrides: dict[str, Any] | None = None, **overrides: Any) -> Running:
        sim, url = await sim_factory(
            **{
                "status_limit": (2000, 1.0),
                "seed": 11,
                "cancel_delay": (0.01, 0.1),
                **(sim_overrides or {}),
            }
        )
        config = load_config(write_config(workdir, url, **overrides))
        creds = load_credentials(
            config.exchange,
            {"KILLSWITCH_API_KEY": DEMO_API_KEY, "KILLSWITCH_API_SECRET": DEMO_API_SECRET},
        )
        daemon = Daemon(config, creds, notifier=Notifier(None))
        task = asyncio.create_task(daemon.serve())
        tasks.append((daemon, task))
        async with asyncio.timeout(10):
            while not any(e["event"] == "daemon.ready" for e in logs):
                await asyncio.sleep(0.005)
        return daemon, sim, logs

    yield start
    for daemon, task in tasks:
        daemon._on_stop("test teardown")
        assert await asyncio.wait_for(task, 15) == 0
    logs_cm.__exit__(None, None, None)


async def _until(
    logs: list[MutableMapping[str, Any]], name: str, count: int = 1
) -> MutableMapping[str, Any]:
    async with asyncio.timeout(20):
        while True:
            found = [e for e in logs if e["event"] == name]
            if len(found) >= count:
                return found[count - 1]
            await asyncio.sleep(0.005)


async def test_manual_trigger_kills_and_matches_exchange(running: Any) -> None:
    """A manual trigger cancels every order; kill.completed matches the exchange's truth."""
    daemon, sim, logs = await running(sim_overrides={"fill_ratio": 0.2})
    sim.seed({"BTCUSDT": 40, "ETHUSDT": 10})
    assert daemon.parts.answers.trigger("test")["outcome"] == "started"
    done = await _until(logs, "kill.completed")
    truth = sim.stats()["orders"]
    assert done["cancelled"] == truth["CANCELLED"]
    assert done["filled"] == truth["EXECUTED"]
    assert done["cancelled"] + done["filled"] == 50
    assert daemon.parts.answers.status()["state"] == "TRIPPED"
    assert sum(sim.stats()["violations"].values()) == 0


async def test_cancel_all_retried_through_server_errors(running: Any) -> None:
    """Two 503s on cancel_all are retried with backoff until the exchange acknowledges."""
    daemon, sim, logs = await running()
    sim.seed({"BTCUSDT": 5})
    sim.inject("cancel_all", "503", count=2)
    daemon.parts.answers.trigger("test")
    done = await _until(logs, "kill.completed")
    failed = [e for e in logs if e["event"] == "cancel_all.failed"]
    assert [e["error"] for e in failed] == ["server_error", "server_error"]
    assert [e["attempt"] for e in failed] == [1, 2]
    assert all(e["retry_in"] > 0 for e in failed)
    assert done["cancelled"] == 5
    assert sim.stats()["requests"]["cancel_all"] == 3


async def test_dry_run_sends_nothing(running: Any) -> None:
    """exchange.dry_run: the kill runs through, the exchange receives no request."""
    daemon, sim, logs = await running(exchange={"dry_run": True})
    sim.seed({"BTCUSDT": 5})
    daemon.parts.answers.trigger("drill")
    done = await _until(logs, "kill.completed")
    assert done["orders"] == 0
    requests = sim.stats()["requests"]
    assert (requests["cancel_all"], requests["order_status"]) == (0, 0)
    assert sim.stats()["orders"] == {"RAISED": 5}
    assert any(e["event"] == "exchange.dry_run" for e in logs)


async def test_resumed_daemon_state_is_reported(running: Any) -> None:
    """/status carries the contract's fields and the rate-limit budget left."""
    daemon, sim, logs = await running()
    sim.seed({"BTCUSDT": 3})
    status = daemon.parts.answers.status()
    for key in ("state", "heartbeat_age", "pnl", "last_kill", "rate_limit"):
        assert key in status
    assert status["rate_limit"]["cancel_all"] == {"available": 10, "limit": 10, "next_free_in": 0.0}
    daemon.parts.answers.trigger("budget")
    await _until(logs, "kill.completed")
    assert daemon.parts.answers.status()["rate_limit"]["cancel_all"]["available"] == 9


async def test_reload_changes_targets_for_the_next_kill(running: Any, workdir: Path) -> None:
    """After a reload with per-symbol targets, the next kill sends one cancel_all per symbol."""
    daemon, sim, logs = await running()
    sim.seed({"BTCUSDT": 2, "ETHUSDT": 3})
    path = daemon.parts.config.source
    assert path is not None
    path.write_text(path.read_text().replace("symbols = []", 'symbols = ["BTCUSDT", "ETHUSDT"]'))
    daemon.reload()
    assert daemon.parts.config.targets[0].symbols == ("BTCUSDT", "ETHUSDT")
    daemon.parts.answers.trigger("after reload")
    await _until(logs, "kill.completed")
    accepted = sorted(
        (e["symbol"], e["order_count"]) for e in logs if e["event"] == "cancel_all.accepted"
    )
    assert accepted == [("BTCUSDT", 2), ("ETHUSDT", 3)]


async def test_status_heartbeat_and_metrics_show_the_venue(running: Any) -> None:
    """/status shows all six budgets, the exchange's clock and self-test, the guard; the
    heartbeat answers the state (even with its trigger off); metrics carry the new outcomes."""
    daemon, sim, logs = await running(sim_overrides={"partial_fill_ratio": 0.5})
    sim.seed({"BTCUSDT": 6})
    await _until(logs, "exchange.self_test")
    status = daemon.parts.answers.status()
    assert set(status["rate_limit"]) == {
        "cancel_all",
        "order_status",
        "open_orders",
        "closed_orders",
        "positions",
        "place_order",
    }
    assert status["exchange"]["offset_ms"] is not None
    assert status["exchange"]["self_test"]["ok"] is True
    assert status["guard"]["active"] is False
    assert status["stuck"] is None
    assert daemon.parts.answers.heartbeat()["state"] == "ARMED"
    daemon.parts.answers.trigger("metrics")
    done = await _until(logs, "kill.completed")
    assert done["flat"] is True
    assert done["partially_filled"] == sim.stats()["partially_executed"] > 0
    # The switch goes TRIPPED as the kill's task returns, a loop turn after kill.completed.
    tripped = await _until(logs, "switch.state", count=2)  # KILLING, then TRIPPED
    assert tripped["state"] == "TRIPPED"
    assert daemon.parts.answers.heartbeat()["state"] == "TRIPPED"
    assert daemon.parts.answers.status()["guard"]["active"] is True
    text = daemon.parts.answers.metrics().decode()
    partial = (
        f'killswitch_orders_final_total{{outcome="partially_filled"}} {done["partially_filled"]}.0'
    )
    assert partial in text
    assert "killswitch_exchange_self_test_ok 1.0" in text
    assert "killswitch_last_kill_flat 1.0" in text
    assert 'killswitch_ratelimit_available{endpoint="closed_orders"}' in text
    assert 'killswitch_exchange_requests_sent_total{endpoint="open_orders",outcome="ok"}' in text


async def test_failed_self_test_shows_and_the_daemon_keeps_running(running: Any) -> None:
    """The venue refuses the key: the start-up self-test fails loudly (exchange.rejected with
    the venue's message), status, metrics and systemd's STATUS= line say so, and the
    daemon stays up and armed."""
    daemon, _sim, logs = await running(sim_overrides={"api_key": "a-key-the-daemon-lacks"})
    rejected = await _until(logs, "exchange.rejected")
    assert rejected["http_status"] == 401
    await _until(logs, "exchange.self_test")
    test = daemon.parts.answers.status()["exchange"]["self_test"]
    assert test["ok"] is False
    assert test["checks"][0]["http_status"] == 401
    assert "killswitch_exchange_self_test_ok 0.0" in daemon.parts.answers.metrics().decode()
    assert "self-test FAILED (HTTP 401" in daemon.parts.service.status_line()
    assert daemon.parts.answers.status()["state"] == "ARMED"
    assert not any(e["event"] == "daemon.crashed" for e in logs)

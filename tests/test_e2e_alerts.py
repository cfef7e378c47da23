"""End to end: alerts from a real daemon to webhook receivers on loopback (contract §16).

Each format (JSON, Slack, PagerDuty), a receiver that fails then recovers,
one that is down across a SIGKILL and a restart, one that hangs through a
kill; and in every output and file, no URL and no key.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.service.control import ControlClient
from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]
PD_KEY = "R0UTINGKEY" + "7" * 22


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Start webhook receivers on loopback; all are stopped after the test."""
    started: list[Receiver] = []

    async def start(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


def _config(workdir: Path, url: str, hooks: list[dict[str, Any]], **extra: Any) -> Path:
    alerts = {"webhook": hooks, "timeout": 0.5, "retry_max": 0.3, **extra}
    return write_config(workdir, url, alerts=alerts)


async def _request(workdir: Path, method: str, route: str) -> tuple[int, Any]:
    return await ControlClient(workdir / "ctl.sock").request(method, route)


def _secrets_absent(secrets: list[str], daemon: DaemonProcess, workdir: Path, *texts: str) -> None:
    """No URL, token or key in the daemon's stdout/stderr, the texts given, or any file the
    daemon wrote (state.db and its WAL included)."""
    blobs = {"stdout": b"".join(daemon.raw), "stderr": daemon.stderr}
    blobs.update({f"text{i}": t.encode() for i, t in enumerate(texts)})
    for path in workdir.iterdir():
        if path.is_file():
            blobs[path.name] = path.read_bytes()
    for secret in secrets:
        for name, blob in blobs.items():
            assert secret.encode() not in blob, f"{secret[:6]}... found in {name}"


async def test_each_format_reaches_its_receiver_and_no_secret_is_anywhere(
    workdir: Path, sim_factory: SimFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    """One kill and a reset: the JSON receiver gets the events with their dedup_key, Slack
    a text in words, PagerDuty trigger events with the routing key and, after the reset,
    resolves for the same dedup_keys; no URL or key in any output, status, metric or file."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 5})
    plain, slack, pager = (
        await receivers(),
        await receivers(),
        await receivers(pagerduty=True),
    )
    hooks = [
        {"url_env": "HOOK_JSON", "format": "json"},
        {"url_env": "HOOK_SLACK", "format": "slack"},
        {"url_env": "HOOK_PD", "format": "pagerduty", "routing_key_env": "HOOK_PD_KEY"},
    ]
    env = daemon_env(
        HOOK_JSON=plain.url, HOOK_SLACK=slack.url, HOOK_PD=pager.url, HOOK_PD_KEY=PD_KEY
    )
    config = _config(workdir, url, hooks)
    daemon = DaemonProcess(config, env)
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    kill = done["kill_id"]
    await plain.wait_accepted(2)
    assert (await _request(workdir, "POST", "/reset"))[0] == 200
    await plain.wait_accepted(3)
    await slack.wait_accepted(3)
    await pager.wait_accepted(4)

    assert [(a["event"], a["dedup_key"]) for a in plain.accepted] == [
        ("trigger.fired", f"{kill}:trigger.fired:1"),
        ("kill.completed", f"{kill}:kill.completed:1"),
        ("switch.reset", f"{kill}:switch.reset:1"),
    ]
    assert plain.accepted[1]["cancelled"] == 5
    fired, completed, reset = (a["text"] for a in slack.accepted)
    assert "FIRED" in fired
    assert "signal" in fired
    assert "5 cancelled" in completed
    assert "FLAT" in completed
    assert "position" in completed.lower()
    assert "What to do" in completed
    assert "reset" in reset
    actions = [(a["event_action"], a["dedup_key"]) for a in pager.accepted]
    assert actions == [
        ("trigger", f"{kill}:trigger.fired:1"),
        ("trigger", f"{kill}:kill.completed:1"),
        ("resolve", f"{kill}:trigger.fired:1"),
        ("resolve", f"{kill}:kill.completed:1"),
    ]
    assert all(a["routing_key"] == PD_KEY for a in pager.accepted)
    assert pager.accepted[0]["payload"]["severity"] == "critical"
    status = json.dumps((await _request(workdir, "GET", "/status"))[1])
    assert set(json.loads(status)["alerts"]) == {"HOOK_JSON", "HOOK_SLACK", "HOOK_PD"}
    _, metrics = await ControlClient(workdir / "ctl.sock").request(
        "GET", "/metrics", parse=bytes.decode
    )
    assert 'killswitch_alerts_sent_total{receiver="HOOK_PD"}' in metrics
    await daemon.wait_for("alert.sent", count=3 + 3 + 4)  # logged once each answer is read
    assert await daemon.stop() == 0
    checked = subprocess.run(  # noqa: ASYNC221 (the daemon is stopped: nothing to serve)
        [sys.executable, "-m", "killswitch", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert checked.returncode == 0
    assert json.loads(checked.stdout)["alerts"]["secrets"] == "found (values not shown)"
    secrets = [plain.token, slack.token, pager.token, PD_KEY]
    _secrets_absent(secrets, daemon, workdir, status, metrics, checked.stdout + checked.stderr)


async def test_a_receiver_that_fails_then_recovers_gets_every_alert_once_delivered(
    workdir: Path, sim_factory: SimFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    """A receiver answering 500: alert.failed (the receiver named, not its URL), retried with
    backoff; once it answers 200 each alert arrives, every repeat with the same dedup_key."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 3})
    hook = await receivers(mode="fail")
    daemon = DaemonProcess(
        _config(workdir, url, [{"url_env": "HOOK", "format": "json"}]), daemon_env(HOOK=hook.url)
    )
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    failed = await daemon.wait_for("alert.failed", count=2)
    assert failed["receiver"] == "HOOK"
    assert failed["problem"] == "HTTP 500"
    hook.mode = "ok"
    accepted = await hook.wait_accepted(2)
    keys = [a["dedup_key"] for a in accepted]
    assert keys == [f"{done['kill_id']}:trigger.fired:1", f"{done['kill_id']}:kill.completed:1"]
    tried = {a["dedup_key"] for a in hook.received}
    assert tried == set(keys)  # every attempt, failed or not, carried one of the two keys
    assert hook.requests > 2
    assert await daemon.stop() == 0
    _secrets_absent([hook.token], daemon, workdir)


async def test_a_receiver_down_across_a_sigkill_and_restart_gets_each_alert(
    workdir: Path, sim_factory: SimFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    """The receiver is down while a kill runs; the daemon is SIGKILLed and started again,
    then the receiver comes back: the restarted daemon delivers both of the kill's alerts,
    with the dedup_keys they were queued with, and a later alert is numbered after them."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 3})
    hook = await receivers()
    await hook.stop()  # down: connection refused
    config = _config(workdir, url, [{"url_env": "HOOK", "format": "json"}])
    env = daemon_env(HOOK=hook.url)
    first = DaemonProcess(config, env)
    await first.start()
    first.send(signal.SIGUSR1)
    done = await first.wait_for("kill.completed")
    # Both queued (the oldest is retried first; the store has both rows 5 ms after queueing).
    await first.wait_for("alert.failed", lambda e: e["queued"] == 2)
    await first.kill()
    assert first.named("alert.sent") == []

    second = DaemonProcess(config, env)
    await second.start()
    await hook.start()
    accepted = await hook.wait_accepted(2)
    kill = done["kill_id"]
    assert [a["dedup_key"] for a in accepted] == [
        f"{kill}:trigger.fired:1",
        f"{kill}:kill.completed:1",
    ]
    assert accepted[1]["cancelled"] == 3
    assert (await _request(workdir, "POST", "/reset"))[0] == 200
    later = await hook.wait_accepted(3)
    assert later[2]["dedup_key"] == f"{kill}:switch.reset:1"
    assert await second.stop() == 0
    _secrets_absent([hook.token], first, workdir)
    _secrets_absent([hook.token], second, workdir)


async def test_a_hanging_receiver_does_not_hold_up_the_kill_or_the_other_receiver(
    workdir: Path, sim_factory: SimFactory, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    """A receiver that never answers: the kill completes as without it, the other receiver
    gets its alerts, and the hanging one is alert.failed after alerts.timeout, retried."""
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 20})
    stuck, fine = await receivers(mode="hang"), await receivers()
    hooks = [{"url_env": "HANG", "format": "slack"}, {"url_env": "FINE", "format": "json"}]
    daemon = DaemonProcess(_config(workdir, url, hooks), daemon_env(HANG=stuck.url, FINE=fine.url))
    await daemon.start()
    daemon.send(signal.SIGUSR1)
    done = await daemon.wait_for("kill.completed")
    assert done["cancelled"] == 20
    assert done["flat"] is True
    await fine.wait_accepted(2)
    failed = await daemon.wait_for("alert.failed", lambda e: e["receiver"] == "HANG")
    assert failed["problem"] == "no answer within 0.5 s"
    assert stuck.accepted == []
    assert sim.stats()["requests"]["cancel_all"] == 1
    assert await daemon.stop() == 0

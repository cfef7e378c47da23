"""The shipped Prometheus rules (``prometheus/``): ``promtool`` unit tests, and a real
Prometheus server that scrapes a real daemon over ``[metrics] listen`` and fires
``KillSwitchTripped`` after a real kill (contract §16).

Debian's ``prometheus`` package brings both binaries (``.ci/run`` installs it);
without them these tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.sim import SimExchange
from tests.harness import DaemonProcess, write_config
from tests.receiver import free_port

RULES = Path(__file__).resolve().parent.parent / "prometheus"
SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus)")
    return path


def test_promtool_checks_and_unit_tests_the_shipped_rules() -> None:
    """``promtool check rules`` accepts the rules and ``promtool test rules`` passes: each
    alert fires when its condition holds (for its ``for:``) and not before or after."""
    promtool = _tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES / "killswitch.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "killswitch.rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:  # not listening yet
        return 0, b""


def _method(url: str, method: str) -> int:
    request = urllib.request.Request(url, method=method, data=b"{}")  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def _alerts(api: str) -> list[dict[str, Any]]:
    code, body = await asyncio.to_thread(_get, f"{api}/api/v1/alerts")
    if code != 200:
        return []
    alerts: list[dict[str, Any]] = json.loads(body)["data"]["alerts"]
    return alerts


@pytest.mark.e2e
async def test_a_real_prometheus_fires_the_tripped_rule_after_a_real_kill(
    workdir: Path, sim_factory: SimFactory
) -> None:
    """Prometheus scrapes the daemon's TCP listener every second; before the kill no alert,
    after SIGUSR1 ``KillSwitchTripped`` fires.  The listener serves only GET /metrics (the
    text promtool accepts): /status, /trigger and /reset are 404, POST /metrics 405."""
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    sim, url = await sim_factory()
    sim.seed({"BTCUSDT": 3})
    port = free_port()
    daemon = DaemonProcess(write_config(workdir, url, metrics={"listen": f"127.0.0.1:{port}"}))
    await daemon.start()
    target = f"http://127.0.0.1:{port}"
    code, text = await asyncio.to_thread(_get, f"{target}/metrics")
    assert code == 200
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)  # noqa: ASYNC221
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for route, method, status in (
        ("/status", "GET", 404),
        ("/trigger", "POST", 404),
        ("/reset", "POST", 404),
        ("/heartbeat", "POST", 404),
        ("/metrics", "POST", 405),
    ):
        assert await asyncio.to_thread(_method, f"{target}{route}", method) == status, route

    shutil.copy(RULES / "killswitch.rules.yml", workdir / "rules.yml")
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [rules.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: killswitch\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    web = free_port()
    server = await asyncio.create_subprocess_exec(
        prometheus,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{web}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{web}"
    try:
        async with asyncio.timeout(30):
            # Up and evaluating: the target scraped (up == 1) with no alert yet.
            while True:
                code, body = await asyncio.to_thread(_get, f"{api}/api/v1/query?query=up")
                results = json.loads(body)["data"]["result"] if code == 200 else []
                if results and results[0]["value"][1] == "1":
                    break
                await asyncio.sleep(0.2)
            # (KillSwitchAbsent may be pending from an evaluation before the first scrape.)
            assert [a for a in await _alerts(api) if a["state"] == "firing"] == []
            assert "KillSwitchTripped" not in {a["labels"]["alertname"] for a in await _alerts(api)}
            daemon.send(signal.SIGUSR1)
            await daemon.wait_for("kill.completed")
            while True:
                firing = [a for a in await _alerts(api) if a["state"] == "firing"]
                if firing:
                    break
                await asyncio.sleep(0.2)
        assert [a["labels"]["alertname"] for a in firing] == ["KillSwitchTripped"]
        assert firing[0]["labels"]["severity"] == "critical"
    finally:
        server.terminate()
        await server.wait()
    assert await daemon.stop() == 0

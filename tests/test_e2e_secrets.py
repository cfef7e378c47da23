"""End to end: the API key and secret never leave the daemon but in the auth headers (§8)."""

from __future__ import annotations

import contextlib
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from killswitch.sim import SimConfig, SimExchange
from tests.harness import DaemonProcess, daemon_env, write_config

pytestmark = pytest.mark.e2e

FAULTS = ("500", "429", "malformed", "reset")


def _spellings(value: str) -> list[bytes]:
    """The ways a hex or text secret could be written out: as is, upper case, raw bytes."""
    forms = [value.encode(), value.upper().encode(), value.lower().encode()]
    with contextlib.suppress(ValueError):
        forms.append(bytes.fromhex(value))
    return forms


def _state_files(workdir: Path) -> bytes:
    """Every byte the state store left on disk: the db and any WAL or shared-memory file."""
    return b"".join(p.read_bytes() for p in sorted(workdir.glob("state.db*")))


async def test_secrets_never_in_output_or_state_under_faults(workdir: Path) -> None:
    """A debug-level kill through faults on both endpoints: no key, secret or signature leaks."""
    api_key = f"ks-e2e-key-{secrets.token_hex(12)}"
    api_secret = secrets.token_hex(32)
    signatures: list[str] = []

    @web.middleware
    async def record_signatures(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if value := request.headers.get("X-AUTH-SIGNATURE"):
            signatures.append(value)
        return await handler(request)

    sim = SimExchange(
        SimConfig(
            api_key=api_key,
            api_secret=api_secret,
            seed=21,
            cancel_delay=(0.05, 0.3),
            fill_ratio=0.1,
            status_limit=(2000, 1.0),
        )
    )
    sim.app.middlewares.append(record_signatures)
    url = await sim.start()
    try:
        sim.seed({"BTCUSDT": 20, "ETHUSDT": 10})
        for endpoint in ("cancel_all", "order_status"):
            for kind in FAULTS:
                sim.inject(endpoint, kind)
        config = write_config(workdir, url, log={"level": "debug"})
        env = daemon_env(KILLSWITCH_API_KEY=api_key, KILLSWITCH_API_SECRET=api_secret)
        daemon = DaemonProcess(config, env)
        await daemon.start()
        daemon.send(signal.SIGUSR1)
        done = await daemon.wait_for("kill.completed", timeout=30.0)
        assert await daemon.stop() == 0
    finally:
        await sim.stop()

    stats = sim.stats()
    assert not any(stats["faults_pending"].values())
    assert done["cancelled"] + done["filled"] == 30
    assert stats["answers"]["cancel_all"].get("401", 0) == 0  # the key pair really was used
    assert daemon.named("cancel_all.failed")
    assert daemon.named("order.poll_failed")
    assert any(e["level"] == "debug" for e in daemon.events)
    assert signatures

    stdout = b"".join(daemon.raw)
    state = _state_files(workdir)
    assert b"cancel_all.accepted" in stdout
    assert state
    leaks = [*_spellings(api_key), *_spellings(api_secret), *(s.encode() for s in signatures)]
    for name, data in (("stdout", stdout), ("stderr", daemon.stderr), ("state db", state)):
        for leak in leaks:
            assert leak not in data, f"a secret appears in {name}"

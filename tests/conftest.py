"""Shared fixtures: a short work directory (UNIX socket paths are short) and the sim."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from killswitch.sim import SimConfig, SimExchange
from tests.harness import DaemonProcess, check_json_output


@pytest.fixture(autouse=True)
def reap_daemons() -> Iterator[None]:
    """A test that fails half-way must not leave its daemon processes running.

    Also: every line each daemon wrote on stdout and stderr was a JSON event
    (contract §8), for daemons the test did not stop itself (``stop()`` and
    ``exited()`` check it at once, failing the test that started the daemon).
    """
    yield
    unchecked = []
    for daemon in DaemonProcess.started:
        if daemon.proc is not None and daemon.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.kill()
        if not daemon.output_checked:
            unchecked.append(daemon)
    DaemonProcess.started.clear()
    for daemon in unchecked:
        # stderr is read only once stdout closed: what was collected is checked.
        check_json_output("stdout", b"".join(daemon.raw), daemon.returncode)
        check_json_output("stderr", daemon.stderr, daemon.returncode)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh directory with a short path (UNIX socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ks-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def sim_factory() -> AsyncIterator[object]:
    """Start simulated exchanges on loopback; all are stopped after the test."""
    started: list[SimExchange] = []

    async def start(**overrides: object) -> tuple[SimExchange, str]:
        sim = SimExchange(SimConfig(**overrides))  # type: ignore[arg-type]
        url = await sim.start()
        started.append(sim)
        return sim, url

    yield start
    for sim in started:
        await sim.stop()

"""PatientFlush against a real, SIGSTOPped nats-server: a timed-out wait leaves no deaf client."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import nats
import pytest

from killswitch.cluster.flush import PatientFlush
from tests.natsserver import NatsServer, NatsUser

pytestmark = pytest.mark.e2e


async def stopped(pid: int) -> None:
    """Until the kernel shows the process stopped (SIGSTOP is delivered asynchronously)."""
    async with asyncio.timeout(5):
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            await asyncio.sleep(0.005)


async def test_a_timed_out_flush_against_a_frozen_server_leaves_the_client_hearing(
    workdir: Path,
) -> None:
    """Server SIGSTOPped: the wait says False in time; after SIGCONT the client still receives
    (nats-py's own flush(timeout) would have broken its read loop: LIBRARY-NOTES.md)."""
    user = NatsUser.new({"publish": {"allow": ["t"]}, "subscribe": {"allow": ["t"]}})
    server = NatsServer(workdir, [user])
    await server.start()
    flush = PatientFlush()
    listener = await nats.connect(server.url, nkeys_seed_str=user.seed)
    talker = await nats.connect(server.url, nkeys_seed_str=user.seed)
    try:
        sub = await listener.subscribe("t")
        assert await flush(listener, 2.0) is True
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        await stopped(server.proc.pid)
        answered = await flush(listener, 0.3)
        server.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.2)  # the late PONG arrives
        await talker.publish("t", b"still hearing")
        msg = await sub.next_msg(timeout=5)

        assert answered is False
        assert msg.data == b"still hearing"
        assert await flush(listener, 2.0) is True
    finally:
        await listener.close()
        await talker.close()
        await flush.close()
        await server.stop()

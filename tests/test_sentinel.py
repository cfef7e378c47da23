"""The sentinel's parts without a bus: its config, its messages, its judgement on a fake clock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from killswitch.cluster.liveness import Alive, LivenessPublisher, encode_alive, parse_alive
from killswitch.cluster.messages import InvalidMessage
from killswitch.cluster.verdict import DeskAgreement, Verdict, encode_verdict, parse_verdict
from killswitch.cluster.watch import Mode, Watch
from killswitch.config.load import parse_config
from killswitch.config.model import ClusterConfig, SentinelConfig, reloadable
from killswitch.config.reader import ConfigError
from killswitch.kill.switch import TriggerOutcome
from tests.fakes import FakeClock

MINIMAL = {"targets": [{"exchange": "EXCHANGE_2"}]}
CLUSTER = {"servers": ["nats://127.0.0.1:4222"], "firm": "acme", "desk": "desk-a-sentinel"}
CONFIG = SentinelConfig(desk="desk-a", timeout=3.0, reconnect_grace=2.0)
PROBE = 0.25


# --------------------------------------------------------------------------- config


def test_sentinel_table_defaults_and_liveness_interval() -> None:
    """[sentinel] desk alone: timeout 3, kill_on_leave false; [cluster] liveness_interval 0.5."""
    config = parse_config({**MINIMAL, "cluster": CLUSTER, "sentinel": {"desk": "desk-a"}})
    assert config.sentinel == SentinelConfig(desk="desk-a")
    assert config.cluster is not None
    assert config.cluster.liveness_interval == 0.5


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sentinel": {"desk": "desk-a"}}, "sentinel"),  # no [cluster]
        ({"cluster": CLUSTER, "sentinel": {}}, "sentinel.desk"),
        ({"cluster": CLUSTER, "sentinel": {"desk": "desk-a-sentinel"}}, "sentinel.desk"),
        ({"cluster": CLUSTER, "sentinel": {"desk": "a.b"}}, "sentinel.desk"),
        ({"cluster": CLUSTER, "sentinel": {"desk": "d", "timeout": 0}}, "sentinel.timeout"),
        (
            {"cluster": CLUSTER, "sentinel": {"desk": "d", "kill_on_leave": 1}},
            "sentinel.kill_on_leave",
        ),
        ({"cluster": CLUSTER, "sentinel": {"desk": "d", "bogus": 1}}, "sentinel.bogus"),
        ({"cluster": {**CLUSTER, "liveness_interval": 0}}, "cluster.liveness_interval"),
    ],
)
def test_bad_sentinel_values_name_their_key(data: dict[str, Any], key: str) -> None:
    """Each bad [sentinel] value (or a sentinel watching its own name) names its dotted key."""
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **data})
    assert err.value.key == key


def test_the_shipped_sentinel_config_loads_with_its_share_of_the_limits() -> None:
    """config/sentinel-desk-a.toml: a sentinel of desk-a with 3 + 6 + 6 of the venue's limits."""
    from killswitch.config.load import load_config

    config = load_config(Path(__file__).resolve().parent.parent / "config" / "sentinel-desk-a.toml")
    assert config.sentinel == SentinelConfig(desk="desk-a", timeout=3.0)
    assert config.cancel_all.rate_limit.requests == 3
    assert config.confirm.rate_limit.requests == 6
    assert config.flat.rate_limit.requests == 6
    assert config.positions.rate_limit.requests == 6
    assert config.flatten.rate_limit.requests == 6
    assert config.cluster is not None
    assert config.cluster.desk is None  # from the unit's KILLSWITCH_DESK


def test_sentinel_change_needs_a_restart() -> None:
    """SIGHUP keeps the running [sentinel] and names it as needing a restart."""
    old = parse_config({**MINIMAL, "cluster": CLUSTER, "sentinel": {"desk": "desk-a"}})
    new = parse_config({**MINIMAL, "cluster": CLUSTER, "sentinel": {"desk": "desk-b"}})
    applied, ignored = reloadable(old, new)
    assert applied.sentinel == old.sentinel
    assert ignored == ["sentinel"]


def test_a_sentinel_named_like_its_desk_by_the_environment_exits_2(tmp_path: Path) -> None:
    """$KILLSWITCH_DESK = the watched desk (a copied unit): one 'sentinel.desk' line, exit 2."""
    path = tmp_path / "k.toml"
    path.write_text(
        '[[targets]]\nexchange = "X"\n[cluster]\nservers = ["nats://h"]\nfirm = "a"\n'
        '[sentinel]\ndesk = "desk-a"\n'
    )
    env = {
        "KILLSWITCH_API_KEY": "k",
        "KILLSWITCH_API_SECRET": "ab" * 32,
        "KILLSWITCH_DESK": "desk-a",
        "PATH": "/usr/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "killswitch", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("config error: sentinel.desk: ")
    assert len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- messages


def test_alive_round_trip_and_garbage() -> None:
    """An alive message survives encoding; garbage is InvalidMessage, never a crash."""
    alive = Alive("desk-a", "h1", "ARMED", 7, 1_780_000_000_000, False)
    assert parse_alive(encode_alive(alive)) == alive
    for bad in (
        b"x",
        b"[]",
        b'{"desk": "d"}',
        json.dumps({**json.loads(encode_alive(alive)), "seq": -1}).encode(),
    ):
        with pytest.raises(InvalidMessage):
            parse_alive(bad)


def test_verdict_round_trip_and_killed_needs_a_kill_id() -> None:
    """A verdict survives encoding; killed without a kill_id is invalid."""
    verdict = Verdict("s@h", "desk-a", True, "k1", "sentinel", "TRIPPED", 1_780_000_000_000)
    assert parse_verdict(encode_verdict(verdict)) == verdict
    body = json.loads(encode_verdict(verdict)) | {"kill_id": None}
    with pytest.raises(InvalidMessage):
        parse_verdict(json.dumps(body).encode())


def test_desk_obeys_each_sentinel_kill_once_and_ignores_the_rest() -> None:
    """The desk fires once per sentinel kill_id; a stale, an ARMED or another desk's verdict
    changes nothing."""
    clock = FakeClock()
    fired: list[dict[str, Any]] = []

    def fire(reason: str, **detail: Any) -> TriggerOutcome:
        fired.append(detail)
        return TriggerOutcome.STARTED

    agreement = DeskAgreement("desk-a", "p.acme.desk-a.sentinel", 30.0, clock, fire)
    now = int(clock.time() * 1000)

    def verdict(**kw: Any) -> bytes:
        base = Verdict("s@h", "desk-a", True, "k1", "sentinel", "TRIPPED", now)
        return encode_verdict(Verdict(**{**base.__dict__, **kw}))

    assert agreement.receive(verdict(), "broadcast") is TriggerOutcome.STARTED
    assert agreement.receive(verdict(), "answer") is None  # the same kill again
    assert agreement.receive(verdict(killed=False, kill_id=None), "answer") is None
    assert agreement.receive(verdict(desk="desk-b", kill_id="k2"), "broadcast") is None
    assert agreement.receive(verdict(kill_id="k3", sent_at=now - 31_000), "broadcast") is None
    assert agreement.receive(b"garbage", "broadcast") is None
    assert [d["sentinel_kill_id"] for d in fired] == ["k1"]
    assert agreement.receive(verdict(kill_id="k4"), "broadcast") is TriggerOutcome.STARTED


# --------------------------------------------------------------------------- the watch


class Bench:
    """A Watch on a fake clock, with a probe every 0.25 s that comes back at once."""

    def __init__(self, config: SentinelConfig = CONFIG) -> None:
        self.clock = FakeClock()
        self.fires: list[tuple[float, str]] = []
        self.watch = Watch(
            config, self.clock, lambda s, r: self.fires.append((s, r)), structlog.get_logger()
        )

    def run(self, seconds: float, *, alive_every: float | None = None, link: bool = True) -> None:
        """``seconds`` of probes (up or lost) and, optionally, liveness every ``alive_every``."""
        end = self.clock.monotonic() + seconds
        next_alive = self.clock.monotonic()
        while self.clock.monotonic() < end - 1e-9:
            now = self.clock.monotonic()
            if alive_every is not None and now >= next_alive - 1e-9:
                self.alive()
                next_alive = now + alive_every
            if link:
                self.watch.probe_ok(now)
            else:
                self.watch.link_lost("probe unanswered")
            self.clock._now += PROBE  # a synchronous walk of time

    def alive(self, leaving: bool = False) -> None:
        self.watch.alive(Alive("desk-a", "h", "ARMED", 1, 1, leaving))


def test_a_desk_silent_for_a_proven_timeout_is_fired_on_once() -> None:
    """Liveness then silence over a working link: one fire after timeout, none before."""
    bench = Bench()
    bench.run(2.0, alive_every=0.5)
    bench.alive()  # the last one, at t = 2.0
    bench.run(2.9)
    assert bench.fires == []
    bench.run(0.5)
    bench.run(10)
    assert len(bench.fires) == 1
    assert bench.fires[0][0] >= CONFIG.timeout
    assert bench.watch.mode is Mode.FIRED


def test_blind_never_fires_and_waits_timeout_plus_grace_after_the_link_returns() -> None:
    """A link down for 3 x timeout: blind, no fire; back up and not hearing the desk, it waits
    a full timeout plus the reconnect grace before it fires."""
    bench = Bench()
    bench.run(1.0, alive_every=0.5)
    with capture_logs() as logs:
        bench.run(3 * CONFIG.timeout, link=False)
    assert bench.fires == []
    assert bench.watch.blind
    assert [e["event"] for e in logs] == ["sentinel.blind"]  # once per blind spell
    bench.run(CONFIG.timeout + CONFIG.reconnect_grace - 0.5)
    assert bench.fires == []
    bench.run(1.0)
    assert len(bench.fires) == 1


def test_a_desk_heard_after_the_outage_is_judged_from_its_last_liveness() -> None:
    """After an outage, a desk heard again is watched from that liveness (no extra grace)."""
    bench = Bench()
    bench.run(1.0, alive_every=0.5)
    bench.run(3.0, link=False)
    bench.run(0.5, alive_every=0.25)
    bench.run(CONFIG.timeout + 0.5)
    assert len(bench.fires) == 1


def test_a_leaving_desk_stands_the_sentinel_down_until_it_is_heard_again() -> None:
    """leaving: sentinel.standdown and no fire however long; the next liveness: watching."""
    bench = Bench()
    bench.run(1.0, alive_every=0.5)
    with capture_logs() as logs:
        bench.alive(leaving=True)
        bench.run(30)
        bench.alive()
    assert bench.fires == []
    assert [e["event"] for e in logs] == ["sentinel.standdown", "sentinel.watching"]
    assert bench.watch.mode is Mode.WATCHING


def test_kill_on_leave_fires_at_the_leaving_message() -> None:
    """kill_on_leave: the leaving message itself fires."""
    bench = Bench(SentinelConfig(desk="desk-a", timeout=3.0, kill_on_leave=True))
    bench.run(1.0, alive_every=0.5)
    bench.alive(leaving=True)
    assert len(bench.fires) == 1
    assert "left" in bench.fires[0][1]


def test_a_desk_never_seen_is_reported_not_killed() -> None:
    """No liveness since start: sentinel.never_seen (critical) after timeout + grace, no fire."""
    bench = Bench()
    with capture_logs() as logs:
        bench.run(30)
    assert bench.fires == []
    assert [(e["event"], e["log_level"]) for e in logs] == [("sentinel.never_seen", "critical")]
    assert bench.watch.status()["state"] == "never_seen"


def test_killswitch_status_shows_the_sentinel_row() -> None:
    """killswitch status on a sentinel: its state, desk, when last heard, and BLIND."""
    from killswitch.cli import format_status

    base: dict[str, Any] = {"state": "ARMED", "last_kill": None, "rate_limit": {}}
    watching = {"desk": "desk-a", "state": "watching", "last_seen_s": 0.2, "blind": False}
    text = format_status({**base, "sentinel": watching})
    blind = format_status({**base, "sentinel": {**watching, "blind": True}})
    assert "sentinel" not in format_status(base)
    assert "watching desk desk-a, last heard" in text
    assert "BLIND" not in text
    assert "BLIND" in blind


# --------------------------------------------------------------------------- the desk's side


class FakeNats:
    """Records publishes; ``is_connected`` is the test's to switch."""

    def __init__(self) -> None:
        self.is_connected = True
        self.published: list[tuple[str, Alive]] = []
        self.flushed = 0

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, parse_alive(data)))

    async def flush(self, timeout: int = 2) -> None:
        self.flushed += 1


async def test_liveness_every_interval_none_while_reconnecting_and_a_last_leaving() -> None:
    """One alive per interval with the switch's state; none while nats-py is reconnecting
    (a buffered one would lie later); leave(): one leaving message, flushed, then silence."""
    clock = FakeClock()
    state = ["ARMED"]
    config = ClusterConfig(servers=("nats://h",), firm="acme", liveness_interval=0.5)
    publisher = LivenessPublisher(config, "desk-a", "h1", lambda: state[0], clock)
    nc = FakeNats()
    task = asyncio.create_task(publisher.run(nc))  # type: ignore[arg-type]
    await clock.advance(2.0)
    assert len(nc.published) == 5  # t = 0, 0.5, 1.0, 1.5, 2.0
    nc.is_connected = False
    await clock.advance(2.0)
    assert len(nc.published) == 5
    nc.is_connected, state[0] = True, "TRIPPED"
    await clock.advance(0.5)
    assert await publisher.leave(nc) is True  # type: ignore[arg-type]
    await clock.advance(2.0)
    await task

    subjects = {subject for subject, _ in nc.published}
    alive = [a for _, a in nc.published]
    assert subjects == {"killswitch.acme.desk-a.alive"}
    assert [a.seq for a in alive] == sorted(a.seq for a in alive)
    assert alive[-2].state == "TRIPPED"
    assert [a.leaving for a in alive].count(True) == 1
    assert alive[-1].leaving
    assert nc.flushed == 1

"""[cluster] without NATS: config, desk and credentials, message validation, the decisions."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import killswitch.cluster.connection as cluster_mod
from killswitch.cluster.connection import Cluster
from killswitch.cluster.fleet import Fleet, FleetAnswer, fleet_rows, format_fleet, format_trigger
from killswitch.cluster.messages import (
    InvalidMessage,
    SeenIds,
    encode_trigger,
    new_trigger,
    parse_trigger,
)
from killswitch.cluster.settings import ClusterSettings, connect_options, resolve_cluster
from killswitch.config.load import parse_config
from killswitch.config.model import ClusterConfig, reloadable
from killswitch.config.reader import ConfigError
from killswitch.kill.switch import State, TriggerOutcome
from tests.fakes import FakeClock

MINIMAL = {"targets": [{"exchange": "EXCHANGE_2"}]}
CLUSTER = {"servers": ["nats://127.0.0.1:4222"], "firm": "acme"}
SEED = "SUAFRZP5TZRX5G7OUOQ76ME2FYKBM5RTUA2KGEVPUDNJKLCREEIDXXAUP4"
CREDS = f"""-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVQUJDIn0.c2lnbmF0dXJlX2hlcmU
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
{SEED}
------END USER NKEY SEED------
"""


def _cluster(**table: Any) -> ClusterConfig:
    config = parse_config({**MINIMAL, "cluster": {**CLUSTER, **table}}).cluster
    assert config is not None
    return config


# --------------------------------------------------------------------------- config


def test_no_cluster_table_means_no_cluster() -> None:
    """Without [cluster], Config.cluster is None."""
    assert parse_config(MINIMAL).cluster is None


def test_cluster_table_defaults_and_values() -> None:
    """Every contract key is read; defaults per §11."""
    assert _cluster() == ClusterConfig(servers=("nats://127.0.0.1:4222",), firm="acme")
    full = _cluster(
        servers=["tls://nats.example:4443", "tls://10.0.0.2"],
        credentials_env="NATS_CREDS",
        desk="desk-a",
        subject_prefix="corp.killswitch",
        follow=["desk"],
        propagate=True,
        max_age=5,
    )
    assert full.servers == ("tls://nats.example:4443", "tls://10.0.0.2")
    assert (full.credentials_env, full.desk, full.subject_prefix) == (
        "NATS_CREDS",
        "desk-a",
        "corp.killswitch",
    )
    assert full.follow == frozenset({"desk"})
    assert full.propagate is True
    assert full.max_age == 5.0


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"servers": []}, "cluster.servers"),
        ({"servers": ["http://127.0.0.1:4222"]}, "cluster.servers"),
        ({"servers": ["nats://user:pw@127.0.0.1:4222"]}, "cluster.servers"),
        ({"servers": ["nats://127.0.0.1:99999"]}, "cluster.servers"),
        ({"servers": "nats://127.0.0.1"}, "cluster.servers"),
        ({"servers": ["nats://10.0.0.1", "tls://10.0.0.2"]}, "cluster.servers"),
        ({"firm": "a.b"}, "cluster.firm"),
        ({"firm": ">"}, "cluster.firm"),
        ({"desk": "desk a"}, "cluster.desk"),
        ({"desk": "*"}, "cluster.desk"),
        ({"subject_prefix": "a..b"}, "cluster.subject_prefix"),
        ({"subject_prefix": "ks.>"}, "cluster.subject_prefix"),
        ({"follow": ["everyone"]}, "cluster.follow"),
        ({"propagate": "yes"}, "cluster.propagate"),
        ({"max_age": 0}, "cluster.max_age"),
        ({"credentials_env": ""}, "cluster.credentials_env"),
        ({"bogus": 1}, "cluster.bogus"),
    ],
)
def test_bad_cluster_values_name_their_key(table: dict[str, Any], key: str) -> None:
    """Each bad [cluster] value is a ConfigError naming its dotted key."""
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "cluster": {**CLUSTER, **table}})
    assert err.value.key == key


def test_firm_is_required() -> None:
    """[cluster] without firm: cluster.firm is required."""
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "cluster": {"servers": ["nats://127.0.0.1"]}})
    assert err.value.key == "cluster.firm"


def test_cluster_change_needs_a_restart() -> None:
    """SIGHUP keeps the running [cluster] and names it as needing a restart."""
    old = parse_config(MINIMAL)
    new = parse_config({**MINIMAL, "cluster": CLUSTER})
    applied, ignored = reloadable(old, new)
    assert applied.cluster is None
    assert ignored == ["cluster"]


def test_bad_cluster_config_exits_2_before_start(tmp_path: Path) -> None:
    """killswitch run with a bad [cluster]: one 'config error: cluster.…' line, exit 2."""
    path = tmp_path / "k.toml"
    path.write_text(
        '[[targets]]\nexchange = "X"\n[cluster]\nservers = ["nats://h"]\nfirm = "a b"\n'
    )
    env = {"KILLSWITCH_API_KEY": "k", "KILLSWITCH_API_SECRET": "ab" * 32, "PATH": "/usr/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "killswitch", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("config error: cluster.firm: ")


def test_nats_is_not_imported_without_a_cluster() -> None:
    """The daemon and the CLI never import nats unless [cluster] is configured."""
    code = (
        "import sys, killswitch.cli, killswitch.service.daemon;"
        "killswitch.cli.build_parser();"
        "sys.exit('nats' in sys.modules or 'nkeys' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


# --------------------------------------------------------------------------- desk and credentials


def test_desk_comes_from_config_then_environment_then_host() -> None:
    """cluster.desk wins; else $KILLSWITCH_DESK (the systemd instance); else the host name."""
    env = {"KILLSWITCH_DESK": "desk-b"}
    named = resolve_cluster(_cluster(desk="desk-a"), env)
    from_env = resolve_cluster(_cluster(), env)
    from_host = resolve_cluster(_cluster(), {})
    assert named is not None
    assert from_env is not None
    assert from_host is not None
    assert named.desk == "desk-a"
    assert from_env.desk == "desk-b"
    assert from_host.desk == from_host.host.split(".")[0]
    assert from_env.subjects.desk_trigger == "killswitch.acme.desk-b.trigger"
    assert from_env.subjects.events == "killswitch.acme.desk-b.events"
    assert from_env.subjects.firm_trigger == "killswitch.acme.trigger"
    assert from_env.subjects.status == "killswitch.acme.status"


def test_unusable_desk_from_environment_is_a_config_error() -> None:
    """A $KILLSWITCH_DESK that is not a subject token: cluster.desk error."""
    with pytest.raises(ConfigError) as err:
        resolve_cluster(_cluster(), {"KILLSWITCH_DESK": "a.b"})
    assert err.value.key == "cluster.desk"


def test_credentials_from_environment_or_credentials_directory(tmp_path: Path) -> None:
    """A .creds content or an nkey seed, from the environment or $CREDENTIALS_DIRECTORY."""
    (tmp_path / "NATS_CREDS").write_text(CREDS)
    from_dir = resolve_cluster(
        _cluster(credentials_env="NATS_CREDS"), {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    from_env = resolve_cluster(_cluster(credentials_env="NATS_CREDS"), {"NATS_CREDS": SEED})
    assert from_dir is not None
    assert from_env is not None
    assert "user_credentials" in connect_options(from_dir)
    assert connect_options(from_env) == {"nkeys_seed_str": SEED}
    assert SEED not in repr(from_dir)


@pytest.mark.parametrize("content", ["hunter2", "SUAFRZ", "-----BEGIN NATS USER JWT-----\nx\n"])
def test_credentials_that_are_neither_creds_nor_seed_are_refused(content: str) -> None:
    """Credentials that are not a .creds file or a user seed: cluster.credentials_env error."""
    with pytest.raises(ConfigError) as err:
        resolve_cluster(_cluster(credentials_env="C"), {"C": content})
    assert err.value.key == "cluster.credentials_env"
    assert content not in str(err.value)


def test_missing_credentials_are_a_config_error() -> None:
    """credentials_env names a variable that is set nowhere: cluster.credentials_env error."""
    with pytest.raises(ConfigError) as err:
        resolve_cluster(_cluster(credentials_env="C"), {})
    assert err.value.key == "cluster.credentials_env"


# --------------------------------------------------------------------------- messages


def test_trigger_message_round_trip() -> None:
    """encode_trigger → parse_trigger gives the same message back."""
    message = new_trigger("ops@host", "drill", 1_780_000_000.5)
    assert parse_trigger(encode_trigger(message)) == message
    assert message.sent_at == 1_780_000_000_500


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"string"',
        b"[" * 100_000,
        json.dumps({"origin": "o", "reason": "r", "sent_at": 1}).encode(),
        json.dumps({"id": 7, "origin": "o", "reason": "r", "sent_at": 1}).encode(),
        json.dumps({"id": "", "origin": "o", "reason": "r", "sent_at": 1}).encode(),
        json.dumps({"id": "x", "origin": "o", "reason": " ", "sent_at": 1}).encode(),
        json.dumps({"id": "x", "origin": "o\n", "reason": "r", "sent_at": 1}).encode(),
        json.dumps({"id": "x" * 200, "origin": "o", "reason": "r", "sent_at": 1}).encode(),
        json.dumps({"id": "x", "origin": "o", "reason": "r", "sent_at": True}).encode(),
        json.dumps({"id": "x", "origin": "o", "reason": "r", "sent_at": "now"}).encode(),
        json.dumps({"id": "x", "origin": "o", "reason": "r", "sent_at": -1}).encode(),
        json.dumps({"id": "x", "origin": "o", "reason": "r", "sent_at": 10**30}).encode(),
        b'{"id": "x", "origin": "o", "reason": "r", "sent_at": NaN}',
        b'{"id": "x", "origin": "o", "reason": "r", "sent_at": 1, "pad": "' + b"a" * 20_000 + b'"}',
    ],
)
def test_garbage_trigger_messages_are_invalid(data: bytes) -> None:
    """Anything but {id, origin, reason, sent_at} of the right types raises InvalidMessage."""
    with pytest.raises(InvalidMessage):
        parse_trigger(data)


def test_seen_ids_expire_after_keep() -> None:
    """A seen id is remembered for ``keep`` seconds, then forgotten; the set is bounded."""
    clock = FakeClock()
    seen = SeenIds(10.0, clock, limit=2)
    seen.add("a", "k1")
    assert seen.get("a") == ("k1",)
    clock._now += 11
    assert seen.get("a") is None
    for trigger_id in ("b", "c", "d"):
        seen.add(trigger_id, None)
    assert seen.get("b") is None
    assert seen.get("d") == (None,)


# --------------------------------------------------------------------------- decisions


class FakeHost:
    """Records triggers; answers with a fixed outcome."""

    def __init__(self, outcome: TriggerOutcome = TriggerOutcome.STARTED) -> None:
        self.outcome = outcome
        self.triggers: list[tuple[str, dict[str, Any]]] = []

    def cluster_trigger(self, reason: str, **detail: Any) -> tuple[TriggerOutcome, str | None]:
        self.triggers.append((reason, detail))
        return self.outcome, f"kill{len(self.triggers)}"

    def cancel_sent(self, kill_id: str) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def status(self) -> dict[str, Any]:
        return {"state": "ARMED"}

    def switch_state(self) -> str:
        return "ARMED"

    def sentinel_trigger(self, reason: str, **detail: Any) -> TriggerOutcome:
        self.triggers.append((reason, detail))
        return self.outcome


def _make(host: FakeHost, clock: FakeClock, **table: Any) -> Cluster:
    settings = ClusterSettings(_cluster(**table), "desk-a", "host1", None)
    return Cluster(settings, host, clock)


def _message(clock: FakeClock, age: float = 0.0) -> bytes:
    return encode_trigger(new_trigger("ops@host", "drill", clock.time() - age))


async def test_a_valid_trigger_fires_once_and_waits_for_the_send() -> None:
    """A fresh message fires source cluster with origin/trigger_id; the reply waits for the kill."""
    clock, host = FakeClock(), FakeHost()
    cluster = _make(host, clock)
    data = _message(clock)

    first = cluster.receive(data, "firm")
    with capture_logs() as logs:
        again = cluster.receive(data, "firm")

    assert first.wait_for == "kill1"
    assert first.reply == {
        "desk": "desk-a",
        "host": "host1",
        "accepted": True,
        "kill_id": "kill1",
        "outcome": "started",
        "trigger_id": json.loads(data)["id"],
    }
    reason, detail = host.triggers[0]
    assert reason == "drill"
    assert detail["origin"] == "ops@host"
    assert detail["trigger_id"] == json.loads(data)["id"]
    assert again.wait_for is None
    assert again.reply["accepted"] is False
    assert again.reply["kill_id"] == "kill1"
    assert len(host.triggers) == 1
    assert [e["event"] for e in logs] == ["cluster.trigger_duplicate"]
    assert cluster.status()["last_trigger"]["kill_id"] == "kill1"


@pytest.mark.parametrize("age", [31.0, -31.0])
async def test_stale_or_future_trigger_is_ignored(age: float) -> None:
    """sent_at further than max_age from now (either way): cluster.trigger_stale, no trigger."""
    clock, host = FakeClock(), FakeHost()
    cluster = _make(host, clock, max_age=30)
    with capture_logs() as logs:
        decision = cluster.receive(_message(clock, age=age), "desk")
    assert host.triggers == []
    assert decision.reply["accepted"] is False
    assert "stale" in decision.reply["why"]
    assert logs[0]["event"] == "cluster.trigger_stale"
    assert logs[0]["scope"] == "desk"


async def test_garbage_is_an_event_and_a_refusal() -> None:
    """An invalid message logs cluster.trigger_invalid and is refused with why."""
    clock, host = FakeClock(), FakeHost()
    cluster = _make(host, clock)
    with capture_logs() as logs:
        decision = cluster.receive(b"\x00garbage", "firm")
    assert host.triggers == []
    assert decision.reply["why"].startswith("invalid trigger message")
    assert logs[0]["event"] == "cluster.trigger_invalid"


async def test_stopping_daemon_accepts_at_once() -> None:
    """A stopping daemon records the kill (resumed at its next start): accepted, at once."""
    clock, host = FakeClock(), FakeHost(TriggerOutcome.STOPPING)
    decision = _make(host, clock).receive(_message(clock), "firm")
    assert decision.wait_for is None
    assert decision.reply["accepted"] is True
    assert decision.reply["outcome"] == "stopping"
    assert "resumes at the next start" in decision.reply["note"]


async def test_propagate_broadcasts_local_kills_only() -> None:
    """propagate: a local kill queues one firm broadcast; a kill a broadcast started does not."""
    clock = FakeClock()
    quiet = _make(FakeHost(), clock)
    loud = _make(FakeHost(), clock, propagate=True)

    quiet.state_changed(State.KILLING, "signal: SIGUSR1")
    loud.state_changed(State.KILLING, "cluster: drill")
    loud.state_changed(State.TRIPPED, "kill k completed")
    assert not quiet._outbox
    assert not loud._outbox
    with capture_logs() as logs:
        loud.state_changed(State.KILLING, "heartbeat: no heartbeat for 10.0s")

    sent = parse_trigger(loud._outbox[0])
    assert sent.origin == "desk-a@host1"
    assert "heartbeat" in sent.reason
    assert logs[0]["event"] == "cluster.propagated"
    # Its own broadcast, should it come back, is a duplicate: never a second kill.
    assert loud.receive(loud._outbox[0], "firm").reply["why"].startswith("duplicate")


async def test_event_buffer_is_bounded_and_counts_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    """While NATS is away, event lines wait in a bounded buffer; the overflow is counted."""
    monkeypatch.setattr(cluster_mod, "EVENT_BUFFER", 3)
    cluster = _make(FakeHost(), FakeClock())
    for n in range(5):
        cluster.tap(json.dumps({"event": "x", "n": n}))
    status = cluster.status()
    assert status["events_buffered"] == 3
    assert status["events_dropped"] == 2
    assert status["connected"] is False


@pytest.mark.parametrize("verb", ["trigger", "status"])
def test_fleet_without_nats_exits_1(verb: str, tmp_path: Path) -> None:
    """fleet trigger/status with no NATS server listening: one line on stderr, exit 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "ops.toml"
    path.write_text(
        '[[targets]]\nexchange = "X"\n'
        f'[cluster]\nservers = ["nats://127.0.0.1:{port}"]\nfirm = "acme"\ndesk = "ops"\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "killswitch",
            "fleet",
            verb,
            "--config",
            str(path),
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("killswitch: cannot reach NATS")
    assert result.stdout == ""


def test_fleet_needs_a_cluster_table(tmp_path: Path) -> None:
    """fleet with a config that has no [cluster]: config error naming cluster, exit 2."""
    path = tmp_path / "ops.toml"
    path.write_text('[[targets]]\nexchange = "X"\n')
    result = subprocess.run(
        [sys.executable, "-m", "killswitch", "fleet", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("config error: cluster: ")


# --------------------------------------------------------------------------- fleet report


def _answer(statuses: list[str], acks: dict[str, dict[str, Any]]) -> FleetAnswer:
    answer = FleetAnswer("t1", "killswitch.acme.trigger", 0.0)
    answer.statuses = {d: {"desk": d, "host": "h"} for d in statuses}
    answer.acks = {d: {"desk": d, "host": "h", **a} for d, a in acks.items()}
    answer.ack_ms = dict.fromkeys(acks, 1.5)
    return answer


def test_fleet_report_ok_only_when_every_known_desk_acknowledged() -> None:
    """fleet trigger succeeds only if every desk that answered status acknowledged."""
    ok = {"accepted": True, "kill_id": "k"}
    all_acked = _answer(["a", "b"], {"a": ok, "b": ok})
    one_silent = _answer(["a", "b"], {"a": ok})
    refused = _answer(["a"], {"a": {"accepted": False, "why": "trigger stopping"}})
    nobody = _answer([], {})
    denied = _answer(["a"], {"a": ok})
    denied.errors = ["Error: nats: permissions violation for publish to x"]

    text, good = format_trigger(all_acked, None, 2.0)
    assert good
    assert "2 known desk(s), 2 acknowledged" in text
    text, good = format_trigger(one_silent, None, 2.0)
    assert not good
    assert "b\th\tNO ACK within 2 s" in text
    assert not format_trigger(refused, None, 2.0)[1]
    assert not format_trigger(nobody, None, 2.0)[1]
    text, good = format_trigger(denied, None, 2.0)
    assert not good
    assert "refused by the NATS server" in text
    twins = _answer(["a"], {"a": ok})
    twins.twins = ["a"]
    text, good = format_trigger(twins, None, 2.0)
    assert not good
    assert "more than one daemon answers as desk a" in text
    # --desk: only that desk is expected, whoever else answered status.
    assert format_trigger(_answer(["a", "b"], {"b": ok}), "b", 2.0)[1]
    assert not format_trigger(_answer(["a"], {}), "z", 2.0)[1]


def test_fleet_rows_show_state_last_kill_flat_heartbeat_and_clock() -> None:
    """One row per desk, sorted, with the fields of GET /status the operator needs."""
    statuses: dict[str, dict[str, Any]] = {
        "b": {
            "host": "h2",
            "state": "TRIPPED",
            "last_kill": {"kill_id": "k9", "flat": True},
            "heartbeat_age": 1.25,
            "exchange": {"offset_ms": -12},
            "now_ms": 1_000,
            "received_ms": 1_004,
            "cluster": {"connected": True},
        },
        "a": {"host": "h1", "state": "ARMED", "last_kill": None},
    }
    rows = fleet_rows(statuses)
    assert [r["desk"] for r in rows] == ["a", "b"]
    assert rows[1] == {
        "desk": "b",
        "host": "h2",
        "state": "TRIPPED",
        "last_kill": "k9",
        "flat": True,
        "heartbeat_age": 1.25,
        "venue_offset_ms": -12,
        "clock_skew_ms": -4,
        "cluster_connected": True,
    }
    lines = format_fleet(rows).splitlines()
    assert lines[0].split() == [
        "DESK",
        "HOST",
        "STATE",
        "LAST",
        "KILL",
        "FLAT",
        "HEARTBEAT",
        "VENUE",
        "OFFSET",
        "SKEW",
    ]
    assert lines[2].split() == ["b", "h2", "TRIPPED", "k9", "yes", "1.2s", "-12", "ms", "-4", "ms"]


def test_two_daemons_under_one_desk_name_are_noticed() -> None:
    """A second status reply for a desk from another host or pid marks that desk as a twin."""
    fleet = Fleet(ClusterSettings(_cluster(), "ops", "h", None))
    known = {"a": {"desk": "a", "host": "h1", "pid": 1}}
    fleet._note_twin(known, {"desk": "a", "host": "h1", "pid": 1})
    fleet._note_twin(known, {"desk": "b", "host": "h1", "pid": 2})
    assert fleet.twins == set()
    fleet._note_twin(known, {"desk": "a", "host": "h2", "pid": 1})
    assert fleet.twins == {"a"}


def test_check_config_shows_the_resolved_desk_and_whether_nats_credentials_are_usable(
    tmp_path: Path,
) -> None:
    """check-config: the desk as resolved ($KILLSWITCH_DESK) and the NATS credentials' state."""
    path = tmp_path / "k.toml"
    path.write_text(
        '[[targets]]\nexchange = "X"\n[cluster]\nservers = ["nats://h"]\nfirm = "acme"\n'
        'credentials_env = "NC"\n'
        f'[triggers.pnl]\npath = "{tmp_path}/pnl.json"\n'  # check-config wants its directory
    )
    env = {"PATH": "/usr/bin", "KILLSWITCH_DESK": "desk-q"}

    def run(**extra: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "killswitch", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=60,
            check=True,
        )
        shown: dict[str, Any] = json.loads(result.stdout)["cluster"]
        assert SEED not in result.stdout
        return shown

    good, bad = run(NC=SEED), run(NC="nope")
    assert good["desk"] == "desk-q"
    assert good["credentials"] == "found (values not shown)"
    assert bad["credentials"].startswith("NOT USABLE: cluster.credentials_env: ")


def test_killswitch_status_shows_the_cluster_link() -> None:
    """killswitch status: one 'cluster' row saying whether the desk is connected, and where."""
    from killswitch.cli import format_status

    base: dict[str, Any] = {"state": "ARMED", "last_kill": None, "rate_limit": {}}
    cluster = {"desk": "desk-a", "firm": "acme", "servers": ["nats://a:4222"], "server": None}
    down = format_status({**base, "cluster": {**cluster, "connected": False}})
    up = format_status(
        {**base, "cluster": {**cluster, "connected": True, "server": "nats://a:4222"}}
    )
    assert "cluster" not in format_status(base)
    assert "desk desk-a of acme, NOT connected to nats://a:4222" in down
    assert "desk desk-a of acme, connected to nats://a:4222" in up

"""Unit tests of the control socket's authority: rights config, peer credentials, four eyes,
socket activation, and the halt's marker and helper (contract §13, §14)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from killswitch.config.load import parse_config
from killswitch.config.model import Config
from killswitch.config.reader import ConfigError
from killswitch.kill.switch import State
from killswitch.service.access import AccessGuard, Peer, peer_of
from killswitch.service.activation import listening_socket
from killswitch.service.approvals import ResetApprovals
from killswitch.service.halt import RESULT_TIMEOUT, Halt
from killswitch.service.halt_helper import MARKER, RESULT, keep_halted, stop_units
from tests.fakes import FakeClock

BASE = {"targets": [{"exchange": "EXCHANGE_2"}]}


def _config(control: dict[str, object]) -> Config:
    return parse_config({**BASE, "control": control})


# ---------------------------------------------------------------- config


def test_rights_resolve_names_groups_and_uids_at_load() -> None:
    """Users, @groups and uids become uid and gid sets when the config is read."""
    config = parse_config(
        {
            **BASE,
            "control": {
                "socket_mode": "0660",
                "socket_group": "root",
                "access": {"status": ["@root"], "trigger": ["root", 4242], "reset": ["@0"]},
            },
        }
    )
    access = config.control.access
    assert access is not None
    assert access.status.gids == frozenset({0})
    assert access.trigger.uids == frozenset({0, 4242})
    assert access.trigger.entries == ("root", "4242")
    assert access.reset.gids == frozenset({0})
    assert access.heartbeat.uids == frozenset()  # a missing key: nobody else
    assert config.control.socket_mode == "0660"
    assert config.control.socket_group == 0
    assert (0, "root") in access.names


@pytest.mark.parametrize(
    ("control", "key", "problem"),
    [
        ({"socket_mode": "0660"}, "control.socket_mode", "only with [control.access]"),
        ({"socket_mode": "0777", "access": {}}, "control.socket_mode", "expected one of"),
        ({"access": {"reset": ["no-such-user-x"]}}, "control.access.reset", "no such user"),
        ({"access": {"status": ["@no-such-group-x"]}}, "control.access.status", "no such group"),
        ({"access": {"trigger": "root"}}, "control.access.trigger", "expected a list"),
        ({"access": {"reset_approvals": 3}}, "control.access.reset_approvals", "at most 2"),
        ({"access": {"flatten": []}}, "control.access.flatten", "unknown key"),
        ({"socket_group": "no-such-group-x"}, "control.socket_group", "no such group"),
    ],
)
def test_bad_rights_name_their_key(control: dict[str, object], key: str, problem: str) -> None:
    """A typo in [control] is a config error naming the key, never a silent lock-out."""
    with pytest.raises(ConfigError) as caught:
        _config(control)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_halt_units_must_be_unit_names() -> None:
    """[halt] units: systemd unit names only (the helper passes them to systemctl as root)."""
    ok = parse_config({**BASE, "halt": {"units": ["strategy@btc.service", "trading.target"]}})
    assert ok.halt.units == ("strategy@btc.service", "trading.target")
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "halt": {"units": ["--now sshd"]}})
    assert caught.value.key == "halt.units"


# ------------------------------------------------------------ peer credentials


def test_peer_credentials_come_from_the_kernel() -> None:
    """SO_PEERCRED and SO_PEERGROUPS name this very process, its groups included."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = peer_of(a)
    assert (peer.uid, peer.gid, peer.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert set(os.getgroups()) | {os.getgid()} == set(peer.groups)
    assert peer.as_dict() == {"uid": os.getuid(), "user": None, "pid": os.getpid()}


def test_rights_by_uid_or_any_group_root_and_own_user_hold_all() -> None:
    """A peer holds a right by its uid or any of its groups; root and the daemon's own user
    hold every right; a right nobody was given is refused."""
    config = parse_config({**BASE, "control": {"access": {"heartbeat": [4242], "status": ["@0"]}}})
    guard = AccessGuard(lambda: config.control)
    listed = Peer(4242, 4242, 1, frozenset({4242}))
    in_group = Peer(5000, 5000, 1, frozenset({5000, 0}))  # root's group as a supplementary one
    other = Peer(5001, 5001, 1, frozenset({5001}))
    assert guard.allowed(listed, "heartbeat")
    assert not guard.allowed(listed, "status")
    assert guard.allowed(in_group, "status")
    assert not guard.allowed(other, "heartbeat")
    assert not guard.allowed(other, "reset")
    for right in ("status", "heartbeat", "trigger", "reset"):
        assert guard.allowed(Peer(0, 0, 1, frozenset({0})), right)
        assert guard.allowed(Peer(os.geteuid(), 9, 1, frozenset()), right)


# --------------------------------------------------------------- four eyes


def _peer(uid: int) -> dict[str, object]:
    return Peer(uid, uid, 100 + uid, frozenset()).as_dict()


def test_four_eyes_needs_two_users_within_the_window() -> None:
    """One approval pends; the same user again is nothing; another user completes it;
    after the window the first one lapses."""
    clock = FakeClock()
    approvals = ResetApprovals(clock, lambda: 2, lambda: 300.0)
    with capture_logs() as logs:
        assert approvals.approve(_peer(1), "flat") is None
        assert approvals.approve(_peer(1), None) is None
        done = approvals.approve(_peer(2), None)
        assert done is not None
        assert [a.peer["uid"] for a in done] == [1, 2]
        assert approvals.pending() is None
        assert approvals.approve(_peer(1), None) is None
        clock._now += 300.0  # synchronous: no sleeper to wake
        assert approvals.approve(_peer(2), None) is None  # the window ended: a new first one
    assert [e["event"] for e in logs] == [
        "reset.pending",
        "reset.pending",
        "reset.lapsed",
        "reset.pending",
    ]
    pending = approvals.pending()
    assert pending is not None
    assert pending["by"]["uid"] == 2


def test_one_approval_is_enough_by_default() -> None:
    """reset_approvals = 1: every reset completes at once, nothing pends."""
    approvals = ResetApprovals(FakeClock(), lambda: 1, lambda: 300.0)
    done = approvals.approve(_peer(1), "why")
    assert done is not None
    assert done[0].reason == "why"
    assert approvals.pending() is None


# ------------------------------------------------------------ socket activation


def test_listening_socket_only_for_this_pid() -> None:
    """LISTEN_FDS for another pid is not ours; the variables are removed either way."""
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "control"}
    assert listening_socket(env) is None
    assert env == {}
    assert listening_socket({}) is None


def test_listening_socket_takes_fd_3(tmp_path: Path) -> None:
    """The socket systemd put on fd 3 is served as it is (no bind, no unlink)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    listener.listen()
    saved = os.dup(3) if _fd_open(3) else None
    os.dup2(listener.fileno(), 3)
    try:
        got = listening_socket({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"})
        assert got is not None
        assert got.fileno() == 3
        assert got.getsockname() == str(tmp_path / "s")
        got.detach()
    finally:
        if saved is None:
            os.close(3)
        else:
            os.dup2(saved, 3)
            os.close(saved)
        listener.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- the halt


async def test_halt_marker_at_kill_result_read_cleared_at_reset(tmp_path: Path) -> None:
    """KILLING writes the marker; the helper's result becomes halt.stopped / halt.failed;
    ARMED removes marker and result."""
    clock = FakeClock()
    halt = Halt(lambda: ("a.service", "b.service"), tmp_path, clock, systemd=True)
    task = asyncio.create_task(halt.run())
    with capture_logs() as logs:
        halt.state_changed(State.KILLING, "k1")
        marker = json.loads((tmp_path / MARKER).read_text())
        assert marker["kill_id"] == "k1"
        assert halt.status()["state"] == "stopping"
        (tmp_path / RESULT).write_text(
            json.dumps(
                {
                    "kill_id": "k1",
                    "stopped": ["a.service"],
                    "failed": [{"unit": "b.service", "problem": "Unit b.service not loaded."}],
                }
            )
        )
        await clock.advance(0.05)  # a poll or two later
        await _until(lambda: halt.state != "stopping")
    assert halt.status()["state"] == "failed"
    events = {e["event"]: e for e in logs}
    assert events["halt.stopped"]["units"] == ["a.service"]
    assert events["halt.failed"]["unit"] == "b.service"
    halt.state_changed(State.ARMED, None)
    assert not (tmp_path / MARKER).exists()
    assert not (tmp_path / RESULT).exists()
    task.cancel()


async def test_halt_without_an_answer_fails_loudly(tmp_path: Path) -> None:
    """No helper answers within RESULT_TIMEOUT: halt.failed (critical) for every unit."""
    clock = FakeClock()
    halt = Halt(lambda: ("a.service",), tmp_path, clock, systemd=True)
    task = asyncio.create_task(halt.run())
    with capture_logs() as logs:
        halt.state_changed(State.KILLING, "k1")
        await _until(lambda: clock.sleepers > 0)
        await clock.advance(RESULT_TIMEOUT + 1)
        await _until(lambda: halt.state == "failed")
    failed = [e for e in logs if e["event"] == "halt.failed"]
    assert failed[0]["log_level"] == "critical"
    assert "killswitch-halt" in failed[0]["problem"]
    task.cancel()


def test_halt_is_off_by_hand(tmp_path: Path) -> None:
    """Without systemd the halt writes nothing and status says why."""
    halt = Halt(lambda: ("a.service",), tmp_path, FakeClock(), systemd=False)
    halt.state_changed(State.KILLING, "k1")
    assert not (tmp_path / MARKER).exists()
    assert halt.status() == {
        "state": "off",
        "why": "not under systemd (killswitch run by hand)",
        "units": ["a.service"],
    }


async def _until(condition: Callable[[], bool], turns: int = 200) -> None:
    """Let the loop run until ``condition()`` holds (loop turns, not time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_helper_stops_units_and_reports_failures(tmp_path: Path) -> None:
    """stop_units: systemctl per unit at once; a failure keeps systemctl's own words."""
    fake = tmp_path / "systemctl"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "unit = sys.argv[-1]\n"
        "if unit.startswith('bad'):\n"
        "    print(f'Failed to stop {unit}: Unit {unit} not loaded.', file=sys.stderr)\n"
        "    sys.exit(5)\n"
        f"open({str(tmp_path / 'stopped')!r}, 'a').write(unit + '\\n')\n"
    )
    fake.chmod(0o755)
    stopped, failed = stop_units(("a.service", "bad.service"), str(fake))
    assert stopped == ["a.service"]
    assert failed == [
        {
            "unit": "bad.service",
            "problem": "Failed to stop bad.service: Unit bad.service not loaded.",
        }
    ]
    assert (tmp_path / "stopped").read_text() == "a.service\n"


def test_helper_answers_once_per_kill_and_leaves_without_a_marker(tmp_path: Path) -> None:
    """keep_halted: no marker, nothing to do (exit 0); a config it cannot read: exit 2."""
    config = tmp_path / "k.toml"
    config.write_text(
        '[[targets]]\nexchange = "E"\n[state]\npath = "%s"\n[halt]\nunits = ["a.service"]\n'
        % (tmp_path / "state.db")
    )
    assert keep_halted(config, systemctl="/bin/false") == 0
    assert not (tmp_path / RESULT).exists()
    (tmp_path / "bad.toml").write_text("[halt]\nunits = 3\n")
    assert keep_halted(tmp_path / "bad.toml") == 2


def test_reload_applies_rights_at_once_and_the_socket_at_restart() -> None:
    """SIGHUP: [control.access] and approval_window apply now; socket, mode, group need a
    restart (and are named so)."""
    from killswitch.config.model import reloadable

    before = _config({})
    after = _config(
        {
            "socket": "/run/other.sock",
            "socket_mode": "0660",
            "approval_window": 60,
            "access": {"reset": ["root"], "reset_approvals": 2},
        }
    )
    applied, restart = reloadable(before, after)
    assert restart == ["control"]
    assert applied.control.access == after.control.access
    assert applied.control.approval_window == 60
    assert applied.control.socket == before.control.socket
    assert applied.control.socket_mode == "0600"


def test_status_text_shows_the_halt_and_a_pending_reset() -> None:
    """`killswitch status` names the halted units (and a failure) and a pending approval."""
    from killswitch.service.status_view import format_status

    text = format_status(
        {
            "state": "TRIPPED",
            "halt": {
                "state": "failed",
                "units": ["strategy.service", "x.service"],
                "failed": [{"unit": "x.service", "problem": "Unit x.service not loaded."}],
            },
            "reset_pending": {
                "approvals": 1,
                "needed": 2,
                "by": {"uid": 1001, "user": "alice", "pid": 7},
                "lapses_in": 120.0,
            },
        }
    )
    assert "halt" in text
    assert (
        "failed: strategy.service, x.service (FAILED x.service: Unit x.service not loaded.)" in text
    )
    assert "1 of 2 approvals, by alice" in text

"""A newcomer's first hour (issue 17 §2): what status, the watch view, the help, the log
and the config say to someone following the README literally."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from killswitch.cli import build_parser, main, watch
from killswitch.config.load import load_config
from killswitch.config.reader import ConfigError
from killswitch.kill.confirm import Confirmer
from killswitch.kill.progress import format_eta, report
from killswitch.log import add_listener
from killswitch.service.status_view import format_status
from killswitch.store.holder import state_file_holder, what_still_kills
from killswitch.triggers.heartbeat import DeadManSwitch
from killswitch.triggers.pnl import PnlMonitor
from tests.fakes import FakeClock
from tests.test_confirm import ScriptedSource
from tests.test_confirm import config as confirm_config
from tests.test_log import stream  # noqa: F401  (the fixture: logging into a buffer)

ROOT = Path(__file__).resolve().parent.parent

IDLE: dict[str, Any] = {
    "state": "ARMED",
    "progress": None,
    "trigger_states": {"signal": "watching", "heartbeat": "watching", "pnl": "off"},
    "heartbeat_age": 0.4,
    "heartbeat_timeout": 10.0,
    "pnl": None,
    "pnl_threshold": -5000.0,
    "last_kill": None,
    "pid": 4242,
    "version": "0.3.0",
    "uptime": 30.0,
    "exchange": {
        "offset_ms": 2,
        "rtt_ms": 1.0,
        "sync_failures": 0,
        "last_call": {"endpoint": "open_orders", "ok": True, "http_status": 200, "message": None},
        "self_test": {"ok": True, "checks": [{"exchange": "EXCHANGE_2", "ok": True}]},
        "dry_run": False,
    },
}


def rows(text: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in text.splitlines())


# --------------------------------------------------------------------------- status


def test_status_names_a_failing_exchange_and_the_pid() -> None:
    """Every call 401 (a wrong secret): text status says FAILING beside ARMED, names the
    venue's answer and check-config --online; a healthy one says ok; the pid is shown."""
    assert rows(format_status(IDLE))["exchange"] == "ok (self-test passed, clock offset 2 ms)"
    refused = {"endpoint": "open_orders", "ok": False, "http_status": 401, "message": "bad sig"}
    bad = {
        **IDLE,
        "exchange": {
            **IDLE["exchange"],
            "last_call": refused,
            "self_test": {
                "ok": False,
                "checks": [{"exchange": "EXCHANGE_2", "ok": False, "http_status": 401}],
            },
        },
    }
    got = rows(format_status(bad))
    print(format_status(bad))
    assert got["state"].startswith("ARMED: watching the triggers, but the exchange is FAILING")
    assert got["exchange"] == (
        "FAILING: the last call failed: open_orders HTTP 401 'bad sig'; the self-test failed:"
        " EXCHANGE_2 HTTP 401; check with `killswitch check-config --online`"
    )
    assert got["daemon"] == "pid 4242, version 0.3.0, up 30 s"
    assert got["signal"] == "watching (SIGUSR1 kills: kill -USR1 4242)"


def test_a_busy_venue_is_not_a_failing_one() -> None:
    """A 429 (the desk's own traffic used the budget) is not FAILING; a self-test that
    failed while no call has succeeded since is."""
    busy = {"endpoint": "order_status", "ok": False, "http_status": 429, "message": None}
    got = rows(format_status({**IDLE, "exchange": {**IDLE["exchange"], "last_call": busy}}))
    assert got["exchange"].startswith("ok (")
    failed = {"ok": False, "checks": [{"exchange": "EXCHANGE_2", "ok": False, "error": "timeout"}]}
    got = rows(
        format_status(
            {**IDLE, "exchange": {**IDLE["exchange"], "last_call": None, "self_test": failed}}
        )
    )
    assert got["exchange"].startswith("FAILING: the self-test failed: EXCHANGE_2 timeout")


def test_a_reading_from_before_the_reset_is_named_so() -> None:
    """After a reset the PnL trigger waits for a new reading at or above the threshold;
    status says the last reading came before the reset and does not count."""
    clock = FakeClock()
    fired: list[str] = []
    pnl = PnlMonitor(-5000.0, 0.0, clock, lambda why, _: fired.append(why))
    pnl.observe(1200.5)
    assert not pnl.read_before_reset()
    pnl.rearm()
    assert pnl.read_before_reset()
    assert pnl.state() == "re-armed: waits for a new reading at or above the threshold"
    body = {
        **IDLE,
        "trigger_states": {**IDLE["trigger_states"], "pnl": pnl.state()},
        "pnl": pnl.value,
        "pnl_age": 25.0,
        "pnl_before_reset": pnl.read_before_reset(),
    }
    assert rows(format_status(body))["pnl"] == (
        "re-armed: waits for a new reading at or above the threshold (last 1200.5 "
        "(25 s ago, before the reset: it does not count), threshold -5000.0)"
    )
    pnl.observe(-6000.0)  # the contract: no edge yet after the reset
    assert fired == []
    pnl.observe(1200.5)
    assert not pnl.read_before_reset()
    pnl.observe(-6000.0)
    assert fired == ["breach"]


# --------------------------------------------------------------------------- watch


def _progress(**over: Any) -> dict[str, Any]:
    class Budget:
        requests, per_seconds = 20, 60.0

        def __init__(self, free: int, wait: float) -> None:
            self.free, self.wait = free, wait

        def available(self) -> int:
            return self.free

        def time_for(self, n: int) -> float:
            return self.wait

    args: dict[str, Any] = {
        "kill_id": "k",
        "elapsed": 12.0,
        "resolved": 89,
        "total": 300,
        "outcomes": {"cancelled": 5, "filled": 0},
        "sweeps_left": 0,
        "remaining": {"open_orders": 1, "closed_orders": 5},
        "budgets": {"open_orders": Budget(12, 0.0), "closed_orders": Budget(15, 0.0)},
        "stuck": False,
    }
    args.update(over)
    if "free" in over or "wait" in over:
        budget = Budget(over.pop("free", 12), over.pop("wait", 0.0))
        args.pop("free", None)
        args.pop("wait", None)
        args["budgets"] = {"open_orders": budget, "closed_orders": budget}
    return report(**args)


def test_outcomes_add_up_to_the_confirmed_count() -> None:
    """89 known terminal, 5 of them read: the other 84 show as unclassified (contract §1),
    so the watch view's outcomes add up to its progress count."""
    p = _progress()
    assert p["confirmed"] == 89
    assert p["outcomes"] == {"cancelled": 5, "filled": 0, "unclassified": 84}
    assert sum(p["outcomes"].values()) == p["confirmed"]


def test_the_estimate_is_honest_when_the_venue_is_slow() -> None:
    """Budgets free and the venue slow: the estimate is the pace so far, not "~1 s left";
    before any order is terminal it is a lower bound; a full window keeps the budgets'."""
    p = _progress()  # 89 of 300 in 12 s, budgets with room: ~28 s at that pace
    assert p["eta_basis"] == "pace"
    assert p["eta_s"] == round(211 * 12 / 89, 1)
    assert format_eta(p["eta_s"], p["eta_basis"]) == "~28 s left at the pace so far"
    none_yet = _progress(resolved=0, outcomes={}, wait=10.0)
    assert format_eta(none_yet["eta_s"], none_yet["eta_basis"]) == (
        "at least ~10 s left: no order terminal yet"
    )
    held = _progress(free=0, wait=40.0, resolved=150)  # the window is full: the budgets rule
    assert (held["eta_basis"], held["eta_s"]) == ("budgets", 40.0)
    assert _progress(stuck=True)["eta_s"] is None


async def test_watch_on_a_tripped_idle_switch_draws_once_and_ends() -> None:
    """status --watch after the kill already ended: one screen, a line saying so, exit 0."""
    polls: list[str] = []

    class Client:
        path = Path("/run/ks.sock")

        async def request(self, method: str, route: str) -> tuple[int, Any]:
            polls.append(route)
            return 200, {**IDLE, "state": "TRIPPED"}

    async def sleep(seconds: float) -> None:
        raise AssertionError("a tripped idle switch is not redrawn")

    out = io.StringIO()
    assert await watch(Client(), 1.0, out, sleep=sleep) == 0  # type: ignore[arg-type]
    assert polls == ["/status"]
    assert out.getvalue().endswith(
        "the kill has ended (no kill running): TRIPPED; `killswitch reset` re-arms\n"
    )


# --------------------------------------------------------------------------- the log


def test_the_first_heartbeat_arming_the_dead_man_is_logged_once() -> None:
    """heartbeat.armed (info) on the first heartbeat only; not with the trigger off."""
    clock = FakeClock()
    with capture_logs() as logs:
        dead = DeadManSwitch(10.0, clock, lambda _: None)
        dead.beat()
        dead.beat()
        DeadManSwitch(10.0, clock, lambda _: None, enabled=False).beat()
    armed = [e for e in logs if e["event"] == "heartbeat.armed"]
    assert [(e["log_level"], e["timeout"]) for e in armed] == [("info", 10.0)]


def test_a_pnl_reading_is_logged_once_per_change() -> None:
    """pnl.read (info) for each new value; the same value read again is not repeated; a
    breach is shown by pnl.breach alone (nothing more is written before the kill)."""
    pnl = PnlMonitor(-5000.0, 0.0, FakeClock(), lambda *_: None)
    with capture_logs() as logs:
        for value in (1200.5, 1200.5, 1200.5, -10.0, -6000.0, -6000.0, -7000.0):
            pnl.observe(value)
    reads = [(e["event"], e["log_level"], e["pnl"]) for e in logs]
    assert reads == [
        ("pnl.read", "info", 1200.5),
        ("pnl.read", "info", -10.0),
        ("pnl.breach", "error", -6000.0),
        ("pnl.read", "info", -7000.0),
    ]


# --------------------------------------------------------------------------- help


def test_run_help_prints_the_usage_and_no_event() -> None:
    """`killswitch run --help`: the usage first, no daemon.starting JSON line before it."""
    for argv in (["-m", "killswitch", "run", "--help"], ["-m", "killswitch", "run", "-h"]):
        done = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0
        assert done.stdout.startswith("usage: killswitch run"), done.stdout[:200]
        assert "daemon.starting" not in done.stdout + done.stderr


def test_every_command_describes_itself_and_shows_its_defaults() -> None:
    """demo, fleet trigger and fleet status have descriptions; --interval and the demo's
    fill ratios show their defaults."""
    for path in (["demo"], ["fleet", "trigger"], ["fleet", "status"]):
        assert _subparser(*path).description, path
    demo = " ".join(_subparser("demo").format_help().split())
    assert "(default 0.02)" in demo
    assert "(default 0.05)" in demo
    assert "(default 1)" in " ".join(_subparser("status").format_help().split())


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action._name_parser_map[name]
    return parser


# --------------------------------------------------------------------------- config

FLEET_ONLY = """\
[triggers.pnl]
path = "/nonexistent/dir/pnl.json"

[cluster]
servers = ["nats://127.0.0.1:4222"]
firm = "acme"
desk = "ops"
"""


def test_a_fleet_only_config_needs_no_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ops.toml with [cluster] and no [[targets]]: the fleet commands and check-config take
    it (no venue key needed); the daemon refuses it with one line naming targets, exit 2."""
    ops = tmp_path / "ops.toml"
    ops.write_text(FLEET_ONLY)
    assert load_config(ops, require_targets=False).targets == ()
    with pytest.raises(ConfigError) as refused:
        load_config(ops)
    assert refused.value.key == "targets"
    env = {**os.environ, "KILLSWITCH_API_KEY": "k", "KILLSWITCH_API_SECRET": "0" * 64}
    run = subprocess.run(
        [sys.executable, "-m", "killswitch", "run", "--config", str(ops)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith(
        "config error: targets: at least one [[targets]] entry is required"
    )
    capsys.readouterr()
    monkeypatch.delenv("KILLSWITCH_API_KEY", raising=False)
    monkeypatch.delenv("KILLSWITCH_API_SECRET", raising=False)
    assert main(["check-config", "--config", str(ops)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["targets"].startswith("none: only `killswitch fleet` can use this file")
    assert shown["credentials"] == "not needed: `killswitch fleet` only"
    daemonless = tmp_path / "none.toml"
    daemonless.write_text(FLEET_ONLY.split("[cluster]")[0])
    assert main(["check-config", "--config", str(daemonless)]) == 2


def test_the_example_config_header_says_what_check_config_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """config/killswitch.toml's header: check-config on it passes, or fails only for the
    PnL directory that the header tells a fresh host to create first."""
    path = ROOT / "config" / "killswitch.toml"
    header = path.read_text().split("\n[")[0]
    code = main(["check-config", "--config", str(path)])
    err = capsys.readouterr().err
    if code != 0:
        found = re.search(r"directory '([^']+)' does not exist", err)
        assert found is not None, err
        assert f"sudo install -d -m 0755 {found.group(1)}" in header
    assert "check-config --online" in header


def test_the_install_steps_name_files_that_exist() -> None:
    """Every checkout file the README's install block copies exists."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### Install and configure")[1].split("```sh")[1].split("```")[0]
    copied = re.findall(r"install -m 0644 (\S+) ", block)
    assert copied
    for name in copied:
        assert (ROOT / name).is_file(), name


# --------------------------------------------------------------------------- trigger


def test_trigger_without_a_daemon_names_the_state_files_holder(tmp_path: Path) -> None:
    """No daemon on the socket, a process holding the state file: the CLI names its pid and
    `kill -USR1 <pid>`; with none holding it, that the daemon is not running."""
    state = tmp_path / "state.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(state)!r}); db.execute('PRAGMA journal_mode=WAL')\n"
            "db.execute('CREATE TABLE IF NOT EXISTS t (x)'); db.commit()\n"
            "print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        found = state_file_holder(state)
        assert found.pid == holder.pid
        assert found.command is not None
        assert "sqlite3" in found.command
        config = tmp_path / "k.toml"
        config.write_text(
            '[exchange]\nbase_url = "http://127.0.0.1:1"\n[[targets]]\nexchange = "E"\n'
            f'[triggers.pnl]\nenabled = false\n[control]\nsocket = "{tmp_path}/no.sock"\n'
            f'[state]\npath = "{state}"\n'
        )
        done = _cli("trigger", "--config", str(config))
        assert done.returncode == 1
        assert "no daemon answers on" in done.stderr
        assert f"process {holder.pid} " in done.stderr
        assert f"`kill -USR1 {holder.pid}`" in done.stderr
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    deadline = time.monotonic() + 5
    while state_file_holder(state).pid is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # the kernel drops the dead process's locks
    done = _cli("trigger", "--config", str(config))
    assert "no process holds the state file" in done.stderr
    assert "the daemon is not running" in done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_an_unreadable_state_file_is_a_problem_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file the user may not read (the service user's 0600): no pid, the problem
    named, no exception; the hint says how root finds the pid."""
    state = tmp_path / "state.db"
    state.write_bytes(b"")

    def refuse(*_: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("killswitch.store.holder.os.open", refuse)
    found = state_file_holder(state)
    assert (found.pid, found.problem) == (None, "Permission denied")
    hint = what_still_kills(state, None)
    assert hint.startswith(f"cannot tell which process holds the state file {state}")
    assert f"`fuser -v {state}`" in hint


def test_holder_of_a_missing_file_is_nobody(tmp_path: Path) -> None:
    """No state file yet: nobody holds it, no error."""
    found = state_file_holder(tmp_path / "none.db")
    assert (found.pid, found.problem) == (None, None)


async def test_order_status_at_info_is_not_written_but_reaches_the_record(
    stream: io.StringIO,  # noqa: F811  (the fixture)
) -> None:
    """At level info an order's status change writes no line, yet the log listeners (the
    kill's journal: how each order was learned) still get its order.status with ``via``."""
    heard: list[dict[str, Any]] = []
    remove = add_listener(lambda e: heard.append(dict(e)))
    try:
        clock = FakeClock()
        confirmer = Confirmer(ScriptedSource(clock, {}), confirm_config(), clock)
        structlog.contextvars.bind_contextvars(kill_id="k1")
        confirmer.observe("o1", "CANCELLED", via="closed_orders")
    finally:
        structlog.contextvars.unbind_contextvars("kill_id")
        remove()
    assert "order.status" not in stream.getvalue()
    statuses = [e for e in heard if e["event"] == "order.status"]
    assert [(e["order_id"], e["status"], e["via"], e["kill_id"]) for e in statuses] == [
        ("o1", "CANCELLED", "closed_orders", "k1")
    ]
    assert statuses[0]["level"] == "debug"
    assert statuses[0]["timestamp"].endswith("Z")

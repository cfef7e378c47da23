"""The shipped units under a real systemd 252: a booted Debian 12 (systemd-nspawn -b).

One container per module: a Debian 12 minbase root file system (built once per
machine by tests/nspawn/rootfs.py, cached), overlaid so the cache stays clean,
booted with ``systemd-nspawn -b``.  The project goes in as the README installs
a service, offline: the hashed lock ``requirements/service.txt`` (``pip download
--require-hashes`` outside, ``pip install --require-hashes --no-index`` inside),
then this checkout's wheel with ``--no-deps``;
``systemd/killswitch.service`` and ``killswitch@.service`` go in byte for byte,
and the simulated exchange runs as a second unit (``killswitch sim --port N``).
Everything after that is what an operator does: ``systemctl``, ``journalctl``,
``systemd-analyze`` and the ``killswitch`` CLI, run inside the container through
``nsenter``.  The container shares the host's network, so the test seeds the
simulated exchange and reads its truth over loopback.

Without root, debootstrap, a Debian mirror or a bootable nspawn, every test here
is skipped with the reason (``pytest -ra`` shows it); ``.ci/run`` installs
``debootstrap`` and ``systemd-container``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.nspawn.container import BootFailed, Container, free_ports, lines
from tests.nspawn.rootfs import RootfsUnavailable, ensure_rootfs

CHECKOUT = Path(__file__).resolve().parent.parent
UNIT_DIR = CHECKOUT / "systemd"
VENV = "/opt/killswitch/venv"
KILLSWITCH = f"{VENV}/bin/killswitch"
UNIT = "killswitch.service"
SIM_UNIT = "killswitch-sim.service"
MAX_EXPOSURE = 1.5
PROGRESS = re.compile(r"KILLING (\d+)/(\d+) confirmed(?:, .+)?")  # then the estimate
TRIPPED = re.compile(r"TRIPPED at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ by (\w+)")
# More orders than the confirmation limit (20 per 60 s, the venue's default and
# the daemon's) lets through in one window, confirmed one id at a time
# (confirm.use_listings = false: closed-order pages would prove 30 in one call):
# the kill then stays at "KILLING ~20/30 confirmed" for most of a minute, long
# enough to look at.
SLOW_KILL_ORDERS = 30
SLOW_KILL = {"use_listings": False}

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.e2e,
    # The first run on a machine builds the root file system (debootstrap, a few
    # minutes on a loaded machine); every wait below has its own, shorter bound.
    pytest.mark.timeout(600),
]

STRATEGY = "strategy.service"  # a trading unit: [halt] units, with the shipped drop-in
STRATEGY_SERVICE = """\
[Unit]
Description=a trading strategy (stands in for one)

[Service]
ExecStart=/bin/sleep infinity
"""
HEARTBEATS = Path(__file__).resolve().parent / "nspawn" / "heartbeats.py"

SIM_SERVICE = """\
[Unit]
Description=simulated exchange for the killswitch tests

[Service]
Type=exec
EnvironmentFile=/etc/killswitch-sim/env
ExecStart={killswitch} sim --port {port}
DynamicUser=yes
"""


def cannot_boot() -> str | None:
    """Why this machine cannot boot a container, or None."""
    if not sys.platform.startswith("linux"):
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {package}; .ci/run installs it)"
    return None


def build_wheelhouse(into: Path) -> None:
    """The locked runtime dependencies (``pip download --require-hashes`` of
    ``requirements/service.txt``, copied beside them) and a wheel of this checkout
    (from a clean copy of the source, so a stale ``build/`` cannot leak into it)."""
    source = into.parent / "source"
    shutil.copytree(
        CHECKOUT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo-run"
        ),
    )
    lock = CHECKOUT / "requirements" / "service.txt"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    for args in (
        ["download", "--quiet", "--require-hashes", "-r", str(lock), "--dest", str(into)],
        # What pip's build isolation needs for an sdist in the lock (nkeys has no wheel).
        [
            "download",
            "--quiet",
            "--only-binary",
            ":all:",
            "--dest",
            str(into),
            "setuptools",
            "wheel",
        ],
        ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), str(source)],
    ):
        done = subprocess.run(
            [*pip, *args], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"pip {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    shutil.copy(lock, into / "service.txt")


@dataclass
class Machine:
    """The booted container with the project installed, and what the tests need to know."""

    c: Container
    sim_port: int
    api_key: str
    api_secret: str

    # ----------------------------------------------------- the simulated exchange

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.sim_port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return json.loads(answer.read())

    def sim_up(self) -> bool:
        try:
            self.sim("GET", "/_sim/stats")
        except (OSError, urllib.error.URLError):
            return False
        return True

    # ---------------------------------------------------------------- configs

    def config(self, name: str = "killswitch", **sections: dict[str, Any]) -> dict[str, Any]:
        """A daemon config against the simulated exchange (paths: the unit's defaults)."""
        data: dict[str, Any] = {
            "exchange": {"base_url": f"http://127.0.0.1:{self.sim_port}", "request_timeout": 2.0},
            "targets": [{"exchange": "EXCHANGE_2", "symbols": []}],
            "triggers": {"heartbeat": {"enabled": False}, "pnl": {"enabled": False}},
            # Under TimeoutStopSec=30s with room to spare; short so a stop mid-kill is quick.
            "daemon": {"shutdown_grace": 3},
        }
        if name != "killswitch":
            data["control"] = {"socket": f"/run/killswitch/{name}/control.sock"}
            data["state"] = {"path": f"/var/lib/killswitch/{name}/state.db"}
        for section, values in sections.items():
            data[section] = {**data.get(section, {}), **values}
        return data

    def install_config(self, name: str, data: dict[str, Any] | str) -> str:
        """/etc/killswitch/<name>.toml plus its credentials (root-only, as the README says)."""
        path = f"/etc/killswitch/{name}.toml"
        text = data if isinstance(data, str) else tomli_w.dumps(data)
        self.c.write(path, text)
        creds = "/etc/killswitch/credentials" + ("" if name == "killswitch" else f"/{name}")
        self.c.write(f"{creds}/api_key", self.api_key, 0o600)
        self.c.write(f"{creds}/api_secret", self.api_secret, 0o600)
        (self.c.root / "etc/killswitch/credentials").chmod(0o700)
        return path

    # ------------------------------------------------------------------ units

    def main_pid(self, unit: str = UNIT) -> int:
        return int(self.c.show(unit, "MainPID")["MainPID"])

    def status_text(self, unit: str = UNIT) -> str:
        return self.c.show(unit, "StatusText")["StatusText"]

    def wait_status(self, pattern: re.Pattern[str], unit: str = UNIT, timeout: float = 30.0) -> str:
        """The unit's STATUS= text once it matches (``systemctl show -p StatusText``)."""

        def matching() -> str | None:
            text = self.status_text(unit)
            return text if pattern.fullmatch(text) else None

        found: str = self.c.wait_for(f"STATUS= matching {pattern.pattern}", matching, timeout)
        return found

    def as_service(
        self, unit: str, *argv: str, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in the unit's mount namespace, as its user and group, no capabilities."""
        pid = self.main_pid(unit)
        uid, gid = self.ids(pid)
        enter = ["nsenter", "-t", str(pid), "-m", "-S", str(uid), "-G", str(gid), "--"]
        return self.c.run(*enter, *argv, check=check)

    def ids(self, pid: int) -> tuple[int, int]:
        """Real uid and gid of ``pid`` in the container."""
        status = self.c.run("cat", f"/proc/{pid}/status").stdout
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
        gid = re.search(r"^Gid:\s+(\d+)", status, re.M)
        assert uid, status
        assert gid, status
        return int(uid[1]), int(gid[1])

    def seed(self, orders: int) -> None:
        self.sim("POST", "/_sim/seed", {"orders": {"BTCUSDT": orders}})

    def fresh(self) -> None:
        """Every killswitch unit stopped and forgotten, configs, credentials and state
        wiped, a new simulated exchange (fresh rate-limit windows), the default config."""
        c = self.c
        c.systemctl(
            "stop",
            "killswitch.socket",
            "killswitch@*.socket",
            "killswitch-halt*.path",
            "killswitch.service",
            "killswitch@*.service",
            "killswitch-halt*.service",
            STRATEGY,
            check=False,
        )
        c.systemctl("reset-failed", check=False)
        c.run("rm", "-rf", "/etc/killswitch", "/run/killswitch", "/var/lib/killswitch")
        c.run("rm", "-rf", "/var/lib/private/killswitch")
        self.install_config("killswitch", self.config())
        c.systemctl("restart", SIM_UNIT)
        c.wait_for("the simulated exchange to listen", self.sim_up, timeout=30)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A booted Debian 12 with the project and both units installed."""
    reason = cannot_boot()
    if reason:
        pytest.skip(reason)
    try:
        lower = ensure_rootfs()
    except (RootfsUnavailable, OSError) as exc:
        pytest.skip(f"no Debian root file system for systemd-nspawn: {exc}")
    wheels = tmp_path_factory.mktemp("nspawn") / "wheels"
    build_wheelhouse(wheels)
    try:
        c = Container.prepare(lower)
    except BootFailed as exc:
        pytest.skip(f"cannot set up a container tree: {exc}")
    try:
        shutil.copytree(wheels, c.root / "wheels")
        try:
            c.boot()
        except BootFailed as exc:
            pytest.skip(f"systemd-nspawn cannot boot a container here: {exc}")
        # The README's install, offline: a venv, the hashed lock, the package itself.
        c.run("python3", "-m", "venv", VENV, timeout=120)
        pip = [f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check"]
        offline = ["--no-index", "--find-links", "/wheels"]
        locked = ["--require-hashes", "-r", "/wheels/service.txt"]
        c.run(*pip, *offline, *locked, timeout=300)
        c.run(*pip, *offline, "--no-deps", "killswitch", timeout=300)
        # Contract §14: copy systemd/* into /etc/systemd/system/, byte for byte.
        shutil.copytree(UNIT_DIR, c.root / "etc/systemd/system", dirs_exist_ok=True)
        c.write(f"/etc/systemd/system/{STRATEGY}", STRATEGY_SERVICE)
        c.write(
            f"/etc/systemd/system/{STRATEGY}.d/killswitch.conf",
            (UNIT_DIR / "trading-unit.d" / "killswitch.conf").read_bytes(),
        )
        (port,) = free_ports(1)
        m = Machine(c, port, f"nspawn-key-{secrets.token_hex(8)}", secrets.token_hex(32))
        c.write(
            "/etc/killswitch-sim/env",
            f"KILLSWITCH_API_KEY={m.api_key}\nKILLSWITCH_API_SECRET={m.api_secret}\n",
            0o600,
        )
        c.write(
            f"/etc/systemd/system/{SIM_UNIT}", SIM_SERVICE.format(killswitch=KILLSWITCH, port=port)
        )
        c.systemctl("daemon-reload")
        # As the README installs it.  Enabled, the unit also stays loaded once
        # stopped: an unreferenced inactive unit is unloaded at once, and with it
        # ExecMainStatus= and Result= (systemctl show then prints defaults).
        c.systemctl("enable", UNIT)
        yield m
    finally:
        c.close()


@pytest.fixture
def box(machine: Machine) -> Machine:
    """The machine reset for one test: nothing running but a new simulated exchange."""
    machine.fresh()
    return machine


CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def instance_socket(name: str) -> str:
    return f"/run/killswitch/{name}/control.sock"


def start(m: Machine, unit: str = UNIT) -> int:
    m.c.systemctl("start", unit, timeout=60)
    return m.main_pid(unit)


# ------------------------------------------------------------------------ tests


def test_start_returns_after_ready_with_status(box: Machine) -> None:
    """The unchanged unit: `systemctl start` returns once READY=1 arrived; STATUS= says ARMED."""
    c = box.c
    assert c.run("cat", f"/etc/systemd/system/{UNIT}").stdout == (UNIT_DIR / UNIT).read_text()
    mark = c.cursor()

    pid = start(box)

    # Type=notify: the unit is "activating" until READY=1, and `start` waits for it.
    shown = c.show(UNIT, "ActiveState", "SubState", "StatusText", "NotifyAccess", "WatchdogUSec")
    assert shown == {
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": "ARMED",
        "NotifyAccess": "main",
        "WatchdogUSec": "10s",
    }
    ready = c.wait_event(UNIT, "daemon.ready", after=mark)
    assert ready["_pid"] == pid
    status = c.run(KILLSWITCH, "status", "--config", "/etc/killswitch/killswitch.toml", "--json")
    assert json.loads(status.stdout)["state"] == "ARMED"
    assert 'Status: "ARMED"' in c.systemctl("status", UNIT, check=False).stdout


def test_sigusr1_kills_and_the_journal_holds_json_events(box: Machine) -> None:
    """`systemctl kill -s SIGUSR1 --kill-whom=main` kills; `journalctl -o cat` lines are JSON."""
    c = box.c
    start(box)
    box.seed(10)
    mark = c.cursor()

    c.systemctl("kill", "-s", "SIGUSR1", "--kill-whom=main", UNIT)

    done = c.wait_event(UNIT, "kill.completed", after=mark)
    fired = c.wait_event(UNIT, "trigger.fired", after=mark)
    assert fired["source"] == "signal"
    assert done["cancelled"] == 10
    assert done["unconfirmed"] == 0
    truth = box.sim("GET", "/_sim/stats")
    assert truth["orders"] == {"CANCELLED": 10}
    assert sum(truth["violations"].values()) == 0
    status = box.wait_status(TRIPPED)
    assert status.endswith("by signal")

    # What an operator reads (this boot, every test so far): every line of the
    # service's own output is one JSON object; the only other lines are
    # systemd's messages about the unit.
    shown = c.run("journalctl", "--no-pager", "-u", UNIT, "-o", "cat").stdout.splitlines()
    from_systemd = set(lines(c.journal(_PID="1", UNIT=UNIT)))
    own = [json.loads(line) for line in shown if line not in from_systemd]
    assert all(isinstance(event, dict) for event in own)
    assert {"daemon.ready", "trigger.fired", "kill.started", "kill.completed"} <= {
        event["event"] for event in own
    }
    names = [event["event"] for event in c.events(UNIT, mark)]
    order = [names.index(n) for n in ("trigger.fired", "kill.started", "kill.completed")]
    assert order == sorted(order)


def test_status_shows_progress_and_the_watchdog_restarts_a_stopped_daemon(box: Machine) -> None:
    """STATUS= shows 'KILLING n/N confirmed'; SIGSTOP → watchdog kill, restart, kill.resumed."""
    c = box.c
    box.install_config("killswitch", box.config(confirm=SLOW_KILL))
    pid = start(box)
    box.seed(SLOW_KILL_ORDERS)
    mark = c.cursor()
    c.systemctl("kill", "-s", "SIGUSR1", "--kill-whom=main", UNIT)
    progress = PROGRESS.fullmatch(box.wait_status(PROGRESS))
    assert progress is not None
    assert int(progress[2]) == SLOW_KILL_ORDERS
    assert int(progress[1]) < SLOW_KILL_ORDERS
    started = c.wait_event(UNIT, "kill.started", after=mark)

    c.systemctl("kill", "-s", "SIGSTOP", "--kill-whom=main", UNIT)

    # WatchdogSec=10s, then RestartSec=2s: well inside the bound.
    c.wait_for(
        "a restarted daemon",
        lambda: (
            box.main_pid() not in (0, pid)
            and box.c.show(UNIT, "ActiveState")["ActiveState"] == "active"
        ),
        timeout=45,
    )
    resumed = c.wait_event(UNIT, "kill.resumed", after=mark)
    assert resumed["_pid"] == box.main_pid()
    assert resumed["kill_id"] == started["kill_id"]
    assert c.show(UNIT, "NRestarts")["NRestarts"] == "1"
    from_systemd = lines(c.journal(mark, _PID="1", UNIT=UNIT))
    assert any("Watchdog timeout" in line for line in from_systemd), from_systemd
    again = PROGRESS.fullmatch(box.wait_status(PROGRESS))
    assert again is not None
    assert int(again[2]) == SLOW_KILL_ORDERS


def test_stop_mid_kill_exits_0_within_timeout_stop_sec(box: Machine) -> None:
    """`systemctl stop` during a kill: kill.interrupted, exit 0, no SIGKILL (Result=success)."""
    c = box.c
    box.install_config("killswitch", box.config(confirm=SLOW_KILL))
    pid = start(box)
    box.seed(SLOW_KILL_ORDERS)
    mark = c.cursor()
    c.systemctl("kill", "-s", "SIGUSR1", "--kill-whom=main", UNIT)
    box.wait_status(PROGRESS)

    c.systemctl("stop", UNIT, timeout=60)

    shown = c.show(
        UNIT, "ActiveState", "Result", "ExecMainPID", "ExecMainCode", "ExecMainStatus", "NRestarts"
    )
    # Past TimeoutStopSec= systemd would SIGKILL it: Result=timeout, ExecMainCode=2 (killed).
    assert shown == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainPID": str(pid),
        "ExecMainCode": "1",  # CLD_EXITED
        "ExecMainStatus": "0",
        "NRestarts": "0",
    }
    interrupted = c.wait_event(UNIT, "kill.interrupted", after=mark)
    assert interrupted["_pid"] == pid
    c.wait_event(UNIT, "daemon.stopped", after=mark)


def test_reload_rereads_the_config(box: Machine) -> None:
    """`systemctl reload` (no /bin/kill in a minimal Debian) → config.reloaded, same process."""
    c = box.c
    assert c.run("test", "-e", "/bin/kill", check=False).returncode != 0  # what broke it once
    pid = start(box)
    mark = c.cursor()
    box.install_config(
        "killswitch",
        box.config(
            exchange={"request_timeout": 3.0},
            triggers={"heartbeat": {"enabled": True, "timeout": 30.0}, "pnl": {"enabled": False}},
        ),
    )

    c.systemctl("reload", UNIT)

    reloaded = c.wait_event(UNIT, "config.reloaded", after=mark)
    assert reloaded["_pid"] == pid
    assert reloaded["needs_restart"] == ["exchange"]
    assert box.main_pid() == pid
    status = c.run(KILLSWITCH, "status", "--config", "/etc/killswitch/killswitch.toml", "--json")
    assert json.loads(status.stdout)["triggers"]["heartbeat"] is True
    assert c.show(UNIT, "ActiveState", "StatusText") == {
        "ActiveState": "active",
        "StatusText": "ARMED",
    }
    assert not [e for e in c.events(UNIT, mark) if e["event"] == "config.reload_failed"]


def test_credentials_arrive_but_stay_out_of_journal_and_sight(box: Machine) -> None:
    """LoadCredential=: the daemon signs with them; not in the journal; the source dir is hidden."""
    c = box.c
    pid = start(box)
    box.seed(3)
    mark = c.cursor()
    c.run(KILLSWITCH, "trigger", "--config", "/etc/killswitch/killswitch.toml")
    done = c.wait_event(UNIT, "kill.completed", after=mark)
    assert done["cancelled"] == 3  # signed with the key pair systemd handed over

    environ = c.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
    assert f"CREDENTIALS_DIRECTORY=/run/credentials/{UNIT}" in environ
    assert not [v for v in environ if v.startswith("KILLSWITCH_API")]
    # As the service sees it: its own copies readable, the source directory not.
    own = box.as_service(UNIT, "cat", f"/run/credentials/{UNIT}/KILLSWITCH_API_KEY")
    assert (own.returncode, own.stdout) == (0, box.api_key)
    for path in ("/etc/killswitch/credentials", "/etc/killswitch/credentials/api_secret"):
        hidden = box.as_service(UNIT, "cat", path)
        assert hidden.returncode != 0
        assert "Permission denied" in hidden.stderr, hidden.stderr
    # Not only file modes (0600 root would keep the user out anyway): in the
    # service's mount namespace InaccessiblePaths= put an empty mode-000 node
    # there, so not even root inside it could read the keys.
    inside = ["nsenter", "-t", str(pid), "-m", "--"]
    assert c.run(*inside, "stat", "-c", "%a", "/etc/killswitch/credentials").stdout == "0\n"
    assert c.run(*inside, "ls", "-A", "/etc/killswitch/credentials").stdout == ""
    assert c.run("ls", "/etc/killswitch/credentials").stdout.split() == ["api_key", "api_secret"]

    journal = c.run("journalctl", "--no-pager", "-o", "export").stdout
    assert box.api_key not in journal
    assert box.api_secret not in journal
    assert box.api_secret.upper() not in journal


def test_config_error_exits_2_and_leaves_the_unit_failed(box: Machine) -> None:
    """A bad config: exit 2, the unit `failed` and not restarting, the key named in the journal."""
    c = box.c
    data = box.config("broken")
    data["triggers"]["heartbeat"]["timeout"] = "soon"
    box.install_config("broken", data)
    unit = "killswitch@broken.service"
    mark = c.cursor()

    started = c.systemctl("start", unit, check=False, timeout=60)

    assert started.returncode != 0
    # With a restart pending the unit would sit in "activating (auto-restart)".
    assert c.show(unit, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts") == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "2",
        "NRestarts": "0",
    }
    said = lines(c.journal(mark, _SYSTEMD_UNIT=unit))
    assert said[-1] == "config error: triggers.heartbeat.timeout: expected a number, got 'soon'"
    assert all(isinstance(json.loads(line), dict) for line in said[:-1])  # daemon.starting


def test_live_security_exposure_at_most_1_5(box: Machine) -> None:
    """`systemd-analyze security` on the running units rates them <= 1.5."""
    c = box.c
    start(box)
    box.install_config("desk-a", box.config("desk-a"))
    for unit in (UNIT, "killswitch@desk-a.service"):
        out = c.run("systemd-analyze", "security", "--no-pager", unit, check=False)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
        assert m, out.stdout + out.stderr
        print(f"live systemd-analyze security {unit}: {m[1]}")
        assert float(m[1]) <= MAX_EXPOSURE


def test_template_instances_are_separate_users(box: Machine) -> None:
    """killswitch@desk-a and @desk-b: side by side, own users, neither reaches the other."""
    c = box.c
    names = ("desk-a", "desk-b")
    for name in names:
        box.install_config(name, box.config(name))
    pids = {name: start(box, f"killswitch@{name}.service") for name in names}

    uids = {name: box.ids(pid)[0] for name, pid in pids.items()}
    assert len(set(uids.values())) == 2
    assert 0 not in uids.values()
    for name in names:
        assert c.show(f"killswitch@{name}.service", "User")["User"] == f"killswitch-{name}"
        as_root = c.run(KILLSWITCH, "status", "--config", f"/etc/killswitch/{name}.toml", "--json")
        assert json.loads(as_root.stdout)["pid"] == pids[name]

    for me, other in (names, names[::-1]):
        unit = f"killswitch@{me}.service"
        theirs = box.as_service(
            unit, KILLSWITCH, "status", "--config", f"/etc/killswitch/{other}.toml"
        )
        assert theirs.returncode == 1, theirs.stdout
        # Refused, not missing (root reached that daemon above): killswitch@.socket
        # makes each socket root's, mode 0600, until a drop-in opens it to a group.
        python = f"{VENV}/bin/python"
        refused = box.as_service(unit, python, "-c", CONNECT, instance_socket(other))
        assert "PermissionError" in refused.stderr, refused.stderr
        signal = box.as_service(unit, "/bin/sh", "-c", f"kill -0 {pids[other]}")
        assert signal.returncode != 0


def test_instances_cannot_start_after_the_plain_unit_ran(box: Machine) -> None:
    """After killswitch.service ran, instances fail 238/STATE_DIRECTORY until its state is gone."""
    c = box.c
    start(box)
    c.systemctl("stop", UNIT)
    box.install_config("desk-a", box.config("desk-a"))
    unit = "killswitch@desk-a.service"

    refused = c.systemctl("start", unit, check=False, timeout=60)

    assert refused.returncode != 0
    # Not a config error (2), so Restart=always retries it every RestartSec=2s, forever.
    assert c.show(unit, "ActiveState", "SubState", "ExecMainStatus") == {
        "ActiveState": "activating",
        "SubState": "auto-restart",
        "ExecMainStatus": "238",  # EXIT_STATE_DIRECTORY
    }
    # The README's remedy: remove the plain unit's state; the next retry starts.
    c.systemctl("clean", "--what=state", UNIT)
    c.wait_for(
        f"{unit} to come up by itself",
        lambda: c.show(unit, "ActiveState")["ActiveState"] == "active",
        timeout=30,
    )
    assert int(c.show(unit, "NRestarts")["NRestarts"]) >= 1


# ------------------------------------------------ socket activation and the halt (§13, §14)


def test_enable_now_brings_the_socket_and_the_halt(box: Machine) -> None:
    """`systemctl enable --now killswitch.service` (contract §14) also enables and starts
    killswitch.socket and killswitch-halt.path; the daemon serves systemd's socket."""
    c = box.c
    helpers = ("killswitch.socket", "killswitch-halt.path")
    c.systemctl("disable", UNIT, *helpers)
    mark = c.cursor()

    c.systemctl("enable", "--now", UNIT, timeout=60)

    for unit in (UNIT, *helpers):
        assert c.systemctl("is-enabled", unit, check=False).stdout.strip() == "enabled", unit
        assert c.systemctl("is-active", unit, check=False).stdout.strip() == "active", unit
    listening = c.wait_event(UNIT, "control.listening", after=mark)
    assert listening["activated"] is True
    assert c.show(UNIT, "TriggeredBy")["TriggeredBy"] == "killswitch.socket"


def _sender(m: Machine, stop: str, uid: int, gid: int) -> subprocess.Popen[str]:
    """The heartbeat sender (tests/nspawn/heartbeats.py) inside the container, as uid:gid."""
    m.c.write("/srv/heartbeats.py", HEARTBEATS.read_bytes())
    m.c.run("rm", "-f", stop)
    assert m.c.init_pid is not None
    enter = ["nsenter", "-t", str(m.c.init_pid), "-a", "-S", str(uid), "-G", str(gid), "--"]
    return subprocess.Popen(
        [*enter, "/usr/bin/python3", "/srv/heartbeats.py", "/run/killswitch/control.sock", stop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SOCKET_DROP_IN = "/etc/systemd/system/killswitch.socket.d/trading.conf"


def _strategy_user(m: Machine) -> tuple[int, int]:
    """The README's set-up: group trading, user strategy in it, the socket opened to it."""
    c = m.c
    if c.run("getent", "passwd", "strategy", check=False).returncode != 0:
        c.run("groupadd", "--system", "trading")
        c.run("useradd", "--system", "--no-create-home", "-g", "trading", "strategy")
    c.write(SOCKET_DROP_IN, "[Socket]\nSocketGroup=trading\nSocketMode=0660\n")
    c.systemctl("daemon-reload")
    uid = int(c.run("id", "-u", "strategy").stdout)
    gid = int(c.run("id", "-g", "strategy").stdout)
    return uid, gid


def test_heartbeats_are_answered_across_restart_and_kill_9(box: Machine) -> None:
    """The strategy user (socket group, [control.access]) heartbeats every 100 ms through
    `systemctl restart` and a `kill -9` of the main process: every one answered 200 by the
    next daemon, none refused; a reset it may not do is refused by its peer credentials."""
    c = box.c
    uid, gid = _strategy_user(box)
    config = "/etc/killswitch/killswitch.toml"
    rights = {"heartbeat": ["strategy"], "status": ["@trading"], "reset": ["root"]}
    box.install_config("killswitch", box.config(control={"access": rights}))
    stop = "/srv/heartbeats.stop"  # where the strategy user can see it
    try:
        first = start(box)
        sender = _sender(box, stop, uid, gid)
        try:
            c.wait_for("the first heartbeat", lambda: _status(box)["heartbeat_age"] is not None)
            c.systemctl("restart", UNIT, timeout=60)
            second = box.main_pid()
            assert second != first
            c.run("/bin/sh", "-c", f"kill -9 {second}")
            c.wait_for(
                "the daemon restarted after kill -9",
                lambda: (
                    box.main_pid() not in (0, second)
                    and c.show(UNIT, "ActiveState")["ActiveState"] == "active"
                ),
                timeout=45,
            )
            c.run(KILLSWITCH, "heartbeat", "--config", config)
        finally:
            c.run("touch", stop)
            out, err = sender.communicate(timeout=60)
        result = json.loads(out)
        print(f"heartbeats across restart and kill -9: {result}")
        assert result["failed"] == [], err
        assert result["sent"] >= 5
        # One heartbeat at least waited out the kill -9 (RestartSec=2s) in systemd's
        # backlog and was answered by the next daemon: sent during the outage, not after.
        assert result["slowest_s"] >= 1.0
        assert c.show(UNIT, "NRestarts")["NRestarts"] == "1"  # the kill -9 (restart is a job)
        # The same user under the real sandbox: its own uid, not 65534 (no PrivateUsers=).
        enter = ["nsenter", "-t", str(c.init_pid), "-a", "-S", str(uid), "-G", str(gid), "--"]
        refused = subprocess.run(
            [*enter, KILLSWITCH, "reset", "--config", config],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 1
        assert "user strategy" in refused.stderr, refused.stderr
        assert "'reset'" in refused.stderr
    finally:
        c.run("rm", "-f", SOCKET_DROP_IN)
        c.systemctl("daemon-reload")


def _status(m: Machine) -> dict[str, Any]:
    out = m.c.run(KILLSWITCH, "status", "--config", "/etc/killswitch/killswitch.toml", "--json")
    status: dict[str, Any] = json.loads(out.stdout)
    return status


def _journal_time(entries: list[dict[str, Any]], message: str) -> float:
    found = [e for e in entries if str(e.get("MESSAGE", "")).startswith(message)]
    assert found, message
    return int(found[0]["__REALTIME_TIMESTAMP"]) / 1e6


def test_halt_stops_the_strategy_and_keeps_it_down_until_reset(box: Machine) -> None:
    """SIGUSR1: strategy.service stopped within 1 s (halt.stopped); starting it fails while
    tripped, its journal says why; after `killswitch reset` it starts."""
    c = box.c
    config = "/etc/killswitch/killswitch.toml"
    box.install_config("killswitch", box.config(halt={"units": [STRATEGY]}))
    start(box)
    c.systemctl("start", STRATEGY)
    box.seed(5)
    mark = c.cursor()

    c.systemctl("kill", "-s", "SIGUSR1", "--kill-whom=main", UNIT)

    stopped = c.wait_event(UNIT, "halt.stopped", after=mark)
    assert stopped["units"] == [STRATEGY]
    assert c.show(STRATEGY, "ActiveState")["ActiveState"] == "inactive"
    from_systemd = c.journal(mark, _PID="1")
    signalled = _journal_time(from_systemd, f"{UNIT}: Sent signal SIGUSR1")
    halted = _journal_time([e for e in from_systemd if e.get("UNIT") == STRATEGY], "Stopped")
    print(f"SIGUSR1 to {STRATEGY} stopped: {(halted - signalled) * 1000:.0f} ms")
    assert halted - signalled <= 1.0  # contract §14, by systemd's own clock

    refused = c.systemctl("start", STRATEGY, check=False)
    assert refused.returncode != 0
    said = lines(c.journal(mark, _SYSTEMD_UNIT=STRATEGY))
    assert any("killswitch is tripped" in line for line in said), said
    status = json.loads(c.run(KILLSWITCH, "status", "--config", config, "--json").stdout)
    assert status["halt"]["state"] == "stopped"
    assert status["halt"]["stopped"] == [STRATEGY]

    c.wait_event(UNIT, "kill.completed", after=mark)  # a running kill refuses a reset
    c.run(KILLSWITCH, "reset", "--config", config, "--reason", "nspawn test")
    c.systemctl("start", STRATEGY)
    assert c.show(STRATEGY, "ActiveState")["ActiveState"] == "active"
    reset = c.wait_event(UNIT, "switch.reset", after=mark)
    assert reset["peer"]["uid"] == 0
    assert reset["reason"] == "nspawn test"
    c.wait_for(
        "the halt helper to leave once the marker is gone",
        lambda: c.show("killswitch-halt.service", "ActiveState")["ActiveState"] == "inactive",
        timeout=10,
    )

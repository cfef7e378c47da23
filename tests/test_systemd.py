"""The systemd units: valid, hardened, and in step with the daemon's defaults.

``systemd-analyze verify`` refuses a unit whose ``ExecStart=`` binary does not
exist, and /opt/killswitch/venv is not installed where tests run.  So verify
runs on a copy in ``tmp_path`` whose only change is the ExecStart program
path, pointed at a stub script (asserted: exactly one line differs).  Every
other line is the shipped text, and stderr must be empty: ``verify`` exits 0
on unknown keys and only warns, so an empty stderr is the real check.

``systemd-analyze security --offline=yes`` scores the shipped files as they
are.  Without ``systemd-analyze`` (Debian package ``systemd``) those tests are
skipped with that reason; .ci/run installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from killswitch.config.model import (
    ControlConfig,
    DaemonConfig,
    ExchangeConfig,
    PnlTrigger,
    StateConfig,
)
from killswitch.service.halt_helper import MARKER

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ("killswitch.service", "killswitch@.service")
SENTINEL_UNIT = "killswitch-sentinel@.service"  # contract §15: same sandbox as the template
MAX_EXPOSURE = 1.5
INSTALLED_BINARY = "/opt/killswitch/venv/bin/killswitch"
INSTALLED_PYTHON = "/opt/killswitch/venv/bin/python"
HELPER_UNITS = (
    "killswitch.socket",
    "killswitch@.socket",
    "killswitch-halt.path",
    "killswitch-halt@.path",
    "killswitch-halt.service",
    "killswitch-halt@.service",
)
# Dependencies on the unit's own socket and path unit: "@%i" in the template.
INSTANCE_DEPENDENCIES = frozenset({"Wants", "Requires", "After", "Also"})
# Keys that differ between the plain unit and the template: everything else
# (the whole sandbox) must be identical.
PER_INSTANCE_KEYS = frozenset(
    {
        "Description",
        "ExecStart",
        "User",
        "RuntimeDirectory",  # the sentinel's own; a desk's socket is systemd's
        "StateDirectory",
        "LoadCredential",
        "Environment",  # KILLSWITCH_DESK=%i: the desk name for [cluster]
    }
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian package 'systemd'; .ci/run installs it)",
)

Directive = tuple[str, str, str]  # (section, key, value)


def directives(text: str) -> list[Directive]:
    """The unit's ``Key=value`` lines with their section, comments dropped."""
    section = ""
    out: list[Directive] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: str, key: str) -> list[str]:
    text = (UNIT_DIR / unit).read_text(encoding="utf-8")
    return [v for _, k, v in directives(text) if k == key]


def one(unit: str, key: str) -> str:
    found = values(unit, key)
    assert len(found) == 1, f"{unit}: {key}= set {len(found)} times"
    return found[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert m, f"unexpected time span {value!r}"
    return float(m[1]) * (60 if m[2] == "min" else 1)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--no-pager", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("unit", "copy_as"),
    [
        ("killswitch.service", "killswitch.service"),
        ("killswitch@.service", "killswitch@.service"),
        ("killswitch@.service", "killswitch@desk-a.service"),
        (SENTINEL_UNIT, SENTINEL_UNIT),
        (SENTINEL_UNIT, "killswitch-sentinel@desk-a.service"),
    ],
)
def test_verify_accepts_unit_without_warnings(unit: str, copy_as: str, tmp_path: Path) -> None:
    """systemd-analyze verify exits 0 with an empty stderr (template and an instance too)."""
    stub = tmp_path / "killswitch"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    shipped = (UNIT_DIR / unit).read_text(encoding="utf-8")
    copy = shipped.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={stub} ")
    changed = [a for a, b in zip(shipped.splitlines(), copy.splitlines(), strict=True) if a != b]
    assert len(changed) == 1, "only the ExecStart program path may be rewritten"
    (tmp_path / copy_as).write_text(copy, encoding="utf-8")
    for other in HELPER_UNITS:  # what it Requires=, Wants= and Also= names (Python stubbed)
        text = (UNIT_DIR / other).read_text(encoding="utf-8")
        (tmp_path / other).write_text(text.replace(INSTALLED_PYTHON, str(stub)), encoding="utf-8")

    result = analyze("verify", str(tmp_path / copy_as))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
@pytest.mark.parametrize("unit", [*UNITS, SENTINEL_UNIT])
def test_security_exposure_at_most_1_5(
    unit: str, record_property: Callable[[str, object], None]
) -> None:
    """systemd-analyze security --offline rates the shipped unit at an exposure <= 1.5."""
    result = analyze(
        "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", str(UNIT_DIR / unit)
    )

    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert m, result.stdout + result.stderr
    score = float(m[1])
    record_property(f"exposure[{unit}]", score)
    print(f"systemd-analyze security {unit}: exposure {score} (limit {MAX_EXPOSURE})")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert score <= MAX_EXPOSURE


def test_template_has_the_same_sandbox() -> None:
    """killswitch@.service differs from killswitch.service only in per-instance keys."""
    plain, template = (
        {
            (section, key, value.replace("@%i", "") if key in INSTANCE_DEPENDENCIES else value)
            for section, key, value in directives((UNIT_DIR / u).read_text(encoding="utf-8"))
            if key not in PER_INSTANCE_KEYS
        }
        for u in UNITS
    )

    assert plain == template
    for key in PER_INSTANCE_KEYS - {"Description", "User"}:
        assert all("%i" in v for v in values("killswitch@.service", key)), key


def test_sentinel_template_has_the_same_sandbox_and_its_own_names() -> None:
    """killswitch-sentinel@.service: the template's sandbox; its own desk name, directories,
    user and credentials (the desk's venue key and the sentinel's NATS user)."""
    template, sentinel = (
        {
            d
            for d in directives((UNIT_DIR / u).read_text(encoding="utf-8"))
            if d[1] not in PER_INSTANCE_KEYS
        }
        for u in ("killswitch@.service", SENTINEL_UNIT)
    )
    # A desk's daemon serves systemd's socket and halts its host's trading units
    # (contract §13, §14); a sentinel has neither: it binds its own socket in its
    # RuntimeDirectory= and, with no other user to tell apart, keeps PrivateUsers=.
    desk_only = {
        d
        for d in template
        if d[1] in INSTANCE_DEPENDENCIES and (".socket" in d[2] or "halt" in d[2])
    }
    sentinel_only = {d for d in sentinel if d[1] in ("RuntimeDirectoryMode", "PrivateUsers")}

    assert template - desk_only == sentinel - sentinel_only
    assert sentinel_only == {
        ("Service", "RuntimeDirectoryMode", "0700"),
        ("Service", "PrivateUsers", "yes"),
    }
    assert one(SENTINEL_UNIT, "Environment") == "KILLSWITCH_DESK=%i-sentinel"
    assert one(SENTINEL_UNIT, "RuntimeDirectory") == "killswitch/sentinel-%i"
    assert one(SENTINEL_UNIT, "StateDirectory") == "killswitch/sentinel-%i"
    names = sorted(v.partition(":")[0] for v in values(SENTINEL_UNIT, "LoadCredential"))
    defaults = ExchangeConfig()
    assert names == sorted([defaults.api_key_env, defaults.api_secret_env, "KILLSWITCH_NATS_CREDS"])
    assert all("/sentinel-%i/" in v for v in values(SENTINEL_UNIT, "LoadCredential"))


def test_units_match_the_daemon_defaults() -> None:
    """Paths, credential names and timeouts agree with killswitch.config.model's defaults."""
    for unit in UNITS:
        socket_dir = PurePosixPath(ControlConfig().socket.parent).relative_to("/run")
        state_dir = PurePosixPath(StateConfig().path.parent).relative_to("/var/lib")
        suffix = "/%i" if "@" in unit else ""
        at = "@%i" if "@" in unit else ""
        # The socket is systemd's (a RuntimeDirectory= would be removed at each restart).
        assert values(unit, "RuntimeDirectory") == []
        sock = unit.replace(".service", ".socket").replace("@", "@%i")
        assert one(unit, "Requires") == sock
        assert (
            one(sock.replace("%i", ""), "ListenStream") == f"/run/{socket_dir}{suffix}/control.sock"
        )
        assert one(unit, "StateDirectory") == f"{state_dir}{suffix}"
        assert one(unit, "Also").split() == [sock, f"killswitch-halt{at}.path"]
        # The halt: the marker where the daemon writes it, the helper reading the same config.
        path_unit = f"killswitch-halt{'@' if at else ''}.path"
        marker = f"/var/lib/{state_dir}{suffix}/{MARKER}"
        assert one(path_unit, "PathExists") == marker
        helper = one(path_unit.replace(".path", ".service"), "ExecStart")
        assert helper.startswith(f"{INSTALLED_PYTHON} -m killswitch.service.halt_helper ")
        assert helper.split("--config ")[1] == one(unit, "ExecStart").split("--config ")[1]
        assert f"-{PnlTrigger().path.parent}" in one(unit, "ReadOnlyPaths").split()

        defaults = ExchangeConfig()
        names = sorted(v.partition(":")[0] for v in values(unit, "LoadCredential"))
        assert names == sorted([defaults.api_key_env, defaults.api_secret_env])

        assert seconds(one(unit, "TimeoutStopSec")) >= DaemonConfig().shutdown_grace + 10
        assert one(unit, "Type") == "notify"
        assert one(unit, "NotifyAccess") == "main"
        assert seconds(one(unit, "WatchdogSec")) > 0
        assert one(unit, "ExecReload") == "/bin/sh -c 'kill -HUP $MAINPID'"
        assert one(unit, "ExecStart").startswith(
            f"{INSTALLED_BINARY} run --config /etc/killswitch/"
        )


def test_the_trading_unit_drop_in_refuses_to_start_while_tripped() -> None:
    """trading-unit.d/killswitch.conf: one privileged ExecStartPre= testing the halt marker."""
    drop_in = UNIT_DIR / "trading-unit.d" / "killswitch.conf"
    found = directives(drop_in.read_text(encoding="utf-8"))
    assert [(section, key) for section, key, _ in found] == [("Service", "ExecStartPre")]
    command = found[0][2]
    assert command.startswith("+/bin/sh -c ")  # root, outside the trading unit's sandbox
    assert f"[ -e /var/lib/killswitch/{MARKER} ]" in command
    assert "exit 1" in command  # fails the start (an ExecCondition= would skip it silently)

"""Config loading: every contract key parsed once; bad input names its key, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.config import ConfigError, load_config, parse_config, reloadable
from killswitch.credentials import Secret, load_credentials

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = {"targets": [{"exchange": "EXCHANGE_2"}]}


def _with(**sections: object) -> dict[str, object]:
    return {**MINIMAL, **sections}


def test_example_config_covers_every_contract_key() -> None:
    """config/killswitch.toml loads and carries the contract's documented defaults."""
    cfg = load_config(ROOT / "config" / "killswitch.toml")
    assert cfg.exchange.base_url == "https://coinswitch.co"
    assert cfg.exchange.order_status_path == "/trade/api/v2/futures/order"
    assert cfg.cancel_all.rate_limit.requests == 10
    assert cfg.cancel_all.rate_limit.per_seconds == 60
    assert cfg.cancel_all.rate_limit.margin == 0.5
    assert cfg.confirm.rate_limit.requests == 20
    assert cfg.targets[0].exchange == "EXCHANGE_2"
    assert cfg.targets[0].symbols == ()
    assert cfg.triggers.pnl.threshold == -5000.0
    assert cfg.control.socket == Path("/run/killswitch/control.sock")
    assert cfg.daemon.shutdown_grace == 10


def test_demo_config_loads() -> None:
    """config/demo.toml is a valid config (relative paths resolve next to it)."""
    cfg = load_config(ROOT / "config" / "demo.toml")
    assert cfg.exchange.base_url.startswith("http://127.0.0.1")
    assert cfg.state.path.is_absolute()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_with(exchange={"base_url": "http://exchange.example"}), "exchange.base_url"),
        (_with(exchange={"base_url": "ftp://x"}), "exchange.base_url"),
        (_with(exchange={"signing": "rsa"}), "exchange.signing"),
        (_with(exchange={"request_timeout": 0}), "exchange.request_timeout"),
        (_with(exchange={"dry_run": "yes"}), "exchange.dry_run"),
        (_with(exchange={"bogus": 1}), "exchange.bogus"),
        (_with(cancel_all={"rate_limit": {"requests": 0}}), "cancel_all.rate_limit.requests"),
        (
            _with(cancel_all={"rate_limit": {"per_seconds": -1}}),
            "cancel_all.rate_limit.per_seconds",
        ),
        (_with(confirm={"max_concurrency": 1.5}), "confirm.max_concurrency"),
        (_with(confirm={"max_concurrency": 10**400}), "confirm.max_concurrency"),
        (_with(confirm={"rate_limit": {"requests": 10**7}}), "confirm.rate_limit.requests"),
        (_with(confirm={"rate_limit": {"margin": -0.1}}), "confirm.rate_limit.margin"),
        (_with(triggers={"pnl": {"threshold": "abc"}}), "triggers.pnl.threshold"),
        (_with(triggers={"heartbeat": {"timeout": True}}), "triggers.heartbeat.timeout"),
        (_with(triggers={"sms": {}}), "triggers.sms"),
        (_with(log={"level": "loud"}), "log.level"),
        ({"targets": []}, "targets"),
        ({}, "targets"),
        ({"targets": [{"symbols": []}]}, "targets[0].exchange"),
        ({"targets": [{"exchange": "E", "symbols": "BTC"}]}, "targets[0].symbols"),
        ({"targets": [{"exchange": "E"}, {"exchange": "E"}]}, "targets[1]"),
        (_with(surprise=True), "surprise"),
    ],
)
def test_bad_values_name_their_key(data: dict[str, object], key: str) -> None:
    """Each bad value raises ConfigError naming the dotted key."""
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key


def test_http_allowed_for_loopback_only() -> None:
    """http:// base URLs pass for 127.0.0.1, ::1 and localhost."""
    for url in ("http://127.0.0.1:8000", "http://[::1]:8000", "http://localhost"):
        assert parse_config(_with(exchange={"base_url": url})).exchange.base_url == url


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_run_with_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """`killswitch run` on a bad value prints one `config error: <key>: ...` line, exit 2."""
    path = tmp_path / "bad.toml"
    path.write_text('[[targets]]\nexchange = "E"\n[triggers.pnl]\nthreshold = "abc"\n')
    result = _run_cli("run", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config error: triggers.pnl.threshold: expected a number")
    assert result.stdout == ""


def test_unparsable_toml_exits_2(tmp_path: Path) -> None:
    """A file that is not TOML is a config error too, exit 2."""
    path = tmp_path / "bad.toml"
    path.write_text("[[targets\n")
    result = _run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("config error: config:")


def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    """check-config prints the effective config and never the key or secret."""
    key, secret = "AKIA-very-secret-key", "ab" * 32
    env = {"PATH": "/usr/bin:/bin", "KILLSWITCH_API_KEY": key, "KILLSWITCH_API_SECRET": secret}
    example = (ROOT / "config" / "killswitch.toml").read_text()
    config = tmp_path / "killswitch.toml"  # the example, its PnL file in a directory that exists
    config.write_text(example.replace("/var/lib/trading/pnl.json", str(tmp_path / "pnl.json")))
    result = _run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["exchange"]["api_key_env"] == "KILLSWITCH_API_KEY"
    assert effective["credentials"].startswith("found")
    assert key not in result.stdout + result.stderr
    assert secret not in result.stdout + result.stderr


def test_credentials_from_environment_or_credentials_directory(tmp_path: Path) -> None:
    """Secrets come from the named env vars, else from $CREDENTIALS_DIRECTORY/<name>."""
    cfg = parse_config(MINIMAL).exchange
    creds = load_credentials(cfg, {"KILLSWITCH_API_KEY": "k1", "KILLSWITCH_API_SECRET": "0f" * 32})
    assert creds.api_key.reveal() == "k1"
    (tmp_path / "KILLSWITCH_API_KEY").write_text("k2\n")
    (tmp_path / "KILLSWITCH_API_SECRET").write_text("1e" * 32)
    creds = load_credentials(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert creds.api_key.reveal() == "k2"
    assert "k2" not in repr(creds)


def test_missing_or_malformed_secret_is_a_config_error() -> None:
    """No secret, or an ed25519 secret that is not 64 hex chars, names the key."""
    cfg = parse_config(MINIMAL).exchange
    with pytest.raises(ConfigError) as info:
        load_credentials(cfg, {"KILLSWITCH_API_KEY": "k"})
    assert info.value.key == "exchange.api_secret_env"
    with pytest.raises(ConfigError) as info:
        load_credentials(cfg, {"KILLSWITCH_API_KEY": "k", "KILLSWITCH_API_SECRET": "zz"})
    assert info.value.key == "exchange.api_secret_env"
    assert "zz" not in str(info.value)


def test_secret_never_prints() -> None:
    """Secret's repr and str hide the value."""
    s = Secret("hunter2-hunter2")
    assert "hunter2" not in repr(s) + str(s) + f"{s}"


def test_reload_applies_live_keys_and_names_the_rest() -> None:
    """reloadable() takes thresholds and targets, keeps restart-only keys and names them."""
    current = parse_config(_with(triggers={"pnl": {"enabled": False}}))
    new = parse_config(
        {
            "targets": [{"exchange": "EXCHANGE_2", "symbols": ["BTCUSDT"]}],
            "exchange": {"base_url": "https://other.example"},
            "cancel_all": {"rate_limit": {"requests": 5}},
            "confirm": {"deadline": 30, "rate_limit": {"requests": 40}},
            "triggers": {"heartbeat": {"timeout": 3.0}, "pnl": {"enabled": True}},
        }
    )
    applied, restart = reloadable(current, new)
    assert applied.targets[0].symbols == ("BTCUSDT",)
    assert applied.confirm.deadline == 30
    assert applied.triggers.heartbeat.timeout == 3.0
    assert applied.exchange == current.exchange
    assert applied.cancel_all == current.cancel_all
    assert applied.confirm.rate_limit == current.confirm.rate_limit
    assert applied.triggers.pnl.enabled is False
    assert restart == ["cancel_all", "confirm.rate_limit", "exchange", "triggers.pnl.enabled"]


def _pnl_config(tmp_path: Path, pnl_path: str) -> Path:
    path = tmp_path / "ks.toml"
    path.write_text(
        '[[targets]]\nexchange = "E"\n'
        f"[triggers.pnl]\npath = {json.dumps(pnl_path)}\n"
        f'[control]\nsocket = "{tmp_path}/c.sock"\n[state]\npath = "{tmp_path}/s.db"\n'
    )
    return path


@pytest.mark.parametrize("verb", ["check-config", "run"])
def test_unexpandable_path_is_a_config_error(tmp_path: Path, verb: str) -> None:
    """`~nosuchuser/x`: `config error: triggers.pnl.path: cannot expand ~nosuchuser`, exit 2."""
    result = _run_cli(verb, "--config", str(_pnl_config(tmp_path, "~nosuchuser/x")))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: triggers.pnl.path: cannot expand ~nosuchuser"
    ]
    assert result.stdout == ""


def test_check_config_refuses_a_pnl_directory_that_is_missing_or_a_file(tmp_path: Path) -> None:
    """check-config: a PnL directory that does not exist, or is a file, is a config error."""
    (tmp_path / "a-file").write_text("")
    for pnl_path, problem in (
        (f"{tmp_path}/nowhere/pnl.json", "does not exist"),
        (f"{tmp_path}/a-file/pnl.json", "is not a directory"),
    ):
        result = _run_cli("check-config", "--config", str(_pnl_config(tmp_path, pnl_path)))
        assert result.returncode == 2, result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("config error: triggers.pnl.path: ")
        assert lines[0].endswith(problem)
    ok = _run_cli("check-config", "--config", str(_pnl_config(tmp_path, f"{tmp_path}/p.json")))
    assert ok.returncode == 0, ok.stderr


def test_run_refuses_a_file_as_pnl_directory_but_not_a_missing_one(tmp_path: Path) -> None:
    """load_config (run, reload) refuses a file as the directory; a missing one may appear later."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(_pnl_config(tmp_path, f"{tmp_path}/a-file/pnl.json"))
    assert info.value.key == "triggers.pnl.path"
    later = load_config(_pnl_config(tmp_path, f"{tmp_path}/later/pnl.json"))
    assert later.triggers.pnl.path == tmp_path / "later" / "pnl.json"
    disabled = _pnl_config(tmp_path, f"{tmp_path}/a-file/pnl.json")
    disabled.write_text(
        disabled.read_text().replace("[triggers.pnl]\n", "[triggers.pnl]\nenabled = false\n")
    )
    assert not load_config(disabled).triggers.pnl.enabled

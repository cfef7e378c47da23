"""Config loading: every contract key parsed once; bad input names its key, exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from killswitch.config.load import load_config, parse_config
from killswitch.config.model import FlatConfig, GuardConfig, RateLimit, reloadable
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import Secret, load_credentials

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
    defaults = parse_config({"targets": [{"exchange": "EXCHANGE_2"}]}, base=ROOT / "config")
    assert replace(cfg, source=None) == defaults  # the example documents every default


def test_issue_9_keys_and_defaults() -> None:
    """Listings, server time, clock sync, [flat] and [guard] default to contract v2's values."""
    cfg = parse_config(MINIMAL)
    assert cfg.exchange.open_orders_path == "/trade/api/v2/futures/orders/open"
    assert cfg.exchange.closed_orders_path == "/trade/api/v2/futures/orders/closed"
    assert cfg.exchange.time_path == "/trade/api/v2/time"
    assert cfg.exchange.clock_sync_interval == 60
    assert cfg.flat.rate_limit == RateLimit(20, 60.0, 0.5)
    assert cfg.flat.lookback_days == 7
    assert cfg.guard == GuardConfig(enabled=True, interval=15.0)
    assert "PARTIALLY_EXECUTED" in cfg.confirm.terminal_statuses
    assert not hasattr(cfg.exchange, "keepalive_interval")


def test_issue_9_keys_are_read() -> None:
    """Every issue-9 key given in the file reaches the config object."""
    cfg = parse_config(
        _with(
            exchange={
                "open_orders_path": "/o",
                "closed_orders_path": "/c",
                "time_path": "/t",
                "clock_sync_interval": 30,
            },
            flat={"lookback_days": 21, "rate_limit": {"requests": 5, "per_seconds": 10}},
            guard={"enabled": False, "interval": 2.5},
        )
    )
    assert (cfg.exchange.open_orders_path, cfg.exchange.closed_orders_path) == ("/o", "/c")
    assert (cfg.exchange.time_path, cfg.exchange.clock_sync_interval) == ("/t", 30.0)
    assert cfg.flat == FlatConfig(rate_limit=RateLimit(5, 10.0, 0.5), lookback_days=21.0)
    assert cfg.guard == GuardConfig(enabled=False, interval=2.5)


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
        (_with(exchange={"open_orders_path": "orders/open"}), "exchange.open_orders_path"),
        (_with(exchange={"closed_orders_path": ""}), "exchange.closed_orders_path"),
        (_with(exchange={"time_path": 7}), "exchange.time_path"),
        (_with(exchange={"clock_sync_interval": 0}), "exchange.clock_sync_interval"),
        (_with(exchange={"clock_sync_interval": 86400}), "exchange.clock_sync_interval"),
        (_with(exchange={"keepalive_interval": 10}), "exchange.keepalive_interval"),
        (_with(flat={"lookback_days": 0}), "flat.lookback_days"),
        (_with(flat={"lookback_days": 1000}), "flat.lookback_days"),
        (_with(flat={"lookback_days": "7d"}), "flat.lookback_days"),
        (_with(flat={"rate_limit": {"requests": 0}}), "flat.rate_limit.requests"),
        (_with(flat={"rate_limit": {"window": 60}}), "flat.rate_limit.window"),
        (_with(flat={"depth": 1}), "flat.depth"),
        (_with(flat=[]), "flat"),
        (_with(guard={"enabled": "yes"}), "guard.enabled"),
        (_with(guard={"interval": 0.5}), "guard.interval"),
        (_with(guard={"interval": float("nan")}), "guard.interval"),
        (_with(guard={"every": 15}), "guard.every"),
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


def test_bad_issue_9_value_exits_2_naming_its_key(tmp_path: Path) -> None:
    """`check-config` on a bad [guard] value prints `config error: guard.interval: ...`, exit 2."""
    path = tmp_path / "bad.toml"
    path.write_text('[[targets]]\nexchange = "E"\n[guard]\ninterval = 0\n')
    result = _run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("config error: guard.interval: ")
    assert len(result.stderr.strip().splitlines()) == 1


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
    # stdout holds only the JSON line the package writes once its signal handling is in place
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["daemon.starting"]


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
            "flat": {"lookback_days": 14, "rate_limit": {"requests": 10}},
            "guard": {"interval": 5},
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
    assert applied.flat.lookback_days == 14
    assert applied.flat.rate_limit == current.flat.rate_limit
    assert applied.guard.interval == 5
    assert applied.triggers.pnl.enabled is False
    assert restart == [
        "cancel_all",
        "confirm.rate_limit",
        "exchange",
        "flat.rate_limit",
        "triggers.pnl.enabled",
    ]


# --------------------------------------------------------------------------- check-config --online

ONLINE_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # RFC 8032 #1
ONLINE_KEY = "online-check-api-key"


class _Venue:
    """Server time and a signature-checking open-orders listing, on loopback."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.public = Ed25519PrivateKey.from_private_bytes(
            bytes.fromhex(ONLINE_SECRET)
        ).public_key()
        self.paths: list[str] = []
        app = web.Application()
        app.router.add_get("/trade/api/v2/time", self.time, allow_head=False)
        app.router.add_post("/trade/api/v2/futures/orders/open", self.open_orders)
        self.app = app

    async def time(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def open_orders(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        h = request.headers
        message = f"POST{request.path}{h.get('X-AUTH-EPOCH', '')}".encode()
        try:
            self.public.verify(bytes.fromhex(h.get("X-AUTH-SIGNATURE", "")), message)
            good = h.get("X-AUTH-APIKEY") == self.api_key
        except (InvalidSignature, ValueError):
            good = False
        if not good:
            return web.json_response({"message": "Invalid API key or signature"}, status=401)
        assert h["Content-Type"] == "application/json"
        return web.json_response({"data": {"orders": [], "cursor": None}})


async def _check_online(workdir: Path, api_key: str) -> tuple[int, str, str, list[str]]:
    venue = _Venue(ONLINE_KEY)
    server = TestServer(venue.app, host="127.0.0.1")
    await server.start_server()
    try:
        path = workdir / "online.toml"
        path.write_text(
            f'[exchange]\nbase_url = "http://127.0.0.1:{server.port}"\ndry_run = true\n'
            '[[targets]]\nexchange = "EXCHANGE_2"\n'
            f'[control]\nsocket = "{workdir}/c.sock"\n[state]\npath = "{workdir}/s.db"\n'
            f'[triggers.pnl]\npath = "{workdir}/pnl.json"\n'  # check-config wants its directory
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KILLSWITCH_API_KEY": api_key,
            "KILLSWITCH_API_SECRET": ONLINE_SECRET,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "killswitch",
            "check-config",
            "--config",
            str(path),
            "--online",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await server.close()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), venue.paths


async def test_check_config_online_passes_with_the_right_key(workdir: Path) -> None:
    """--online syncs the clock, lists once per target, prints the result, exit 0, no secret."""
    code, out, err, paths = await _check_online(workdir, ONLINE_KEY)

    assert code == 0, err
    online = json.loads(out)["online"]
    assert online["ok"] is True
    assert isinstance(online["clock"]["offset_ms"], int)
    assert online["self_test"]["checks"] == [
        {"exchange": "EXCHANGE_2", "ok": True, "http_status": None, "error": None, "message": None}
    ]
    assert paths.count("/trade/api/v2/futures/orders/open") == 1  # even with dry_run = true
    assert ONLINE_KEY not in out + err
    assert ONLINE_SECRET not in out + err
    assert all(json.loads(line) for line in err.splitlines())  # stderr: JSON events only


async def test_check_config_online_with_a_wrong_key_exits_1_with_the_venue_message(
    workdir: Path,
) -> None:
    """A wrong key: 401 after a re-sync, exchange.rejected naming credentials/clock, exit 1."""
    code, out, err, _ = await _check_online(workdir, "wrong-api-key")

    assert code == 1
    online = json.loads(out)["online"]
    assert online["ok"] is False
    (check,) = online["self_test"]["checks"]
    assert (check["http_status"], check["error"]) == (401, "unauthorized")
    assert check["message"] == "Invalid API key or signature"
    events = [json.loads(line) for line in err.splitlines()]
    (rejected,) = [e for e in events if e["event"] == "exchange.rejected"]
    assert "credentials or clock" in rejected["problem"]
    assert "wrong-api-key" not in out + err
    assert ONLINE_SECRET not in out + err


def test_check_config_online_without_credentials_is_a_config_error(tmp_path: Path) -> None:
    """--online needs the credentials: without them it is a config error, exit 2."""
    path = tmp_path / "c.toml"
    path.write_text(f'[[targets]]\nexchange = "E"\n[triggers.pnl]\npath = "{tmp_path}/pnl.json"\n')
    result = _run_cli("check-config", "--config", str(path), "--online", env={"PATH": "/bin"})
    assert result.returncode == 2
    assert result.stderr.startswith("config error: exchange.api_")


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
    # run: only the JSON line the package writes once its signal handling is in place
    started = [] if verb == "check-config" else ["daemon.starting"]
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == started


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

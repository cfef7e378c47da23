"""API credentials: read from the environment or systemd's credentials directory.

The values are wrapped in :class:`Secret`, whose ``repr``/``str`` never shows
them, and registered with the log redactor so that no event can print them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from killswitch.config.model import ExchangeConfig
from killswitch.config.reader import ConfigError

__all__ = ["Credentials", "Secret", "ed25519_secret_bytes", "load_credentials", "read_secret"]


class Secret:
    """A string that refuses to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**redacted**')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Credentials:
    api_key: Secret
    api_secret: Secret


def _read(name: str, key: str, environ: Mapping[str, str]) -> Secret:
    value = environ.get(name)
    source = f"environment variable {name}"
    if value is None and environ.get("CREDENTIALS_DIRECTORY"):
        path = Path(environ["CREDENTIALS_DIRECTORY"]) / name
        source = f"credential file {name}"
        try:
            value = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            value = None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(key, f"cannot read {source}: {type(exc).__name__}") from None
    if value is None:
        raise ConfigError(
            key, f"{name} is not set in the environment nor in $CREDENTIALS_DIRECTORY"
        )
    value = value.strip()
    if not value:
        raise ConfigError(key, f"{source} is empty")
    return Secret(value)


def ed25519_secret_bytes(text: str) -> bytes:
    """The 32-byte Ed25519 private key a secret of 64 hex characters holds (the one check,
    at load and in the signer); ValueError saying what is wrong otherwise."""
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("ed25519 signing needs the secret as 64 hex characters (a 32-byte key)")
    return raw


def read_secret(name: str, key: str, environ: Mapping[str, str] | None = None) -> Secret:
    """One secret read like the API secret (the NATS credentials of ``[cluster]``)."""
    return _read(name, key, os.environ if environ is None else environ)


def load_credentials(
    exchange: ExchangeConfig, environ: Mapping[str, str] | None = None
) -> Credentials:
    """Resolve the key and secret named by ``exchange.api_key_env``/``api_secret_env``."""
    env = os.environ if environ is None else environ
    api_key = _read(exchange.api_key_env, "exchange.api_key_env", env)
    api_secret = _read(exchange.api_secret_env, "exchange.api_secret_env", env)
    if exchange.signing == "ed25519":
        try:
            ed25519_secret_bytes(api_secret.reveal())
        except ValueError as exc:
            raise ConfigError("exchange.api_secret_env", str(exc)) from None
    return Credentials(api_key=api_key, api_secret=api_secret)

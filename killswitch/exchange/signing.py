"""Request signing (contract §2).

The signed message is ``METHOD + unquote_plus(path_with_query) + epoch_ms``; the
body is not signed.  Two schemes: ``ed25519`` (the secret is the 32-byte private
key as 64 hex characters) and ``hmac-sha256`` (HMAC over the secret's UTF-8
bytes).  Both give a hex signature, sent with the API key and the epoch under the
configured header names.  Key material is parsed once, when the signer is built,
and never appears in an error message or a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol
from urllib.parse import unquote_plus

from nacl.signing import SigningKey

from killswitch.config.model import ExchangeConfig, HeaderNames
from killswitch.exchange.credentials import Credentials, ed25519_secret_bytes

__all__ = ["Ed25519Signer", "HmacSha256Signer", "Signer", "make_signer", "signed_message"]


class Signer(Protocol):
    def headers(self, method: str, path_with_query: str, epoch_ms: int) -> dict[str, str]:
        """The authentication headers for one request."""
        ...


def signed_message(method: str, path_with_query: str, epoch_ms: int) -> bytes:
    """The bytes both schemes sign: method, unquoted path with query, epoch in ms."""
    return f"{method.upper()}{unquote_plus(path_with_query)}{epoch_ms}".encode()


class _BaseSigner:
    __slots__ = ("_api_key", "_names")

    def __init__(self, credentials: Credentials, names: HeaderNames) -> None:
        self._api_key = credentials.api_key.reveal()
        self._names = names

    def _sign(self, message: bytes) -> str:
        raise NotImplementedError

    def headers(self, method: str, path_with_query: str, epoch_ms: int) -> dict[str, str]:
        signature = self._sign(signed_message(method, path_with_query, epoch_ms))
        return {
            self._names.api_key: self._api_key,
            self._names.signature: signature,
            self._names.epoch: str(epoch_ms),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(**redacted**)"


class Ed25519Signer(_BaseSigner):
    """Ed25519 over the message; the secret is the private key as 64 hex characters."""

    __slots__ = ("_key",)

    def __init__(self, credentials: Credentials, names: HeaderNames) -> None:
        super().__init__(credentials, names)
        raw = ed25519_secret_bytes(credentials.api_secret.reveal())
        self._key = SigningKey(raw)  # RFC 8032: the 32-byte private key is the seed

    def _sign(self, message: bytes) -> str:
        return self._key.sign(message).signature.hex()


class HmacSha256Signer(_BaseSigner):
    """HMAC-SHA256 over the message, keyed with the secret's UTF-8 bytes."""

    __slots__ = ("_secret",)

    def __init__(self, credentials: Credentials, names: HeaderNames) -> None:
        super().__init__(credentials, names)
        self._secret = credentials.api_secret.reveal().encode()

    def _sign(self, message: bytes) -> str:
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def make_signer(config: ExchangeConfig, credentials: Credentials) -> Signer:
    """The signer for ``config.signing``, with ``config.headers`` as header names."""
    if config.signing == "ed25519":
        return Ed25519Signer(credentials, config.headers)
    if config.signing == "hmac-sha256":
        return HmacSha256Signer(credentials, config.headers)
    raise ValueError(f"unknown signing scheme {config.signing!r}")

"""Request signing (contract §2), written independently of the daemon's client.

The signed message is ``METHOD + unquote_plus(path_with_query) + epoch_ms``;
the body is not signed.  ``ed25519``: the secret is the 32-byte private key as
64 hex characters, the signature is hex.  ``hmac-sha256``: HMAC over the
secret's UTF-8 bytes, hex.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import unquote_plus

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from killswitch.sim.config import SimConfig

__all__ = ["sign", "sign_headers", "verify"]


@functools.lru_cache(maxsize=8)
def _public_key(secret_hex: str) -> VerifyKey:
    return SigningKey(bytes.fromhex(secret_hex)).verify_key


def _message(method: str, path_with_query: str, epoch_ms: str) -> bytes:
    return (method.upper() + unquote_plus(path_with_query) + epoch_ms).encode()


def sign(config: SimConfig, message: bytes) -> str:
    """The hex signature of ``message`` under ``config``'s scheme and secret."""
    if config.signing == "ed25519":
        return SigningKey(bytes.fromhex(config.api_secret)).sign(message).signature.hex()
    return hmac.new(config.api_secret.encode(), message, hashlib.sha256).hexdigest()


def sign_headers(
    config: SimConfig, method: str, path_with_query: str, *, epoch_ms: int | None = None
) -> dict[str, str]:
    """The auth headers a correct client sends for this request (for tests)."""
    epoch = str(epoch_ms if epoch_ms is not None else int(time.time() * 1000))
    return {
        config.api_key_header: config.api_key,
        config.signature_header: sign(config, _message(method, path_with_query, epoch)),
        config.epoch_header: epoch,
    }


def verify(
    config: SimConfig,
    method: str,
    raw_path_with_query: str,
    headers: Mapping[str, str],
    *,
    now_ms: int,
) -> str | None:
    """Why the request's auth is refused, or ``None`` when it is valid.

    ``now_ms`` is the venue's clock: an epoch more than ``max_epoch_skew``
    seconds from it is refused, as the venue does.
    """
    key = headers.get(config.api_key_header)
    signature = headers.get(config.signature_header)
    epoch = headers.get(config.epoch_header)
    if not key or not signature or not epoch:
        return "missing auth headers"
    if not hmac.compare_digest(key.encode(), config.api_key.encode()):
        return "unknown api key"
    if not epoch.isdigit():
        return "epoch is not an integer of milliseconds"
    off_ms = int(epoch) - now_ms
    if abs(off_ms) > config.max_epoch_skew * 1000:
        return (
            f"epoch is off the server clock by {off_ms} ms "
            f"(at most {config.max_epoch_skew:g} s allowed)"
        )
    message = _message(method, raw_path_with_query, epoch)
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        return "signature is not hex"
    if config.signing == "ed25519":
        try:
            _public_key(config.api_secret).verify(message, given)
        except (CryptoError, ValueError):  # a wrong signature, or not 64 bytes long
            return "bad signature"
        return None
    expected = hmac.new(config.api_secret.encode(), message, hashlib.sha256).digest()
    return None if hmac.compare_digest(given, expected) else "bad signature"

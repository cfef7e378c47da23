"""Request signing: the message, both schemes and the header names."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from killswitch.config.model import ExchangeConfig, HeaderNames
from killswitch.exchange.credentials import Credentials, Secret
from killswitch.exchange.signing import (
    Ed25519Signer,
    HmacSha256Signer,
    make_signer,
    signed_message,
)

# RFC 8032 section 7.1, TEST 1: the private key and its public key.
RFC8032_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
API_KEY = "test-api-key-0001"
EPOCH_MS = 1_780_000_000_123


def creds(secret: str) -> Credentials:
    return Credentials(api_key=Secret(API_KEY), api_secret=Secret(secret))


def test_message_is_method_unquoted_path_and_epoch() -> None:
    """The signed message is METHOD + unquote_plus(path with query) + epoch_ms."""
    message = signed_message("GET", "/trade/api/v2/futures/order?order_id=a%2Fb+c", 17)

    assert message == b"GET/trade/api/v2/futures/order?order_id=a/b c17"


def test_ed25519_signature_verifies_with_the_public_key() -> None:
    """An ed25519 signature over the documented message verifies with the RFC 8032 public key."""
    signer = Ed25519Signer(creds(RFC8032_SECRET), HeaderNames())
    path = "/trade/api/v2/futures/cancel_all"

    headers = signer.headers("POST", path, EPOCH_MS)

    assert headers["X-AUTH-APIKEY"] == API_KEY
    assert headers["X-AUTH-EPOCH"] == str(EPOCH_MS)
    signature = bytes.fromhex(headers["X-AUTH-SIGNATURE"])
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(RFC8032_PUBLIC))
    public.verify(signature, f"POST{path}{EPOCH_MS}".encode())
    with pytest.raises(InvalidSignature):
        public.verify(signature, f"POST{path}{EPOCH_MS + 1}".encode())


def test_ed25519_signs_the_unquoted_query() -> None:
    """The ed25519 signature covers the query string after unquote_plus."""
    signer = Ed25519Signer(creds(RFC8032_SECRET), HeaderNames())

    headers = signer.headers("GET", "/order?order_id=x%2By+z", EPOCH_MS)

    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(RFC8032_PUBLIC))
    public.verify(
        bytes.fromhex(headers["X-AUTH-SIGNATURE"]), f"GET/order?order_id=x+y z{EPOCH_MS}".encode()
    )


def test_hmac_matches_an_independent_computation() -> None:
    """hmac-sha256 signs the same message with the secret's UTF-8 bytes, hex-encoded."""
    secret = "s3cret-ünïcode"
    signer = HmacSha256Signer(creds(secret), HeaderNames())
    path = "/api/v1/order?order_id=42"

    headers = signer.headers("GET", path, EPOCH_MS)

    expected = hmac.new(
        secret.encode("utf-8"), f"GET{path}{EPOCH_MS}".encode(), hashlib.sha256
    ).hexdigest()
    assert headers["X-AUTH-SIGNATURE"] == expected
    assert headers["X-AUTH-APIKEY"] == API_KEY
    assert headers["X-AUTH-EPOCH"] == str(EPOCH_MS)


def test_make_signer_uses_the_configured_scheme_and_header_names() -> None:
    """make_signer picks the scheme from the config and uses its header names."""
    names = HeaderNames(api_key="K", signature="S", epoch="E")
    config = ExchangeConfig(signing="hmac-sha256", headers=names)

    headers = make_signer(config, creds("abc")).headers("POST", "/x", 5)

    assert set(headers) == {"K", "S", "E"}
    assert isinstance(make_signer(ExchangeConfig(), creds(RFC8032_SECRET)), Ed25519Signer)


@pytest.mark.parametrize("secret", ["zz" * 32, "ab" * 31, "ab" * 33])
def test_bad_ed25519_secret_is_rejected_without_showing_it(secret: str) -> None:
    """A secret that is not 64 hex characters fails, and the message does not contain it."""
    with pytest.raises(ValueError, match="64 hex characters") as caught:
        Ed25519Signer(creds(secret), HeaderNames())

    assert secret not in str(caught.value)


def test_signer_repr_hides_key_material() -> None:
    """Neither signer's repr shows the API key or the secret."""
    for signer in (
        Ed25519Signer(creds(RFC8032_SECRET), HeaderNames()),
        HmacSha256Signer(creds("hmac-secret"), HeaderNames()),
    ):
        text = repr(signer)
        assert API_KEY not in text
        assert RFC8032_SECRET not in text
        assert "hmac-secret" not in text

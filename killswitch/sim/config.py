"""What the simulated exchange is: its credentials, paths, limits and behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEMO_API_KEY",
    "DEMO_API_SECRET",
    "ENDPOINTS",
    "FAULT_KINDS",
    "Endpoint",
    "FaultKind",
    "Signing",
    "SimConfig",
]

Signing = Literal["ed25519", "hmac-sha256"]
Endpoint = Literal["cancel_all", "order_status"]
FaultKind = Literal["500", "502", "503", "429", "timeout", "reset", "malformed", "shape", "slow"]

ENDPOINTS: tuple[Endpoint, ...] = ("cancel_all", "order_status")
FAULT_KINDS: tuple[FaultKind, ...] = (
    "500",
    "502",
    "503",
    "429",
    "timeout",
    "reset",
    "malformed",
    "shape",
    "slow",
)

# A fixed, obviously fake key pair for the demo and the tests.  The secret is
# the hex of the 32 ASCII bytes "killswitch-demo-key-not-a-secret", which is a
# valid Ed25519 private key seed (and a fine HMAC secret).
DEMO_API_KEY = "demo-api-key-not-a-secret"
DEMO_API_SECRET = b"killswitch-demo-key-not-a-secret".hex()


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The simulated exchange's settings; defaults mirror contract §2 and §3.

    Limits are ``(requests, per_seconds)``.  ``cancel_delay`` bounds the random
    time an order spends in ``CANCELLATION_RAISED``; ``fill_ratio`` is the share
    of those that end ``EXECUTED`` instead of ``CANCELLED``.  ``slow_seconds`` is
    how long a ``timeout`` fault holds a request.
    """

    api_key: str = DEMO_API_KEY
    api_secret: str = DEMO_API_SECRET
    signing: Signing = "ed25519"
    api_key_header: str = "X-AUTH-APIKEY"
    signature_header: str = "X-AUTH-SIGNATURE"
    epoch_header: str = "X-AUTH-EPOCH"
    cancel_all_path: str = "/trade/api/v2/futures/cancel_all"
    order_status_path: str = "/trade/api/v2/futures/order"
    cancel_all_limit: tuple[int, float] = (10, 60.0)
    status_limit: tuple[int, float] = (20, 60.0)
    cancel_delay: tuple[float, float] = (0.02, 0.3)
    fill_ratio: float = 0.0
    exchange: str = "EXCHANGE_2"
    max_epoch_skew: float = 30.0
    slow_seconds: float = 30.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.signing not in ("ed25519", "hmac-sha256"):
            raise ValueError(f"signing: unknown scheme {self.signing!r}")
        if self.signing == "ed25519":
            try:
                key = bytes.fromhex(self.api_secret)
            except ValueError:
                key = b""
            if len(key) != 32:
                raise ValueError("api_secret: ed25519 needs 64 hex characters (32 bytes)")
        for name in ("cancel_all_limit", "status_limit"):
            requests, per_seconds = getattr(self, name)
            if requests < 1 or per_seconds <= 0:
                raise ValueError(f"{name}: requests >= 1 and per_seconds > 0 are required")
        low, high = self.cancel_delay
        if not 0 <= low <= high:
            raise ValueError("cancel_delay: expected 0 <= low <= high")
        if not 0.0 <= self.fill_ratio <= 1.0:
            raise ValueError("fill_ratio: expected a share between 0 and 1")
        if self.cancel_all_path == self.order_status_path:
            raise ValueError("order_status_path: must differ from cancel_all_path")

    def limit(self, endpoint: Endpoint) -> tuple[int, float]:
        return self.cancel_all_limit if endpoint == "cancel_all" else self.status_limit

    def path(self, endpoint: Endpoint) -> str:
        return self.cancel_all_path if endpoint == "cancel_all" else self.order_status_path

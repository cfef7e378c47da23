"""What the simulated exchange is: its credentials, paths, limits and behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "DEMO_API_KEY",
    "DEMO_API_SECRET",
    "ENDPOINTS",
    "FAULT_ENDPOINTS",
    "FAULT_KINDS",
    "METHODS",
    "Endpoint",
    "FaultKind",
    "Signing",
    "SimConfig",
]

Signing = Literal["ed25519", "hmac-sha256"]
Endpoint = Literal[
    "cancel_all", "order_status", "open_orders", "closed_orders", "positions", "place_order"
]
FaultKind = Literal[
    "500",
    "502",
    "503",
    "429",
    "429_bare",
    "401",
    "422",
    "timeout",
    "reset",
    "malformed",
    "shape",
    "slow",
    "lost_ack_502",
    "lost_ack_timeout",
    "reduce_only_refused",
]

# The six signed, rate-limited endpoints; the server-time call is neither.
ENDPOINTS: tuple[Endpoint, ...] = (
    "cancel_all",
    "order_status",
    "open_orders",
    "closed_orders",
    "positions",
    "place_order",
)
# Faults may also be injected on the server-time call ("time").
FAULT_ENDPOINTS: tuple[str, ...] = (*ENDPOINTS, "time")
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)  # one list: the Literal

# A fixed, obviously fake key pair for the demo and the tests.  The secret is
# the hex of the 32 ASCII bytes "killswitch-demo-key-not-a-secret", which is a
# valid Ed25519 private key seed (and a fine HMAC secret).
DEMO_API_KEY = "demo-api-key-not-a-secret"
DEMO_API_SECRET = b"killswitch-demo-key-not-a-secret".hex()

_LIMITS: dict[Endpoint, str] = {
    "cancel_all": "cancel_all_limit",
    "order_status": "status_limit",
    "open_orders": "open_orders_limit",
    "closed_orders": "closed_orders_limit",
    "positions": "positions_limit",
    "place_order": "place_order_limit",
}
_PATHS: dict[str, str] = {
    "cancel_all": "cancel_all_path",
    "order_status": "order_status_path",
    "open_orders": "open_orders_path",
    "closed_orders": "closed_orders_path",
    "positions": "positions_path",
    "place_order": "place_order_path",
    "time": "time_path",
}
METHODS: dict[str, str] = {
    "cancel_all": "POST",
    "order_status": "GET",
    "open_orders": "POST",
    "closed_orders": "POST",
    "positions": "GET",
    "place_order": "POST",
    "time": "GET",
}
"""Each endpoint's method: place order shares the order-status path (VENUE.md)."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The simulated exchange's settings; defaults are the venue's (``VENUE.md``).

    Limits are ``(requests, per_seconds)``: 10/60 s for ``cancel_all``, 20/60 s
    for each of the status call and the two listings.  ``cancel_delay`` bounds
    the random time an order spends in ``CANCELLATION_RAISED``; of those,
    ``fill_ratio`` end ``EXECUTED``, ``partial_fill_ratio`` end
    ``PARTIALLY_EXECUTED``, ``expire_ratio`` end ``EXPIRED`` (a terminal
    status the closed listing does not show) and the rest ``CANCELLED``.  ``clock_offset_ms`` is
    the venue's clock minus the real wall clock; an epoch more than
    ``max_epoch_skew`` seconds off the venue's clock is answered 401.
    ``require_content_type``: a signed request without ``Content-Type:
    application/json`` is answered 400.  A request over a limit is answered 429,
    with ``Retry-After`` unless ``retry_after_on_violation`` is off (the venue
    documents none).  ``slow_seconds`` is how long a
    ``timeout`` or ``lost_ack_timeout`` fault holds a request by default.
    """

    api_key: str = DEMO_API_KEY
    api_secret: str = DEMO_API_SECRET
    signing: Signing = "ed25519"
    api_key_header: str = "X-AUTH-APIKEY"
    signature_header: str = "X-AUTH-SIGNATURE"
    epoch_header: str = "X-AUTH-EPOCH"
    cancel_all_path: str = "/trade/api/v2/futures/cancel_all"
    order_status_path: str = "/trade/api/v2/futures/order"
    open_orders_path: str = "/trade/api/v2/futures/orders/open"
    closed_orders_path: str = "/trade/api/v2/futures/orders/closed"
    time_path: str = "/trade/api/v2/time"
    positions_path: str = "/trade/api/v2/futures/positions"
    place_order_path: str = "/trade/api/v2/futures/order"
    cancel_all_limit: tuple[int, float] = (10, 60.0)
    status_limit: tuple[int, float] = (20, 60.0)
    open_orders_limit: tuple[int, float] = (20, 60.0)
    closed_orders_limit: tuple[int, float] = (20, 60.0)
    positions_limit: tuple[int, float] = (20, 60.0)
    place_order_limit: tuple[int, float] = (20, 60.0)
    cancel_delay: tuple[float, float] = (0.02, 0.3)
    fill_ratio: float = 0.0
    partial_fill_ratio: float = 0.0
    expire_ratio: float = 0.0
    exchange: str = "EXCHANGE_2"
    clock_offset_ms: int = 0
    max_epoch_skew: float = 60.0
    require_content_type: bool = True
    retry_after_on_violation: bool = True
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
        for name in (*_LIMITS.values(), "cancel_delay"):
            pair = tuple(getattr(self, name))  # JSON callers pass lists
            if len(pair) != 2:
                raise ValueError(f"{name}: expected two numbers")
            object.__setattr__(self, name, pair)
        for name in _LIMITS.values():
            requests, per_seconds = getattr(self, name)
            if requests < 1 or per_seconds <= 0:
                raise ValueError(f"{name}: requests >= 1 and per_seconds > 0 are required")
        check_behaviour(
            self.fill_ratio, self.partial_fill_ratio, self.expire_ratio, self.cancel_delay
        )
        if self.max_epoch_skew <= 0:
            raise ValueError("max_epoch_skew: expected seconds > 0")
        routes = [(getattr(self, p), METHODS[e]) for e, p in _PATHS.items()]
        if len(set(routes)) != len(routes):
            raise ValueError("paths: every endpoint needs its own path (or method)")

    def limit(self, endpoint: Endpoint) -> tuple[int, float]:
        requests, per_seconds = getattr(self, _LIMITS[endpoint])
        return int(requests), float(per_seconds)

    def path(self, endpoint: str) -> str:
        """The path of a limited endpoint or of ``time``."""
        return str(getattr(self, _PATHS[endpoint]))


def check_behaviour(
    fill_ratio: float,
    partial_fill_ratio: float,
    expire_ratio: float,
    cancel_delay: tuple[float, float],
) -> None:
    """Raise ``ValueError`` naming the field when the cancel behaviour is impossible."""
    ratios = {
        "fill_ratio": fill_ratio,
        "partial_fill_ratio": partial_fill_ratio,
        "expire_ratio": expire_ratio,
    }
    for name, ratio in ratios.items():
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name}: expected a share between 0 and 1")
    if sum(ratios.values()) > 1.0:
        raise ValueError("fill_ratio + partial_fill_ratio + expire_ratio: must not exceed 1")
    low, high = cancel_delay
    if not 0 <= low <= high:
        raise ValueError("cancel_delay: expected 0 <= low <= high")

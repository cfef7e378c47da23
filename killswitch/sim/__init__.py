"""The simulated exchange: strict rate limits, lazy cancellation, injectable faults."""

from killswitch.sim.auth import sign_headers
from killswitch.sim.config import DEMO_API_KEY, DEMO_API_SECRET, SimConfig
from killswitch.sim.record import ReceivedRequest
from killswitch.sim.server import SimExchange, run_sim
from killswitch.sim.venue import Rejection

__all__ = [
    "DEMO_API_KEY",
    "DEMO_API_SECRET",
    "ReceivedRequest",
    "Rejection",
    "SimConfig",
    "SimExchange",
    "run_sim",
    "sign_headers",
]

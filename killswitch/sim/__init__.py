"""The simulated exchange: the venue of VENUE.md, strict rate limits, bad days on demand."""

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

"""killswitch: cancel every open order, inside the rate limit, and prove it."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""killswitch: cancel every open order, inside the rate limit, and prove it."""

# Contract §7 overrides STYLE.md's "__init__ only re-exports": these two lines come
# before every other import of the package, so the daemon (`killswitch run`) records
# SIGUSR1/SIGTERM/SIGINT/SIGHUP from here on instead of dying of them (see _early.py).
from killswitch import _early

_early.install_if_daemon()

__version__ = "0.3.0"

__all__ = ["__version__"]

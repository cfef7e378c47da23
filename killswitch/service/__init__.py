"""The daemon around the engine: its lifecycle and what it tells the world.

``daemon`` (start-up in order, serve, reload, stop), ``wiring`` (the parts built
from the config and wired together; the control API's answers), ``loop`` (uvloop
on Linux), ``control`` (the control API over a UNIX socket, and its client),
``metrics`` (``GET /metrics``), ``status_view`` (``killswitch status`` as text),
``notify`` (an sd_notify client) and ``systemd`` (what the daemon tells systemd).

Nothing is imported here: ``killswitch status`` imports ``control`` and
``status_view`` without the daemon behind them.
"""

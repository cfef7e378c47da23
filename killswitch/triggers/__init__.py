"""The trigger sources: what fires a kill.

``signals`` (``SIGUSR1`` and the other signals, routed to the event loop),
``heartbeat`` (the dead-man switch), ``pnl`` (the PnL file's loss threshold).
A manual trigger comes through the control API, a firm-wide one through
:mod:`killswitch.cluster`.

Nothing is imported here: a trigger source is imported by its own name.
"""

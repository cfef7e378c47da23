"""The kill engine: the switch's state machine and everything one kill does.

``switch`` (``ARMED → KILLING → TRIPPED``, coalescing, resweeps, the latch),
``runner`` (one kill, composed of the parts below, each handed the kill's
``context``), ``sweeps`` (``cancel_all`` until acknowledged, by the ``retry``
policy), ``proof`` (the flat proof, over ``flat``'s view of the listings),
``classify`` (the outcomes learned after the proof), ``confirm`` and
``outcomes`` (every order id to a terminal status), ``events`` (what the engine
tells the service), ``guard`` (the tripped guard), ``progress`` (a running kill
as an operator watches it).

Nothing is imported here: a module of the engine is imported by its own name.
"""

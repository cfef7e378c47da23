"""The kill engine: the switch's state machine and everything one kill does.

``switch`` (``ARMED → KILLING → TRIPPED``, coalescing, the latch), ``runner``
(one kill: the ``cancel_all`` sweeps, the flat proof, the summary), ``flat``
(what the flat proof asks of the venue's listings), ``confirm`` (every order id
to a terminal status), ``guard`` (the tripped guard), ``progress`` (a running
kill as an operator watches it).

Nothing is imported here: a module of the engine is imported by its own name.
"""

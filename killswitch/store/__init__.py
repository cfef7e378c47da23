"""The state store (contract §9): what the daemon remembers across restarts.

``state`` (:class:`~killswitch.store.state.StateStore`: the latch, kills, order
ids and statuses, request send times), ``writer`` (the single writer thread),
``file`` (opening the database or failing closed, the latch marker), ``watch``
(a failing store: events, metrics, re-opening).

Nothing is imported here: a module of the store is imported by its own name.
"""

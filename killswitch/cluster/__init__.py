"""Firm-wide triggers over NATS (contract §11): optional, imported only with ``[cluster]``.

``connection`` (:class:`~killswitch.cluster.connection.Cluster`: the daemon's
NATS side, one task that connects, subscribes, obeys and publishes),
``settings`` (the subjects, the desk name, the credentials, TLS), ``messages``
(trigger messages validated, encoded, remembered), ``obey`` (one trigger
message judged and answered), ``fleet`` (``killswitch fleet trigger|status``:
the firm-wide button).  The sentinel (contract §15): ``liveness`` (every desk's
``.alive`` messages), ``verdict`` (a sentinel's kill, and the desk obeying it),
``watch`` (the sentinel's judgement on an injected clock), ``sentinel`` (its own
connection: probes that prove the link, liveness heard, verdicts repeated).

Nothing is imported here, nats-py least of all.
"""

"""Firm-wide triggers over NATS (contract §11): optional, imported only with ``[cluster]``.

``connection`` (:class:`~killswitch.cluster.connection.Cluster`: the daemon's
NATS side, one task that connects, subscribes, obeys and publishes),
``settings`` (the subjects, the desk name, the credentials, TLS), ``messages``
(trigger messages validated, encoded, remembered), ``fleet`` (``killswitch
fleet trigger|status``: the firm-wide button).

Nothing is imported here, nats-py least of all.
"""

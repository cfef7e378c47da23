"""The venue client: every request the daemon sends to the exchange.

``client`` (the endpoints, signed and rate limited), ``transport`` (the two
connection pools), ``signing`` and ``credentials`` (the API key and secret),
``ratelimit`` (the sliding-window limiter), ``venue_clock`` (the offset to the
venue's server time), ``orders`` and ``listing`` (the venue's orders, complete
listings), ``selftest`` (the start-up self-test), ``errors`` (one call's errors).

Nothing is imported here: ``import killswitch.exchange.errors`` stays cheap.
"""

"""Benchmarks: the real daemon process against the simulated exchange on loopback.

``python -m bench`` (``make bench``) runs every scenario, prints one table and
writes the raw samples to ``bench/results/latest.json``.  Nothing here is
imported by the daemon or the tests.
"""

__all__: list[str] = []

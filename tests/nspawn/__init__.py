"""A booted Debian 12 (systemd 252) for tests/test_nspawn.py: root fs cache and container."""

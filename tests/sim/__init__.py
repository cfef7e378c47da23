"""Tests of the simulated exchange (killswitch/sim/)."""

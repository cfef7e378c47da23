"""The record of a kill: its journal in the state store, ``killswitch history`` and ``report``."""

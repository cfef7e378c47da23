"""The record of a kill: its journal in the state store, ``killswitch history`` and ``report``."""

from killswitch.record.journal import Journal
from killswitch.record.reader import KillSummary, RecordReader, RecordUnavailable

__all__ = ["Journal", "KillSummary", "RecordReader", "RecordUnavailable"]
